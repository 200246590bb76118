package punch

import (
	"net"
	"net/netip"
	"strings"
)

// virtualPrefixes name interfaces that lead to containers, VMs or overlay
// networks on this machine, not to other players: docker0, veth…, virbr0, ...
var virtualPrefixes = []string{"docker", "veth", "br-", "virbr", "vmnet", "vboxnet", "cni", "flannel", "cali", "lxc", "lxd", "podman", "tailscale", "zt", "wg", "utun"}

// HostCandidates lists this machine's addresses at port, from interfaces that
// are up and not loopback; virtual (container/VM/overlay) interfaces are
// skipped unless includeVirtual. v4only limits the list to IPv4 (a socket
// bound to 0.0.0.0). Link-local addresses are left out: they need a zone and
// the LAN beacon covers same-link discovery.
func HostCandidates(port uint16, includeVirtual, v4only bool) []Candidate {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []Candidate
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		if !includeVirtual && isVirtual(ifc.Name) {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr().Unmap()
			if ip.IsLinkLocalUnicast() || ip.IsLoopback() || ip.IsMulticast() || v4only && !ip.Is4() {
				continue
			}
			out = append(out, Candidate{Addr: netip.AddrPortFrom(ip, port), Kind: Host})
		}
	}
	return out
}

func isVirtual(name string) bool {
	for _, p := range virtualPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

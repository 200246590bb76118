package natlab

import (
	"fmt"
	"net/netip"
	"regexp"
	"time"
)

// NAT is the translation profile of a router.
type NAT int

const (
	// PortRestricted is endpoint-independent mapping with address-and-port
	// dependent filtering: Linux's plain masquerade, the most common home router.
	PortRestricted NAT = iota
	// FullCone is endpoint-independent mapping and filtering: once a LAN socket
	// has sent anything out, anyone may reach it through its public port.
	FullCone
	// AddressRestricted is endpoint-independent mapping with address-dependent
	// filtering: a remote host the LAN socket has sent to may reach it from any port.
	AddressRestricted
	// Symmetric is endpoint-dependent mapping (masquerade random): every new
	// destination gets a fresh random public port; filtering is address-and-port
	// dependent.
	Symmetric
	// None is no NAT and no firewall: the router forwards and the hosts behind it
	// have public addresses.
	None
)

func (n NAT) String() string {
	switch n {
	case PortRestricted:
		return "port-restricted"
	case FullCone:
		return "full-cone"
	case AddressRestricted:
		return "address-restricted"
	case Symmetric:
		return "symmetric"
	case None:
		return "none"
	}
	return fmt.Sprintf("NAT(%d)", int(n))
}

// NATs lists every profile, for table-driven tests.
var NATs = []NAT{FullCone, AddressRestricted, PortRestricted, Symmetric, None}

// Mapping is how a NAT chooses the public address of a LAN socket (RFC 4787).
type Mapping string

// Filtering is which inbound packets a NAT lets through to a mapping (RFC 4787).
type Filtering string

const (
	MappingNone                    Mapping = "none (public address)"
	MappingEndpointIndependent     Mapping = "endpoint-independent"
	MappingAddressDependent        Mapping = "address-dependent"
	MappingAddressAndPortDependent Mapping = "address-and-port-dependent"

	FilteringEndpointIndependent     Filtering = "endpoint-independent"
	FilteringAddressDependent        Filtering = "address-dependent"
	FilteringAddressAndPortDependent Filtering = "address-and-port-dependent"
)

// Behavior is what a router does to UDP, as the self-check measures it.
type Behavior struct {
	Mapping   Mapping
	Filtering Filtering
	// PortPreserving: the public port equals the LAN socket's port (when no other
	// LAN socket already holds it).
	PortPreserving bool
	// Hairpin: a LAN host reaches another LAN socket through its public address.
	Hairpin bool
	// IPv6Firewall: unsolicited inbound IPv6 to a LAN host is dropped; replies
	// (established/related) pass.
	IPv6Firewall bool
}

// Behavior is the behaviour a router with this profile has by construction.
// For None, hairpin is trivially true (public addresses route through the router).
func (n NAT) Behavior(hairpin bool) Behavior {
	switch n {
	case FullCone:
		return Behavior{MappingEndpointIndependent, FilteringEndpointIndependent, true, hairpin, true}
	case AddressRestricted:
		return Behavior{MappingEndpointIndependent, FilteringAddressDependent, true, hairpin, true}
	case PortRestricted:
		return Behavior{MappingEndpointIndependent, FilteringAddressAndPortDependent, true, hairpin, true}
	case Symmetric:
		return Behavior{MappingAddressAndPortDependent, FilteringAddressAndPortDependent, false, hairpin, true}
	default:
		return Behavior{MappingNone, FilteringEndpointIndependent, true, true, false}
	}
}

// Topology declares a lab. The internet segment and the server always exist.
type Topology struct {
	Routers []Router
	// LANs are plain LAN segments with no router to the internet.
	LANs []LAN
	// MultiHomed are hosts with one interface on each of several LANs (router
	// LANs or plain LANs, by name).
	MultiHomed []MultiHomed
	// SkipSelfCheck skips measuring the routers before New returns. Only for
	// tests of the self-check itself.
	SkipSelfCheck bool
}

// Router is a NAT router with a LAN bridge and Hosts client hosts behind it.
type Router struct {
	// Name is 1-8 characters [a-z0-9], unique across routers, LANs and multi-homed hosts.
	Name    string
	NAT     NAT
	Hairpin bool
	// UDPTimeout sets the router's conntrack UDP timeouts (unreplied and
	// stream) and the lifetime of its cone mappings; zero keeps the kernel
	// defaults (30 s unreplied, 120 s stream). Whole seconds.
	UDPTimeout time.Duration
	Hosts      int
	// LAN is the IPv4 LAN prefix; zero picks 10.0.<index+1>.0/24 (NAT) or a
	// public 192.0.2.<16*index>/28 (None). Two routers may share a LAN prefix.
	LAN netip.Prefix
	// Netem, when set, is applied to the router's WAN after the self-check.
	Netem *Netem
}

// LAN is a plain LAN bridge with hosts and no router.
type LAN struct {
	Name  string
	Hosts int
	// Prefix is the IPv4 prefix; zero picks 10.100.<index+1>.0/24.
	Prefix netip.Prefix
}

// MultiHomed is a host with one interface on each named LAN. Its default
// route goes through the first LAN's router, if it has one.
type MultiHomed struct {
	Name string
	LANs []string
}

// Netem is delay and loss on a router's WAN egress (tc qdisc netem).
type Netem struct {
	Delay  time.Duration
	Jitter time.Duration
	// Loss is a percentage, 0-100.
	Loss float64
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

func (top *Topology) validate() error {
	seen := map[string]bool{}
	check := func(kind, name string) error {
		if !nameRE.MatchString(name) {
			return fmt.Errorf("natlab: %s name %q: want 1-8 characters [a-z0-9]", kind, name)
		}
		if seen[name] {
			return fmt.Errorf("natlab: name %q used twice", name)
		}
		seen[name] = true
		return nil
	}
	if len(top.Routers) > 200 {
		return fmt.Errorf("natlab: at most 200 routers")
	}
	for _, r := range top.Routers {
		if err := check("router", r.Name); err != nil {
			return err
		}
		if r.Hosts < 0 || r.Hosts > 13 {
			return fmt.Errorf("natlab: router %q: hosts %d out of range 0-13", r.Name, r.Hosts)
		}
		if r.NAT < PortRestricted || r.NAT > None {
			return fmt.Errorf("natlab: router %q: unknown NAT %d", r.Name, r.NAT)
		}
		if r.UDPTimeout < 0 || r.UDPTimeout%time.Second != 0 {
			return fmt.Errorf("natlab: router %q: udp timeout %v must be whole seconds", r.Name, r.UDPTimeout)
		}
		if r.LAN.IsValid() && (!r.LAN.Addr().Is4() || r.LAN.Bits() > 28) {
			return fmt.Errorf("natlab: router %q: LAN %v must be IPv4 and at most /28", r.Name, r.LAN)
		}
	}
	for _, l := range top.LANs {
		if err := check("LAN", l.Name); err != nil {
			return err
		}
		if l.Hosts < 0 || l.Hosts > 13 {
			return fmt.Errorf("natlab: LAN %q: hosts %d out of range 0-13", l.Name, l.Hosts)
		}
		if l.Prefix.IsValid() && (!l.Prefix.Addr().Is4() || l.Prefix.Bits() > 28) {
			return fmt.Errorf("natlab: LAN %q: prefix %v must be IPv4 and at most /28", l.Name, l.Prefix)
		}
	}
	if len(top.LANs) > 200 {
		return fmt.Errorf("natlab: at most 200 LANs")
	}
	lans := map[string]bool{}
	for _, r := range top.Routers {
		lans[r.Name] = true
	}
	for _, l := range top.LANs {
		lans[l.Name] = true
	}
	for _, m := range top.MultiHomed {
		if err := check("multi-homed host", m.Name); err != nil {
			return err
		}
		if len(m.LANs) == 0 || len(m.LANs) > 8 {
			return fmt.Errorf("natlab: multi-homed host %q: 1-8 LANs", m.Name)
		}
		for _, l := range m.LANs {
			if !lans[l] {
				return fmt.Errorf("natlab: multi-homed host %q: no LAN %q", m.Name, l)
			}
		}
	}
	return nil
}

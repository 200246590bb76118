package lanbeacon

import (
	"context"
	"net"
	"net/netip"
	"syscall"
)

// Network is what lanbeacon needs from the operating system. HostNetwork is
// the real one; InNamespace runs it inside a network namespace; unit tests
// inject their own.
type Network interface {
	// ListenPacket opens a UDP socket ("udp4" or "udp6") on which several
	// listeners may bind the same port and broadcasts may be sent.
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
	// Interfaces lists the interfaces with their addresses.
	Interfaces() ([]Interface, error)
}

// Interface is a network interface as the beacon sees it.
type Interface struct {
	Name  string
	Index int
	Flags net.Flags
	Addrs []netip.Prefix
}

// HostNetwork is the host's own stack. Its sockets set SO_REUSEADDR and
// SO_REUSEPORT (so a game and the CLI share the port: the kernel hands every
// broadcast and multicast datagram to each of them) and SO_BROADCAST.
type HostNetwork struct{}

// ListenPacket opens a socket with the beacon's socket options.
func (HostNetwork) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = setSocketOptions(fd) }); err != nil {
			return err
		}
		return serr
	}}
	return lc.ListenPacket(ctx, network, address)
}

// Interfaces lists the host's interfaces and their addresses.
func (HostNetwork) Interfaces() ([]Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := make([]Interface, 0, len(ifs))
	for _, ifi := range ifs {
		addrs, err := ifi.Addrs()
		if err != nil {
			continue // the interface went away meanwhile
		}
		x := Interface{Name: ifi.Name, Index: ifi.Index, Flags: ifi.Flags}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				ip, ok := netip.AddrFromSlice(ipn.IP)
				ones, _ := ipn.Mask.Size()
				if ok {
					x.Addrs = append(x.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
				}
			}
		}
		out = append(out, x)
	}
	return out, nil
}

// InNamespace is HostNetwork with every call run through do, which must run
// its function on an OS thread inside a network namespace (natlab's
// (*Host).Do has this shape). Sockets stay in the namespace.
func InNamespace(do func(func() error) error) Network { return nsNetwork{do} }

type nsNetwork struct{ do func(func() error) error }

func (n nsNetwork) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.do(func() (err error) {
		pc, err = HostNetwork{}.ListenPacket(ctx, network, address)
		return err
	})
	return pc, err
}

func (n nsNetwork) Interfaces() ([]Interface, error) {
	var ifs []Interface
	err := n.do(func() (err error) {
		ifs, err = HostNetwork{}.Interfaces()
		return err
	})
	return ifs, err
}

// directedBroadcast is the broadcast address of an IPv4 prefix, or false for
// prefixes without one (/31, /32, IPv6).
func directedBroadcast(p netip.Prefix) (netip.Addr, bool) {
	if !p.Addr().Is4() || p.Bits() > 30 {
		return netip.Addr{}, false
	}
	a := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

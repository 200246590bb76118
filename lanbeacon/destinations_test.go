package lanbeacon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeInterfaces lists interfaces and opens no sockets.
type fakeInterfaces []Interface

func (f fakeInterfaces) ListenPacket(context.Context, string, string) (net.PacketConn, error) {
	return nil, errors.New("no sockets in this test")
}
func (f fakeInterfaces) Interfaces() ([]Interface, error) { return f, nil }

func TestDestinations(t *testing.T) {
	up := net.FlagUp | net.FlagBroadcast | net.FlagMulticast
	ifs := fakeInterfaces{
		{Name: "lo", Index: 1, Flags: net.FlagUp | net.FlagLoopback, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}},
		{Name: "eth0", Index: 2, Flags: up, Addrs: []netip.Prefix{
			netip.MustParsePrefix("10.0.1.7/24"), netip.MustParsePrefix("192.168.5.9/22"),
			netip.MustParsePrefix("2001:db8::7/64"), netip.MustParsePrefix("fe80::7/64")}},
		{Name: "wlan0", Index: 3, Flags: up, Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.1.8/24")}}, // same subnet: once
		{Name: "down0", Index: 4, Flags: net.FlagBroadcast | net.FlagMulticast, Addrs: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/16")}},
		{Name: "ptp0", Index: 5, Flags: net.FlagUp | net.FlagPointToPoint | net.FlagMulticast, Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}},
		{Name: "p2p31", Index: 6, Flags: up, Addrs: []netip.Prefix{netip.MustParsePrefix("10.7.0.0/31")}},
	}
	cfg := DefaultConfig()
	a, err := NewAnnouncer(cfg, Announcement{}, Options{Network: ifs})
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := a.destinations()
	want4 := []string{"255.255.255.255:9999", "10.0.1.255:9999", "192.168.7.255:9999"}
	want6 := []string{"[ff02::1e52:5a42%2]:9999", "[ff02::1e52:5a42%3]:9999", "[ff02::1e52:5a42%5]:9999", "[ff02::1e52:5a42%6]:9999"}
	if got := strs(v4); !slices.Equal(got, want4) {
		t.Errorf("IPv4 destinations %v, want %v", got, want4)
	}
	if got := strs(v6); !slices.Equal(got, want6) {
		t.Errorf("IPv6 destinations %v, want %v", got, want6)
	}

	cfg.Interfaces = []string{"wlan0"}
	cfg.Broadcast = ""
	a, _ = NewAnnouncer(cfg, Announcement{}, Options{Network: ifs})
	v4, v6 = a.destinations()
	if got := strs(v4); !slices.Equal(got, []string{"10.0.1.255:9999"}) {
		t.Errorf("wlan0 only: IPv4 %v", got)
	}
	if got := strs(v6); !slices.Equal(got, []string{"[ff02::1e52:5a42%3]:9999"}) {
		t.Errorf("wlan0 only: IPv6 %v", got)
	}
}

func strs(aps []netip.AddrPort) []string {
	var s []string
	for _, ap := range aps {
		s = append(s, ap.String())
	}
	return s
}

// capturingNetwork records what an announcer would send; its sockets are
// fakes that send nothing, so the destinations may be any address.
type capturingNetwork struct {
	mu   sync.Mutex
	ifs  []Interface
	sent []netip.AddrPort
}

func (n *capturingNetwork) ListenPacket(context.Context, string, string) (net.PacketConn, error) {
	return &capturingConn{n: n, closed: make(chan struct{})}, nil
}

func (n *capturingNetwork) Interfaces() ([]Interface, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.ifs), nil
}

func (n *capturingNetwork) setInterfaces(ifs []Interface) {
	n.mu.Lock()
	n.ifs = ifs
	n.mu.Unlock()
}

func (n *capturingNetwork) sentTo(ap netip.AddrPort) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Contains(n.sent, ap)
}

type capturingConn struct {
	n         *capturingNetwork
	closeOnce sync.Once
	closed    chan struct{}
}

func (c *capturingConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.n.mu.Lock()
	defer c.n.mu.Unlock()
	c.n.sent = append(c.n.sent, addr.(*net.UDPAddr).AddrPort())
	return len(b), nil
}
func (c *capturingConn) ReadFrom([]byte) (int, net.Addr, error) {
	<-c.closed
	return 0, nil, net.ErrClosed
}
func (c *capturingConn) Close() error                     { c.closeOnce.Do(func() { close(c.closed) }); return nil }
func (c *capturingConn) LocalAddr() net.Addr              { return &net.UDPAddr{} }
func (c *capturingConn) SetDeadline(time.Time) error      { return nil }
func (c *capturingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *capturingConn) SetWriteDeadline(time.Time) error { return nil }

func TestAnnounceAtOnceOnNewInterface(t *testing.T) {
	flags := net.FlagUp | net.FlagBroadcast
	eth0 := Interface{Name: "eth0", Index: 2, Flags: flags, Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.1.7/24")}}
	nw := &capturingNetwork{ifs: []Interface{eth0}}
	cfg := DefaultConfig()
	cfg.Broadcast, cfg.Group6 = "", ""
	cfg.Interval = 10 * time.Second // no regular round during the test
	a, err := NewAnnouncer(cfg, sampleAnnouncement(), Options{Network: nw})
	if err != nil {
		t.Fatal(err)
	}
	startAnnouncer(t, a)
	waitFor(t, "the first round", 5*time.Second, func() bool { return nw.sentTo(netip.MustParseAddrPort("10.0.1.255:9999")) })
	wlan0 := Interface{Name: "wlan0", Index: 3, Flags: flags, Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.5.9/24")}}
	nw.setInterfaces([]Interface{eth0, wlan0})
	waitFor(t, "a round on the new interface", 5*time.Second, func() bool { return nw.sentTo(netip.MustParseAddrPort("192.168.5.255:9999")) })
	if st := a.Stats(); st.Rounds != 2 || st.InterfaceRounds != 1 {
		t.Fatalf("stats %+v", st)
	}
}

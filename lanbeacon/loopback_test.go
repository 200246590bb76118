package lanbeacon

import (
	"context"
	"crypto/rand"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loopbackNetwork is the unit tests' network: every socket is bound to
// 127.0.0.1 port 0 (whatever address is asked for), there are no interfaces
// and no IPv6, so nothing is ever broadcast from the host's namespace.
type loopbackNetwork struct {
	mu     sync.Mutex
	conns  []*countingConn
	listen chan netip.AddrPort // addresses of sockets asked for a fixed port
}

func newLoopbackNetwork() *loopbackNetwork {
	return &loopbackNetwork{listen: make(chan netip.AddrPort, 8)}
}

func (n *loopbackNetwork) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	if network != "udp4" {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	pc, err := HostNetwork{}.ListenPacket(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &countingConn{PacketConn: pc}
	n.mu.Lock()
	n.conns = append(n.conns, c)
	n.mu.Unlock()
	if _, port, _ := net.SplitHostPort(address); port != "0" {
		n.listen <- pc.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return c, nil
}

func (n *loopbackNetwork) Interfaces() ([]Interface, error) { return nil, nil }

// writes counts datagrams written on every socket of the network.
func (n *loopbackNetwork) writes() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	var w uint64
	for _, c := range n.conns {
		w += c.writes.Load()
	}
	return w
}

type countingConn struct {
	net.PacketConn
	writes atomic.Uint64
}

func (c *countingConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.writes.Add(1)
	return c.PacketConn.WriteTo(b, addr)
}

// loopbackConfig announces only by unicast to a loopback listener.
func loopbackConfig(to netip.AddrPort) Config {
	cfg := DefaultConfig()
	cfg.Broadcast = to.String()
	cfg.DirectedBroadcast = false
	cfg.Group6 = ""
	cfg.Interval = 100 * time.Millisecond
	return cfg
}

type testListener struct {
	*Listener
	addr   netip.AddrPort
	net    *loopbackNetwork
	events <-chan Event
}

func startListener(t *testing.T, cfg Config, opts Options) *testListener {
	t.Helper()
	nw := newLoopbackNetwork()
	opts.Network = nw
	cfg.Group6 = ""
	l, err := NewListener(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	events, _ := l.Subscribe(64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("listener: %v", err)
		}
	})
	select {
	case <-l.Ready():
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("listener: %v", err)
	}
	return &testListener{Listener: l, addr: <-nw.listen, net: nw, events: events}
}

// startAnnouncer runs a until the returned stop is called (which waits for Run).
func startAnnouncer(t *testing.T, a *Announcer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("announcer: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func nextEvent(t *testing.T, events <-chan Event, within time.Duration) Event {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("event stream closed")
		}
		return ev
	case <-time.After(within):
		t.Fatalf("no event within %v", within)
	}
	return Event{}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestLoopbackFoundUpdatedGone(t *testing.T) {
	l := startListener(t, DefaultConfig(), Options{})
	ann := sampleAnnouncement()
	a, err := NewAnnouncer(loopbackConfig(l.addr), ann, Options{Network: newLoopbackNetwork()})
	if err != nil {
		t.Fatal(err)
	}
	stop := startAnnouncer(t, a)

	ev := nextEvent(t, l.events, 5*time.Second)
	if ev.Kind != Found || ev.Peer.Instance != a.ID() || !ev.Peer.Announcement.equal(ann) || ev.Peer.Authenticated ||
		ev.Peer.Interval != 100*time.Millisecond || ev.Peer.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("first event %+v", ev)
	}
	if ev.Peer.Expires.Sub(ev.Peer.LastSeen) != 300*time.Millisecond {
		t.Errorf("expires %v after last seen, want three intervals", ev.Peer.Expires.Sub(ev.Peer.LastSeen))
	}
	if tab := l.Table(); len(tab) != 1 || tab[0].Name != ann.Name {
		t.Fatalf("table %+v", tab)
	}

	ann.Room = "EFGH-5678"
	if err := a.Update(ann); err != nil {
		t.Fatal(err)
	}
	// Update announces at once: well before the next interval tick would matter.
	ev = nextEvent(t, l.events, 5*time.Second)
	if ev.Kind != Updated || ev.Peer.Room != "EFGH-5678" {
		t.Fatalf("after update: %+v", ev)
	}
	stop()
	ev = nextEvent(t, l.events, 5*time.Second)
	if ev.Kind != Gone || ev.Peer.Instance != a.ID() {
		t.Fatalf("after stop: %v %+v", ev.Kind, ev.Peer)
	}
	if len(l.Table()) != 0 {
		t.Fatalf("table after goodbye: %+v", l.Table())
	}
	if st := a.Stats(); st.Goodbyes != 1 || st.Rounds < 3 {
		t.Errorf("announcer stats %+v", st)
	}
	// The listener never sent a datagram.
	if w := l.net.writes(); w != 0 {
		t.Errorf("listener wrote %d datagrams", w)
	}
}

// sendRaw sends b from a fresh loopback socket to to.
func sendRaw(t *testing.T, to netip.AddrPort, bs ...[]byte) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, b := range bs {
		if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
			t.Fatal(err)
		}
	}
}

func beacon(id InstanceID, key []byte, ts time.Time, mod func(*packet)) []byte {
	p := packet{Instance: id, Interval: 100 * time.Millisecond, Announcement: Announcement{App: "g", Name: "n"}, Timestamp: ts}
	rand.Read(p.Nonce[:])
	if mod != nil {
		mod(&p)
	}
	return appendPacket(nil, &p, key)
}

// TestLoopbackLateBeaconAfterGoodbye: an announcer's last round goes out on
// every path just before its goodbye, and a listener reads paths on separate
// sockets, so a beacon of that round can arrive after the goodbye. It must
// not bring the departed peer back for 30 s.
func TestLoopbackLateBeaconAfterGoodbye(t *testing.T) {
	l := startListener(t, DefaultConfig(), Options{})
	id, marker := InstanceID{0x1A}, InstanceID{0x1B}
	sendRaw(t, l.addr, beacon(id, nil, time.Time{}, nil))
	if ev := nextEvent(t, l.events, 5*time.Second); ev.Kind != Found || ev.Peer.Instance != id {
		t.Fatalf("%v %+v, want found", ev.Kind, ev.Peer)
	}
	sendRaw(t, l.addr,
		beacon(id, nil, time.Time{}, func(p *packet) { p.Goodbye = true }),
		beacon(id, nil, time.Time{}, nil), // late, from the other path
		beacon(marker, nil, time.Time{}, nil))
	if ev := nextEvent(t, l.events, 5*time.Second); ev.Kind != Gone || ev.Peer.Instance != id {
		t.Fatalf("%v %+v, want gone", ev.Kind, ev.Peer)
	}
	if ev := nextEvent(t, l.events, 5*time.Second); ev.Kind != Found || ev.Peer.Instance != marker {
		t.Fatalf("%v %+v, want the marker found (the late beacon ignored)", ev.Kind, ev.Peer)
	}
	if tab := l.Table(); len(tab) != 1 || tab[0].Instance != marker {
		t.Errorf("table %+v, want the marker only", tab)
	}
	if st := l.Stats(); st.Late != 1 || st.Goodbyes != 1 {
		t.Errorf("stats %+v, want one late, one goodbye", st)
	}
}

func TestLoopbackExpiry(t *testing.T) {
	l := startListener(t, DefaultConfig(), Options{})
	id := InstanceID{0xE}
	sendRaw(t, l.addr, beacon(id, nil, time.Time{}, nil))
	found := nextEvent(t, l.events, 5*time.Second)
	if found.Kind != Found {
		t.Fatalf("%+v", found)
	}
	ev := nextEvent(t, l.events, 5*time.Second)
	if ev.Kind != Expired || ev.Peer.Instance != id {
		t.Fatalf("%v %+v, want expired", ev.Kind, ev.Peer)
	}
	if silent := ev.Time.Sub(found.Peer.LastSeen); silent < 300*time.Millisecond {
		t.Errorf("expired after %v of silence, want three intervals (300ms)", silent)
	}
	if len(l.Table()) != 0 || l.Stats().Expired != 1 {
		t.Errorf("table %+v stats %+v", l.Table(), l.Stats())
	}
}

func TestLoopbackLANKey(t *testing.T) {
	cfg := DefaultConfig()
	cfg.LANKey = "party secret"
	l := startListener(t, cfg, Options{})
	key := macKey(cfg.LANKey)
	now := time.Now()

	tampered := beacon(InstanceID{3}, key, now, nil)
	tampered[headerLen+1] = 'h' // app "g" -> "h"
	valid := beacon(InstanceID{5}, key, now, nil)
	sendRaw(t, l.addr,
		beacon(InstanceID{1}, nil, now, nil),             // unsigned
		beacon(InstanceID{2}, macKey("guess"), now, nil), // forged: wrong key
		tampered, // forged: changed after signing
		beacon(InstanceID{4}, key, now.Add(-time.Hour), nil), // stale: old capture
		beacon(InstanceID{4}, key, now.Add(time.Hour), nil),  // stale: from the future
		valid,
		valid, // replayed
	)
	ev := nextEvent(t, l.events, 5*time.Second)
	if ev.Kind != Found || ev.Peer.Instance != (InstanceID{5}) || !ev.Peer.Authenticated {
		t.Fatalf("%v %+v", ev.Kind, ev.Peer)
	}
	waitFor(t, "all seven datagrams counted", 5*time.Second, func() bool { return l.Stats().Received == 7 })
	st := l.Stats()
	if st.Unsigned != 1 || st.Forged != 2 || st.Stale != 2 || st.Accepted != 1 || st.Replayed != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A forged goodbye does not remove the peer.
	sendRaw(t, l.addr, beacon(InstanceID{5}, macKey("guess"), time.Now(), func(p *packet) { p.Goodbye = true }))
	waitFor(t, "forged goodbye counted", 5*time.Second, func() bool { return l.Stats().Forged == 3 })
	if len(l.Table()) != 1 {
		t.Fatal("forged goodbye removed the peer")
	}
	if tab := l.Table(); len(tab) != 1 || len(tab) == 1 && !tab[0].Authenticated {
		t.Fatalf("table %+v", tab)
	}
}

func TestLoopbackWithoutKeyAcceptsUnauthenticated(t *testing.T) {
	l := startListener(t, DefaultConfig(), Options{})
	sendRaw(t, l.addr, beacon(InstanceID{1}, nil, time.Now(), nil), beacon(InstanceID{2}, macKey("x"), time.Now(), nil))
	seen := map[InstanceID]bool{}
	for range 2 {
		ev := nextEvent(t, l.events, 5*time.Second)
		if ev.Kind != Found || ev.Peer.Authenticated {
			t.Fatalf("%v %+v", ev.Kind, ev.Peer)
		}
		seen[ev.Peer.Instance] = true
	}
	if !seen[InstanceID{1}] || !seen[InstanceID{2}] {
		t.Fatalf("found %v", seen)
	}
}

func TestLoopbackAnnouncerSigns(t *testing.T) {
	cfg := DefaultConfig()
	cfg.LANKey = "key one!"
	l := startListener(t, cfg, Options{})
	// An announcer with another key is rejected; one with the key is taken.
	acfg := loopbackConfig(l.addr)
	acfg.LANKey = "key two!"
	wrong, _ := NewAnnouncer(acfg, sampleAnnouncement(), Options{Network: newLoopbackNetwork()})
	startAnnouncer(t, wrong)
	waitFor(t, "wrong-key beacon", 5*time.Second, func() bool { return l.Stats().Forged > 0 })
	acfg.LANKey = "key one!"
	right, _ := NewAnnouncer(acfg, sampleAnnouncement(), Options{Network: newLoopbackNetwork()})
	startAnnouncer(t, right)
	ev := nextEvent(t, l.events, 5*time.Second)
	if ev.Kind != Found || ev.Peer.Instance != right.ID() || !ev.Peer.Authenticated {
		t.Fatalf("%v %+v", ev.Kind, ev.Peer)
	}
	// Several rounds later nothing of the signed announcer counts as a replay.
	waitFor(t, "five rounds", 5*time.Second, func() bool { return right.Stats().Rounds >= 5 })
	if st := l.Stats(); st.Replayed != 0 || st.Stale != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLoopbackMalformedOversized(t *testing.T) {
	l := startListener(t, DefaultConfig(), Options{})
	good := beacon(InstanceID{9}, nil, time.Time{}, nil)
	sendRaw(t, l.addr,
		[]byte("hello"),
		good[:len(good)-2],
		append(append([]byte{}, good...), 0),
		make([]byte, 1500),                  // oversized, zeros
		append(good, make([]byte, 2000)...), // oversized, valid start
		good,
	)
	ev := nextEvent(t, l.events, 5*time.Second)
	if ev.Kind != Found || ev.Peer.Instance != (InstanceID{9}) {
		t.Fatalf("%+v", ev)
	}
	waitFor(t, "six datagrams", 5*time.Second, func() bool { return l.Stats().Received == 6 })
	if st := l.Stats(); st.Malformed != 3 || st.Oversized != 2 || st.Accepted != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLoopbackIgnoreOwnRateLimitTableFull(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxPeers = 2
	own := InstanceID{0x0}
	own[0] = 0x42
	l := startListener(t, cfg, Options{Ignore: []InstanceID{own}, RateLimit: 0.001, RateBurst: 4})
	sendRaw(t, l.addr,
		beacon(own, nil, time.Time{}, nil),
		beacon(InstanceID{1}, nil, time.Time{}, nil),
		beacon(InstanceID{2}, nil, time.Time{}, nil),
		beacon(InstanceID{3}, nil, time.Time{}, nil), // table full
		beacon(InstanceID{1}, nil, time.Time{}, nil), // over the burst of 4
	)
	waitFor(t, "five datagrams", 5*time.Second, func() bool { return l.Stats().Received == 5 })
	st := l.Stats()
	if st.Own != 1 || st.Accepted != 2 || st.TableFull != 1 || st.RateLimited != 1 {
		t.Fatalf("stats %+v", st)
	}
	if tab := l.Table(); len(tab) != 2 {
		t.Fatalf("table %+v", tab)
	}
	// Another source address has its own budget.
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Skipf("127.0.0.2 not usable: %v", err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort(beacon(InstanceID{1}, nil, time.Time{}, nil), l.addr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "beacon from 127.0.0.2", 5*time.Second, func() bool { return l.Stats().Accepted == 3 })
}

func TestSubscribeAfterStop(t *testing.T) {
	l, err := NewListener(DefaultConfig(), Options{Network: newLoopbackNetwork()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events, _ := l.Subscribe(1)
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	<-l.Ready()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, ok := <-events; ok {
		t.Fatal("event channel open after Run returned")
	}
	if late, _ := l.Subscribe(1); func() bool { _, ok := <-late; return ok }() {
		t.Fatal("subscription after stop is open")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for key, mod := range map[string]func(*Config){
		"port:":           func(c *Config) { c.Port = 70000 },
		"broadcast:":      func(c *Config) { c.Broadcast = "255.255.255.255" },
		"ipv6-group:":     func(c *Config) { c.Group6 = "ff05::1" },
		"interval:":       func(c *Config) { c.Interval = time.Millisecond },
		"max-clock-skew:": func(c *Config) { c.MaxClockSkew = 0 },
		"max-peers:":      func(c *Config) { c.MaxPeers = 0 },
		"lan-key:":        func(c *Config) { c.LANKey = "short" },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); err == nil || len(err.Error()) < len(key) || err.Error()[:len(key)] != key {
			t.Errorf("%s: %v", key, err)
		}
	}
	if _, err := NewAnnouncer(Config{}, Announcement{}, Options{}); err == nil {
		t.Error("zero config accepted")
	}
	c := DefaultConfig()
	c.Broadcast, c.DirectedBroadcast, c.Group6 = "", false, ""
	if _, err := NewAnnouncer(c, Announcement{}, Options{}); err == nil {
		t.Error("announcer with no destination accepted")
	}
}

func TestNudge(t *testing.T) {
	l := startListener(t, DefaultConfig(), Options{})
	cfg := loopbackConfig(l.addr)
	cfg.Interval = 10 * time.Second // regular rounds 9-10 s apart: none during this test
	a, err := NewAnnouncer(cfg, sampleAnnouncement(), Options{Network: newLoopbackNetwork()})
	if err != nil {
		t.Fatal(err)
	}
	startAnnouncer(t, a)
	nextEvent(t, l.events, 5*time.Second)
	// Two nudges go out at once...
	for want := uint64(2); want <= 3; want++ {
		a.Nudge()
		waitFor(t, "a nudged round", 5*time.Second, func() bool { return a.Stats().Rounds >= want })
	}
	// ...a third is over the budget: not sent at once.
	a.Nudge()
	waitFor(t, "the third nudge", 5*time.Second, func() bool { return a.Stats().NudgesLimited == 1 })
	if st := a.Stats(); st.Rounds != 3 || st.Nudged != 2 {
		t.Fatalf("stats %+v: want the start round and two nudged rounds", st)
	}
}

package lanbeacon

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
)

// The lab tests run announcers and listeners in-process inside natlab's
// network namespaces (sockets are opened on a thread switched into the
// host's namespace); every broadcast and multicast stays inside the lab.
//
// Topology: LAN "a" behind router a with hosts a/0-a/2, LAN "b" behind
// router b with host b/0, a plain LAN "q" with host q/0, and host m with one
// interface on LAN a (rz-lan0) and one on LAN q (rz-lan1).
func newBeaconLab(t *testing.T) *natlab.Lab {
	return natlab.New(t, natlab.Topology{
		Routers: []natlab.Router{
			{Name: "a", NAT: natlab.PortRestricted, Hosts: 3},
			{Name: "b", NAT: natlab.PortRestricted, Hosts: 1},
		},
		LANs:       []natlab.LAN{{Name: "q", Hosts: 1}},
		MultiHomed: []natlab.MultiHomed{{Name: "m", LANs: []string{"a", "q"}}},
	})
}

func labConfig(port int, interval time.Duration) Config {
	cfg := DefaultConfig()
	cfg.Port = port
	cfg.Broadcast = fmt.Sprintf("255.255.255.255:%d", port)
	cfg.Interval = interval
	return cfg
}

type labListener struct {
	*Listener
	events  <-chan Event
	readyAt time.Time
}

func listenIn(t *testing.T, h *natlab.Host, cfg Config, opts Options) *labListener {
	t.Helper()
	if opts.Network == nil {
		opts.Network = InNamespace(h.Do)
	}
	l, err := NewListener(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	events, _ := l.Subscribe(256)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("listener in %v: %v", h, err)
		}
	})
	select {
	case <-l.Ready():
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("listener in %v: %v", h, err)
	}
	return &labListener{Listener: l, events: events, readyAt: time.Now()}
}

func announceIn(t *testing.T, h *natlab.Host, cfg Config, name string, opts Options) (*Announcer, func()) {
	t.Helper()
	if opts.Network == nil {
		opts.Network = InNamespace(h.Do)
	}
	a, err := NewAnnouncer(cfg, Announcement{App: "labgame", Name: name}, opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := startAnnouncer(t, a)
	select {
	case <-a.Ready():
	case <-time.After(5 * time.Second):
		t.Fatalf("announcer in %v not ready", h)
	}
	return a, stop
}

// waitFound waits until every id in want has been found (or updated) by l
// before deadline, and returns the latest peer state of each.
func waitFound(t *testing.T, l *labListener, deadline time.Time, want ...InstanceID) map[InstanceID]Peer {
	t.Helper()
	got := map[InstanceID]Peer{}
	missing := func() int {
		n := 0
		for _, id := range want {
			if _, ok := got[id]; !ok {
				n++
			}
		}
		return n
	}
	for missing() > 0 {
		select {
		case ev, ok := <-l.events:
			if !ok {
				t.Fatal("event stream closed")
			}
			if ev.Kind == Found || ev.Kind == Updated {
				got[ev.Peer.Instance] = ev.Peer
			}
		case <-time.After(time.Until(deadline)):
			t.Fatalf("%d of %d peers not found by the deadline (%v after the listener was ready); found %v",
				missing(), len(want), deadline.Sub(l.readyAt), got)
		}
	}
	return got
}

func TestLab(t *testing.T) {
	lab := newBeaconLab(t)
	a0, a1, a2 := lab.Host("a", 0), lab.Host("a", 1), lab.Host("a", 2)
	b0, q0, m := lab.Host("b", 0), lab.Host("q", 0), lab.MultiHomed("m")

	t.Run("ThreeHostsWithinOneIntervalNotAcrossRouter", func(t *testing.T) {
		const interval = time.Second
		cfg := labConfig(9001, interval)
		hosts := []*natlab.Host{a0, a1, a2}
		var anns []*Announcer
		for i, h := range hosts {
			a, _ := announceIn(t, h, cfg, fmt.Sprintf("a%d", i), Options{})
			anns = append(anns, a)
		}
		annB, _ := announceIn(t, b0, cfg, "b0", Options{})
		// Listeners start after the announcers' first round: they must hear
		// every other host from the periodic rounds, within one interval.
		var ls []*labListener
		for i, h := range hosts {
			ls = append(ls, listenIn(t, h, cfg, Options{Ignore: []InstanceID{anns[i].ID()}}))
		}
		lb := listenIn(t, b0, cfg, Options{Ignore: []InstanceID{annB.ID()}})
		const slack = 300 * time.Millisecond // scheduling under -race on a shared machine
		for i, l := range ls {
			var want []InstanceID
			for j, a := range anns {
				if j != i {
					want = append(want, a.ID())
				}
			}
			waitFound(t, l, l.readyAt.Add(interval+slack), want...)
		}
		// b/0 announced all along. Once b has finished two more rounds and
		// a/0 has taken three more beacons from its LAN after that, anything b
		// sent would have arrived (LAN delivery takes microseconds).
		if annB.Stats().Sent == 0 {
			t.Fatalf("b/0 sent nothing: %+v", annB.Stats())
		}
		r0 := annB.Stats().Rounds
		waitFor(t, "two more rounds of b/0", 10*interval, func() bool { return annB.Stats().Rounds >= r0+2 })
		acc := ls[0].Stats().Accepted
		waitFor(t, "three more beacons at a/0", 10*interval, func() bool { return ls[0].Stats().Accepted >= acc+3 })
		for i, l := range ls {
			tab := l.Table()
			if len(tab) != 2 {
				t.Errorf("a/%d table has %d peers, want its 2 LAN neighbours: %+v", i, len(tab), tab)
			}
			for _, p := range tab {
				if p.Instance == annB.ID() {
					t.Errorf("a/%d found b/0 behind another router", i)
				}
			}
			// By now every path has been heard: IPv4 broadcast and IPv6 link-local.
			for _, p := range tab {
				j := slices.IndexFunc(anns, func(a *Announcer) bool { return a.ID() == p.Instance })
				v4, v6 := false, false
				for _, s := range p.Sources {
					v4 = v4 || (j >= 0 && s.Addr == hosts[j].Addr())
					v6 = v6 || (s.Addr.IsLinkLocalUnicast() && s.Interface == "rz-lan0")
				}
				if !v4 || !v6 {
					t.Errorf("a/%d sees a/%d from %+v, want its IPv4 address and a link-local address on rz-lan0",
						i, j, p.Sources)
				}
			}
			if st := l.Stats(); st.Own == 0 {
				t.Errorf("a/%d never heard (and skipped) its own beacons: %+v", i, st)
			}
		}
		if st := lb.Stats(); len(lb.Table()) != 0 || st.Received != st.Own || st.Own == 0 {
			t.Errorf("b/0 heard someone else: table %+v stats %+v", lb.Table(), st)
		}
	})

	t.Run("MultiHomedFoundOnBothLANs", func(t *testing.T) {
		cfg := labConfig(9002, 500*time.Millisecond)
		cfg.Group6 = "" // IPv4 only: the directed broadcasts must cover the second LAN
		mIfs := m.Ifaces()
		onA := listenIn(t, a0, cfg, Options{})
		onQ := listenIn(t, q0, cfg, Options{})
		annM, _ := announceIn(t, m, cfg, "m", Options{})
		deadline := time.Now().Add(5 * time.Second)
		if p := waitFound(t, onA, deadline, annM.ID())[annM.ID()]; p.Addr() != mIfs[0].Addr.Addr() {
			t.Errorf("a/0 sees m from %v, want %v", p.Addr(), mIfs[0].Addr.Addr())
		}
		if p := waitFound(t, onQ, deadline, annM.ID())[annM.ID()]; p.Addr() != mIfs[1].Addr.Addr() {
			t.Errorf("q/0 sees m from %v, want %v", p.Addr(), mIfs[1].Addr.Addr())
		}
		// And m, listening, finds hosts on both LANs through the right interface.
		onM := listenIn(t, m, cfg, Options{Ignore: []InstanceID{annM.ID()}})
		annA, _ := announceIn(t, a1, cfg, "a1", Options{})
		annQ, _ := announceIn(t, q0, cfg, "q0", Options{})
		peers := waitFound(t, onM, time.Now().Add(5*time.Second), annA.ID(), annQ.ID())
		if s := peers[annA.ID()].Sources[0]; s.Addr != a1.Addr() || s.Interface != mIfs[0].Name {
			t.Errorf("m sees a/1 as %+v, want %v on %s", s, a1.Addr(), mIfs[0].Name)
		}
		if s := peers[annQ.ID()].Sources[0]; s.Addr != q0.Addr() || s.Interface != mIfs[1].Name {
			t.Errorf("m sees q/0 as %+v, want %v on %s", s, q0.Addr(), mIfs[1].Name)
		}
	})

	t.Run("IPv6Multicast", func(t *testing.T) {
		cfg := labConfig(9003, 500*time.Millisecond)
		cfg.Broadcast, cfg.DirectedBroadcast = "", false // IPv6 link-local multicast only
		mIfs := m.Ifaces()
		onM := listenIn(t, m, cfg, Options{})
		onA1 := listenIn(t, a1, cfg, Options{})
		annA, _ := announceIn(t, a0, cfg, "a0", Options{})
		annQ, _ := announceIn(t, q0, cfg, "q0", Options{})
		deadline := time.Now().Add(5 * time.Second)
		peers := waitFound(t, onM, deadline, annA.ID(), annQ.ID())
		for id, ifname := range map[InstanceID]string{annA.ID(): mIfs[0].Name, annQ.ID(): mIfs[1].Name} {
			s := peers[id].Sources[0]
			if !s.Addr.Is6() || !s.Addr.IsLinkLocalUnicast() || s.Addr.Zone() != ifname || s.Interface != ifname {
				t.Errorf("m sees %v from %+v, want a link-local address on %s", id, s, ifname)
			}
		}
		s := waitFound(t, onA1, deadline, annA.ID())[annA.ID()].Sources[0]
		if !s.Addr.IsLinkLocalUnicast() || s.Addr.Zone() != a1.Ifaces()[0].Name {
			t.Errorf("a/1 sees a/0 from %+v", s)
		}
		if _, ok := peers[annQ.ID()]; !ok {
			t.Error("q/0 missing")
		}
		if len(onA1.Table()) != 1 {
			t.Errorf("a/1 sees %+v, want a/0 only (q/0 is on another LAN)", onA1.Table())
		}
	})

	t.Run("NewcomerHearsEveryoneAtOnceWithNudge", func(t *testing.T) {
		// A 10 s interval: without nudges the newcomer would wait up to 10 s
		// for the others' next rounds.
		cfg := labConfig(9008, 10*time.Second)
		var anns []*Announcer
		for i, h := range []*natlab.Host{a0, a1} {
			a, _ := announceIn(t, h, cfg, fmt.Sprintf("a%d", i), Options{})
			l := listenIn(t, h, cfg, Options{Ignore: []InstanceID{a.ID()}})
			go func() {
				for ev := range l.events {
					if ev.Kind == Found {
						a.Nudge()
					}
				}
			}()
			anns = append(anns, a)
		}
		newcomer := listenIn(t, a2, cfg, Options{})
		start := time.Now()
		announceIn(t, a2, cfg, "a2", Options{})
		waitFound(t, newcomer, start.Add(2*time.Second), anns[0].ID(), anns[1].ID())
		t.Logf("newcomer heard both hosts %v after announcing", time.Since(start).Round(time.Millisecond))
		for i, a := range anns {
			if a.Stats().Nudged == 0 {
				t.Errorf("a/%d: no nudged round: %+v", i, a.Stats())
			}
		}
	})

	t.Run("GoodbyeRemovesAtOnce", func(t *testing.T) {
		// A 10 s interval: expiry would take 30 s; the goodbye must not wait.
		cfg := labConfig(9004, 10*time.Second)
		l := listenIn(t, a1, cfg, Options{})
		a, stop := announceIn(t, a0, cfg, "a0", Options{})
		waitFound(t, l, time.Now().Add(5*time.Second), a.ID())
		stopped := time.Now()
		stop()
		for {
			ev := nextEvent(t, l.events, 3*time.Second)
			if ev.Kind == Updated {
				continue // a second path (IPv6) of the first round
			}
			if ev.Kind != Gone || ev.Peer.Instance != a.ID() {
				t.Fatalf("after stop: %v %+v, want gone", ev.Kind, ev.Peer)
			}
			t.Logf("gone %v after stop", ev.Time.Sub(stopped))
			break
		}
		if len(l.Table()) != 0 {
			t.Fatalf("table %+v", l.Table())
		}
	})

	t.Run("SilenceExpires", func(t *testing.T) {
		const interval = 200 * time.Millisecond
		cfg := labConfig(9005, interval)
		l := listenIn(t, a1, cfg, Options{})
		nw := &mutableNetwork{Network: InNamespace(a0.Do)}
		a, _ := announceIn(t, a0, cfg, "a0", Options{Network: nw})
		waitFound(t, l, time.Now().Add(5*time.Second), a.ID())
		// Alive for well over three intervals: no expiry.
		r0 := a.Stats().Rounds
		waitFor(t, "six rounds", 10*time.Second, func() bool { return a.Stats().Rounds >= r0+6 })
		nw.muted.Store(true) // the host vanishes without a goodbye
		mutedAt := time.Now()
		for {
			ev := nextEvent(t, l.events, 5*time.Second)
			if ev.Kind == Updated {
				continue
			}
			if ev.Kind != Expired || ev.Peer.Instance != a.ID() {
				t.Fatalf("%v %+v, want expired", ev.Kind, ev.Peer)
			}
			if ev.Time.Before(mutedAt) {
				t.Fatalf("expired at %v while still announcing (muted at %v)", ev.Time, mutedAt)
			}
			if silent := ev.Time.Sub(ev.Peer.LastSeen); silent < 3*interval {
				t.Fatalf("expired after %v of silence, want at least %v", silent, 3*interval)
			}
			break
		}
		if len(l.Table()) != 0 {
			t.Fatalf("table %+v", l.Table())
		}
	})

	t.Run("TwoListenersOneHostBothReceiveEverything", func(t *testing.T) {
		cfg := labConfig(9006, 200*time.Millisecond)
		l1 := listenIn(t, a1, cfg, Options{})
		l2 := listenIn(t, a1, cfg, Options{}) // same port, same host
		a, stop := announceIn(t, a0, cfg, "a0", Options{})
		waitFound(t, l1, time.Now().Add(5*time.Second), a.ID())
		waitFound(t, l2, time.Now().Add(5*time.Second), a.ID())
		for i := range 5 {
			room := fmt.Sprintf("room-%d", i)
			if err := a.Update(Announcement{App: "labgame", Name: "a0", Room: room}); err != nil {
				t.Fatal(err)
			}
			for _, l := range []*labListener{l1, l2} {
				for {
					ev := nextEvent(t, l.events, 5*time.Second)
					if ev.Kind == Updated && ev.Peer.Room == room {
						break
					}
				}
			}
		}
		stop()
		for _, l := range []*labListener{l1, l2} {
			for ev := nextEvent(t, l.events, 5*time.Second); ev.Kind != Gone; ev = nextEvent(t, l.events, 5*time.Second) {
			}
		}
		sent := a.Stats().Sent
		for i, l := range []*labListener{l1, l2} {
			// The other goodbye paths may still be in flight.
			waitFor(t, fmt.Sprintf("listener %d to receive all %d datagrams", i+1, sent), 5*time.Second,
				func() bool { return l.Stats().Received >= sent })
			st := l.Stats()
			// A beacon of the last round that arrives after a goodbye on
			// another path is counted late, not taken.
			if st.Accepted+st.Late+st.Goodbyes != sent || st.Received != sent {
				t.Errorf("listener %d took %d beacons + %d late + %d goodbyes of %d received, announcer sent %d",
					i+1, st.Accepted, st.Late, st.Goodbyes, st.Received, sent)
			}
		}
		t.Logf("announcer sent %d datagrams; each listener received all of them", sent)
	})

	t.Run("SignedOnTheLAN", func(t *testing.T) {
		cfg := labConfig(9007, 300*time.Millisecond)
		cfg.LANKey = "lan party"
		keyed := listenIn(t, a1, cfg, Options{})
		open := cfg
		open.LANKey = ""
		unkeyed := listenIn(t, a2, open, Options{})
		a, _ := announceIn(t, a0, cfg, "a0", Options{})
		stranger, _ := announceIn(t, m, open, "m", Options{}) // no key: rejected by a/1
		deadline := time.Now().Add(5 * time.Second)
		if p := waitFound(t, keyed, deadline, a.ID())[a.ID()]; !p.Authenticated {
			t.Errorf("keyed listener: %+v not authenticated", p)
		}
		ps := waitFound(t, unkeyed, deadline, a.ID(), stranger.ID())
		if ps[a.ID()].Authenticated || ps[stranger.ID()].Authenticated {
			t.Errorf("a listener without key marked a peer authenticated: %+v", ps)
		}
		waitFor(t, "stranger's beacons rejected", 5*time.Second, func() bool { return keyed.Stats().Unsigned > 0 })
		for _, p := range keyed.Table() {
			if p.Instance == stranger.ID() {
				t.Error("keyed listener took an unsigned beacon")
			}
		}
		if st := keyed.Stats(); st.Replayed != 0 || st.Forged != 0 || st.Stale != 0 {
			t.Errorf("multi-path delivery of signed beacons miscounted: %+v", st)
		}
	})
}

// mutableNetwork silently drops every datagram once muted: a host that
// vanished without a goodbye.
type mutableNetwork struct {
	Network
	muted atomic.Bool
}

func (n *mutableNetwork) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	pc, err := n.Network.ListenPacket(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return &mutableConn{PacketConn: pc, muted: &n.muted}, nil
}

type mutableConn struct {
	net.PacketConn
	muted *atomic.Bool
}

func (c *mutableConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.muted.Load() {
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, addr)
}

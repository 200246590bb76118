package punch

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/benchdoc"
	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// labSignaling runs the signaling server and STUN (wired as `serve` wires
// them) inside the lab's server namespace and returns the signaling URL.
func labSignaling(tb testing.TB, lab *natlab.Lab) string {
	tb.Helper()
	srv := lab.Server()
	stunAddr := netip.AddrPortFrom(srv.Addr(), 3478)
	cfg := signaling.DefaultConfig()
	cfg.Open = signaling.OpenAll
	sig, err := signaling.New(cfg, signaling.Options{
		ICEServers: func(string) ([]client.ICEServer, error) {
			return []client.ICEServer{{URLs: []string{"stun:" + stunAddr.String()}}}, nil
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sig.Run(ctx); close(done) }()
	ln, err := srv.Listen(ctx, "tcp", netip.AddrPortFrom(srv.Addr(), 8080).String())
	if err != nil {
		tb.Fatal(err)
	}
	hs := &http.Server{Handler: sig.Handler()}
	go hs.Serve(ln)
	tb.Cleanup(func() { hs.Close(); cancel(); <-done })
	stunservertest.StartConfig(tb, stunserver.Config{Primary: stunAddr}, stunserver.Options{Network: srv, OnPeerToken: sig.ObservePeerToken})
	return "http://" + ln.Addr().String()
}

// labAgent starts an agent on a lab host, reaching signaling from inside the
// host's namespace and offering its LAN address as host candidate.
// delay, when positive, is added to every packet and signaling write the
// agent sends (see delayLine).
func labAgent(tb testing.TB, h *natlab.Host, url string, delay time.Duration) *Agent {
	tb.Helper()
	conn, err := h.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		tb.Fatal(err)
	}
	if delay > 0 {
		conn = &delayedPacketConn{PacketConn: conn, line: newDelayLine(delay)}
	}
	id, _ := NewIdentity()
	ep, err := NewEndpoint(conn, id, DefaultConfig(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ep.Close() })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := h.Dial(ctx, network, addr)
		if err != nil || delay <= 0 {
			return c, err
		}
		return &delayedConn{Conn: c, line: newDelayLine(delay)}, nil
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := StartAgent(ctx, ep, AgentConfig{
		Signaling: client.Config{URL: url, HTTPClient: hc, Register: client.Register{Name: h.String()}},
		HostAddrs: []netip.Addr{h.Addr()},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { a.Close() })
	return a
}

func nextSession(tb testing.TB, a *Agent) PeerSession {
	tb.Helper()
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	for {
		select {
		case s := <-a.Sessions():
			return s
		case e := <-a.Events():
			if e.Event == "failed" {
				tb.Fatalf("connect failed: %s", e.Error)
			}
		case <-t.C:
			tb.Fatal("no session within 15s")
		}
	}
}

// BenchmarkConnectToFirstDatagram measures, in the NAT lab with 20 ms of
// delay on each peer's access link (netem on the router's WAN where the
// kernel has it, else a delay line on the peer's sockets), the time from a peer's connect request to
// the signaling server until the first datagram arrives over the direct path.
//
//	go test ./punch -run '^$' -bench ConnectToFirstDatagram -benchtime 60x
func BenchmarkConnectToFirstDatagram(b *testing.B) {
	natlab.Require(b)
	delay := 20 * time.Millisecond
	top := natlab.Topology{Routers: []natlab.Router{
		{Name: "a", NAT: natlab.PortRestricted, Hosts: 1},
		{Name: "b", NAT: natlab.PortRestricted, Hosts: 1},
	}}
	how := "netem on each router's WAN"
	sockDelay := time.Duration(0)
	if natlab.HasNetem() {
		for i := range top.Routers {
			top.Routers[i].Netem = &natlab.Netem{Delay: delay}
		}
	} else {
		how = "a delay line on each peer's UDP socket and signaling connection (this kernel has no netem)"
		sockDelay = delay
	}
	lab := natlab.New(b, top)
	url := labSignaling(b, lab)
	alice, bob := labAgent(b, lab.Host("a", 0), url, sockDelay), labAgent(b, lab.Host("b", 0), url, sockDelay)
	ctx := context.Background()
	room, err := alice.CreateRoom(ctx, client.CreateRoom{Name: "bench", Capacity: 2})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := bob.Join(ctx, room.Room.Code); err != nil {
		b.Fatal(err)
	}
	nextSession(b, alice).Close() // the join's own connect
	nextSession(b, bob).Close()

	var took []time.Duration
	var peerRTT time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := bob.Signaling().Connect(ctx, client.Connect{PeerID: alice.Signaling().PeerID()}); err != nil {
			b.Fatal(err)
		}
		// Each side sends as soon as its own session is up; the first
		// datagram to arrive, either way, stops the clock.
		arrived := make(chan time.Duration, 2)
		up := make(chan PeerSession, 2)
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		for _, ag := range []*Agent{alice, bob} {
			go func() {
				select {
				case s := <-ag.Sessions():
					s.SendDatagram([]byte("first"))
					up <- s
					if _, err := s.ReceiveDatagram(dctx); err == nil {
						arrived <- time.Since(start)
					}
				case <-dctx.Done():
				}
			}()
		}
		select {
		case d := <-arrived:
			took = append(took, d)
		case <-dctx.Done():
			b.Fatal("no datagram arrived")
		}
		sa, sb := <-up, <-up
		cancel()
		peerRTT = sb.Path().RTT
		sa.Close()
		sb.Close()
	}
	b.StopTimer()
	slices.Sort(took)
	p := func(q float64) time.Duration { return took[int(q*float64(len(took)-1))] }
	b.ReportMetric(float64(p(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(p(0.95).Milliseconds()), "p95-ms")
	if b.N < 50 {
		return
	}
	rtt := 2 * delay // each direction crosses one delayed WAN
	goal := 2*rtt + 100*time.Millisecond
	verdict := "meets"
	if p(0.5) > goal {
		verdict = "misses"
	}
	err = benchdoc.Update("punch-connect-latency", fmt.Sprintf(`## Punch: connect request to first direct datagram

Command: `+"`go test ./punch -run '^$' -bench ConnectToFirstDatagram -benchtime 60x`"+` (as root; NAT lab)

Two port-restricted NATs, %v one-way delay added to each peer's outgoing traffic by %s
(peer-to-peer RTT %v, QUIC's smoothed RTT measured %v), signaling and STUN on the lab's server. Clock starts when the joining peer sends `+"`connect`"+`
to the signaling server; stops when the first QUIC datagram (each side sends one as soon as its session is up) arrives over the punched path. %d runs. %s.

| p50 | p95 | min | max | goal (p50 ≤ 2·RTT + 100 ms) |
| --- | --- | --- | --- | --- |
| %v | %v | %v | %v | %v: %s |
`, delay, how, rtt, peerRTT.Round(time.Millisecond), len(took), benchdoc.Machine(),
		p(0.5).Round(time.Millisecond), p(0.95).Round(time.Millisecond), took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), goal, verdict))
	if err != nil {
		b.Error(err)
	}
}

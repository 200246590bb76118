package punch

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
)

// rfc5780Lab runs an RFC 5780 STUN server on the lab's server host (both of
// its addresses), so peers can tell their NAT's mapping.
func rfc5780Lab(t *testing.T, lab *natlab.Lab) netip.AddrPort {
	srv := lab.Server()
	return stunservertest.StartConfig(t, stunserver.Config{
		Primary:   netip.AddrPortFrom(srv.Addr(), 3478),
		Alternate: netip.AddrPortFrom(srv.AltAddr(), 3479),
	}, stunserver.Options{Network: srv}).Primary
}

// birthdayConfig is the default config with the hard side's sockets opened
// in h's namespace.
func birthdayConfig(h *natlab.Host) Config {
	cfg := DefaultConfig()
	cfg.Birthday.ListenPacket = h.ListenPacket
	return cfg
}

// connectLab runs Connect on both lab peers (with each other's NAT type, as
// signaling hands them over) and returns both sessions (nil on error).
func connectLab(t *testing.T, a, b labPeer, session [8]byte, window time.Duration) (sa, sb *Session, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	start := time.Now().Add(30 * time.Millisecond)
	x, y := connectBoth(ctx, a.e, b.peer(session, start), b.e, a.peer(session, start))
	for _, s := range []*Session{x.s, y.s} {
		if s != nil {
			t.Cleanup(func() { s.Close() })
		}
	}
	if x.err != nil {
		return nil, nil, x.err
	}
	return x.s, y.s, y.err
}

// In-process: a port-restricted and a symmetric NAT find a direct path by
// birthday probing (no relay here, so Connect waits for it), and the NAT
// types come from RFC 5780 tests against the lab's server.
func TestBirthdayProbingFindsDirectPath(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "pr", NAT: natlab.PortRestricted, Hosts: 1},
		{Name: "sy", NAT: natlab.Symmetric, Hosts: 1},
	}})
	stunAddr := rfc5780Lab(t, lab)
	hp, hs := lab.Host("pr", 0), lab.Host("sy", 0)
	easy := newLabPeerConfig(t, hp, stunAddr, birthdayConfig(hp))
	hard := newLabPeerConfig(t, hs, stunAddr, birthdayConfig(hs))
	if easy.nat != NATEndpointIndependent || !hard.nat.hard() {
		t.Fatalf("NAT types: port-restricted %q, symmetric %q; want endpoint-independent and endpoint-dependent", easy.nat, hard.nat)
	}
	started := time.Now()
	se, sh, err := connectLab(t, easy, hard, [8]byte{0xB1}, 30*time.Second)
	if err != nil {
		t.Fatalf("no session: %v (prober sent %d probes, opener opened %d sockets)", err, easy.e.Stats().BirthdayProbes, hard.e.Stats().BirthdaySockets)
	}
	if se.Path().Kind != Direct || sh.Path().Kind != Direct {
		t.Fatalf("paths %+v / %+v, want direct", se.Path(), sh.Path())
	}
	// The opener's path leaves from one of its probing sockets, to the easy side's public address.
	if p := sh.Path(); p.Local == hard.e.LocalAddr() || p.Remote != easy.cands[1].Addr {
		t.Errorf("opener's path %+v: want a probing socket to %v", p, easy.cands[1].Addr)
	}
	pe, ph := se.Probe(), sh.Probe()
	if pe == nil || ph == nil {
		t.Fatal("no probing on a port-restricted × symmetric pair")
	}
	<-pe.Done()
	<-ph.Done()
	re, rh := pe.Result(), ph.Result()
	if !re.Found || !rh.Found || re.Role != roleProber || rh.Role != roleOpener || re.Probes == 0 || rh.Probes != DefaultBirthday().Sockets {
		t.Fatalf("probe results: %v / %v", re, rh)
	}
	if n := len(ph.sockets()); n != 1 {
		t.Errorf("opener keeps %d sockets after the answer, want only the winner", n)
	}
	t.Logf("direct after %v: %v; %v", time.Since(started).Round(time.Millisecond), re, rh)
}

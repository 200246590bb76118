package natlab_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
	"github.com/rendezvous-p2p/rendezvous/punch/natcheck"
)

// TestPlayerReport is the example of docs/natlab.md: reproduce a player's
// setup (home router: port-restricted, no hairpin; friend: symmetric CGNAT),
// run the STUN server in the lab, look at both players with natcheck, and cut
// the direct path mid-session.
func TestPlayerReport(t *testing.T) {
	t.Parallel()
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "home", NAT: natlab.PortRestricted, Hairpin: false, Hosts: 1},
		{Name: "cgnat", NAT: natlab.Symmetric, Hosts: 1, UDPTimeout: 30 * time.Second},
	}})
	srv := lab.Server() // 203.0.113.1 and .2, 2001:db8::1 and ::2
	stunservertest.StartConfig(t, stunserver.Config{
		Primary:   netip.AddrPortFrom(srv.Addr(), 3478),
		Alternate: netip.AddrPortFrom(srv.AltAddr(), 3479),
	}, stunserver.Options{Network: srv.Host}) // a lab host is a netx.Network

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for name, want := range map[string]natcheck.Difficulty{"home": natcheck.Moderate, "cgnat": natcheck.Hard} {
		rep, err := natcheck.Check(ctx, natcheck.Options{
			Server:  "203.0.113.1:3478",
			Network: lab.Host(name, 0), // sockets inside the player's host
			Timeout: 300 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Difficulty() != want {
			t.Errorf("%s: %v, want %v:\n%s", name, rep.Difficulty(), want, rep.Summary())
		}
	}

	// A network that blocks UDP to the server (forces TURN over TCP/TLS).
	unblock := lab.Router("cgnat").BlockServerUDP(t)
	rep, err := natcheck.Check(ctx, natcheck.Options{Server: "203.0.113.1:3478", Network: lab.Host("cgnat", 0), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Difficulty() != natcheck.Blocked {
		t.Errorf("with UDP to the server blocked: %v, want %v", rep.Difficulty(), natcheck.Blocked)
	}
	unblock()
}

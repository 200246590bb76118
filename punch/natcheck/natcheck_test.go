package natcheck_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
	"github.com/rendezvous-p2p/rendezvous/punch/natcheck"
)

// On loopback there is no NAT: the RFC 5780 server's alternate address
// reaches the socket directly. Runs without root.
func TestLoopbackNoNAT(t *testing.T) {
	addrs := stunservertest.StartRFC5780(t, stunserver.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := natcheck.Check(ctx, natcheck.Options{Server: addrs.Primary.String(), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.UDP || !rep.RFC5780 || rep.BehindNAT || rep.Mapping != natcheck.MappingNoNAT ||
		rep.Filtering != natcheck.FilteringEndpointIndependent || !rep.PortPreserved {
		t.Errorf("report %+v; want UDP, RFC 5780, no NAT, open filtering, port kept", rep)
	}
	if pub, _ := netip.ParseAddrPort(rep.Public); pub.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("public %q, want 127.0.0.1", rep.Public)
	}
	if rep.Difficulty() != natcheck.Open || !strings.Contains(rep.Summary(), "no NAT") {
		t.Errorf("difficulty %v, summary %q", rep.Difficulty(), rep.Summary())
	}
}

func TestOptionErrors(t *testing.T) {
	ctx := context.Background()
	for _, o := range []natcheck.Options{
		{},
		{Server: "127.0.0.1"},
		{Server: "127.0.0.1:3478", Lifetime: time.Hour},
		{Server: "127.0.0.1:3478", Server6: "127.0.0.1:3478"},
	} {
		if _, err := natcheck.Check(ctx, o); err == nil {
			t.Errorf("Check(%+v) = nil error", o)
		}
	}
}

// A server that never answers: the report says UDP is blocked.
func TestNoAnswer(t *testing.T) {
	// Our own socket that reads nothing: a black hole on loopback.
	hole, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := natcheck.Check(ctx, natcheck.Options{Server: hole.LocalAddr().String(), Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.UDP || rep.Difficulty() != natcheck.Blocked || !strings.Contains(rep.Summary(), "blocks UDP") {
		t.Errorf("report %+v: want UDP false", rep)
	}
}

// Package stunservertest starts STUN servers on loopback for tests, after
// tailscale's net/stun/stuntest.
package stunservertest

import (
	"net/netip"
	"testing"

	"github.com/rendezvous-p2p/rendezvous/internal/service/servicetest"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
)

// AlternateLoopback is the second loopback IP the RFC 5780 server binds.
// Linux routes all of 127.0.0.0/8 to lo, so it needs no setup.
var AlternateLoopback = netip.MustParseAddr("127.0.0.2")

// Start runs a server with a single socket on 127.0.0.1 and returns its
// addresses. It stops when the test ends.
func Start(t testing.TB, opts stunserver.Options) stunserver.Addrs {
	t.Helper()
	return run(t, stunserver.Config{Primary: netip.MustParseAddrPort("127.0.0.1:0")}, opts)
}

// StartRFC5780 runs a four-socket server on 127.0.0.1 and 127.0.0.2, random
// ports, so an RFC 5780 client can test NAT mapping and filtering behaviour.
func StartRFC5780(t testing.TB, opts stunserver.Options) stunserver.Addrs {
	t.Helper()
	return run(t, stunserver.Config{
		Primary:   netip.MustParseAddrPort("127.0.0.1:0"),
		Alternate: netip.AddrPortFrom(AlternateLoopback, 0),
	}, opts)
}

// StartConfig runs a server with cfg (e.g. inside a network namespace via
// opts.Network) and returns its addresses.
func StartConfig(t testing.TB, cfg stunserver.Config, opts stunserver.Options) stunserver.Addrs {
	t.Helper()
	return run(t, cfg, opts)
}

func run(t testing.TB, cfg stunserver.Config, opts stunserver.Options) stunserver.Addrs {
	t.Helper()
	srv, err := stunserver.New(cfg, opts)
	if err != nil {
		t.Fatalf("stunservertest: %v", err)
	}
	servicetest.Start(t, srv)
	return srv.Addrs()
}

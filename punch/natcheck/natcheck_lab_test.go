package natcheck_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
	"github.com/rendezvous-p2p/rendezvous/punch/natcheck"
)

// startSTUN runs rendezvous' STUN server in the lab's server namespace on
// both address families, with RFC 5780 alternates.
func startSTUN(t *testing.T, lab *natlab.Lab, rfc5780 bool) {
	t.Helper()
	srv := lab.Server()
	cfg4 := stunserver.Config{Primary: netip.AddrPortFrom(srv.Addr(), 3478)}
	cfg6 := stunserver.Config{Primary: netip.AddrPortFrom(srv.Addr6(), 3478)}
	if rfc5780 {
		cfg4.Alternate = netip.AddrPortFrom(srv.AltAddr(), 3479)
		cfg6.Alternate = netip.AddrPortFrom(srv.AltAddr6(), 3479)
	}
	stunservertest.StartConfig(t, cfg4, stunserver.Options{Network: srv.Host})
	stunservertest.StartConfig(t, cfg6, stunserver.Options{Network: srv.Host})
}

func checkFrom(t *testing.T, lab *natlab.Lab, h *natlab.Host, opts natcheck.Options) *natcheck.Report {
	t.Helper()
	if opts.Server == "" {
		opts.Server = netip.AddrPortFrom(lab.Server().Addr(), 3478).String()
		opts.Server6 = netip.AddrPortFrom(lab.Server().Addr6(), 3478).String()
	}
	if opts.Network == nil {
		opts.Network = h
	}
	if opts.Timeout == 0 {
		opts.Timeout = 300 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := natcheck.Check(ctx, opts)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	t.Logf("report:\n%s\nsummary:\n%s", js, rep.Summary())
	return rep
}

func TestProfilesInLab(t *testing.T) {
	type want struct {
		nat       bool
		mapping   natcheck.Mapping
		filtering natcheck.Filtering
		preserved bool
		summary   string
	}
	wants := map[natlab.NAT]want{
		natlab.FullCone:          {true, natcheck.MappingEndpointIndependent, natcheck.FilteringEndpointIndependent, true, "same public port for every destination"},
		natlab.AddressRestricted: {true, natcheck.MappingEndpointIndependent, natcheck.FilteringAddressDependent, true, "same public port for every destination"},
		natlab.PortRestricted:    {true, natcheck.MappingEndpointIndependent, natcheck.FilteringAddressAndPortDependent, true, "same public port for every destination"},
		natlab.Symmetric:         {true, natcheck.MappingAddressAndPortDependent, natcheck.FilteringAddressAndPortDependent, false, "new public port for every player"},
		natlab.None:              {false, natcheck.MappingNoNAT, natcheck.FilteringEndpointIndependent, true, "public address (no NAT)"},
	}
	for _, nat := range natlab.NATs {
		for _, hairpin := range []bool{false, true} {
			if nat == natlab.None && hairpin {
				continue
			}
			t.Run(fmt.Sprintf("%v/hairpin=%v", nat, hairpin), func(t *testing.T) {
				t.Parallel()
				lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{{Name: "a", NAT: nat, Hairpin: hairpin, Hosts: 1}}})
				startSTUN(t, lab, true)
				rep := checkFrom(t, lab, lab.Host("a", 0), natcheck.Options{})
				w := wants[nat]
				wantHairpin := natcheck.No
				if hairpin || nat == natlab.None {
					wantHairpin = natcheck.Yes
				}
				if !rep.UDP || !rep.RFC5780 {
					t.Fatalf("UDP %v RFC5780 %v, want both", rep.UDP, rep.RFC5780)
				}
				if rep.BehindNAT != w.nat || rep.Mapping != w.mapping || rep.Filtering != w.filtering ||
					rep.PortPreserved != w.preserved || rep.Hairpin != wantHairpin {
					t.Errorf("got nat=%v mapping=%v filtering=%v preserved=%v hairpin=%v; want nat=%v mapping=%v filtering=%v preserved=%v hairpin=%v",
						rep.BehindNAT, rep.Mapping, rep.Filtering, rep.PortPreserved, rep.Hairpin,
						w.nat, w.mapping, w.filtering, w.preserved, wantHairpin)
				}
				wantPublic := lab.Router("a").Public()
				if nat == natlab.None {
					wantPublic = lab.Host("a", 0).Addr()
				}
				if pub, err := netip.ParseAddrPort(rep.Public); err != nil || pub.Addr() != wantPublic {
					t.Errorf("public %q, want address %v", rep.Public, wantPublic)
				}
				// IPv6 is routed: the server sees the host's own address.
				if pub6, err := netip.ParseAddrPort(rep.IPv6.Public); !rep.IPv6.Reachable || err != nil || pub6.Addr() != lab.Host("a", 0).Addr6() {
					t.Errorf("IPv6 %+v, want reachable from %v", rep.IPv6, lab.Host("a", 0).Addr6())
				}
				want6 := natcheck.FilteringAddressAndPortDependent // the routers' stateful IPv6 firewall
				if nat == natlab.None {
					want6 = natcheck.FilteringEndpointIndependent
				}
				if rep.IPv6.Filtering != want6 {
					t.Errorf("IPv6 filtering %v, want %v", rep.IPv6.Filtering, want6)
				}
				if !strings.Contains(rep.Summary(), w.summary) {
					t.Errorf("summary lacks %q:\n%s", w.summary, rep.Summary())
				}
			})
		}
	}
}

// TestWithoutOtherAddress: a plain STUN server allows only the mapping-only tests.
func TestWithoutOtherAddress(t *testing.T) {
	t.Parallel()
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{{Name: "a", NAT: natlab.PortRestricted, Hairpin: true, Hosts: 1}}})
	startSTUN(t, lab, false)
	rep := checkFrom(t, lab, lab.Host("a", 0), natcheck.Options{})
	if !rep.UDP || rep.RFC5780 || !rep.BehindNAT || rep.Mapping != natcheck.MappingUnknown || rep.Filtering != natcheck.FilteringUnknown {
		t.Errorf("report %+v: want UDP, behind NAT, no RFC 5780, mapping and filtering unknown", rep)
	}
	if !rep.PortPreserved || rep.Hairpin != natcheck.Yes {
		t.Errorf("port preserved %v hairpin %v: the mapping-only tests should still run", rep.PortPreserved, rep.Hairpin)
	}
	if len(rep.Notes) == 0 || !strings.Contains(strings.Join(rep.Notes, " "), "OTHER-ADDRESS") {
		t.Errorf("notes %q do not explain the missing tests", rep.Notes)
	}
}

// TestInjectedConn tests the caller's own socket and leaves it usable.
func TestInjectedConn(t *testing.T) {
	t.Parallel()
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{{Name: "a", NAT: natlab.FullCone, Hosts: 1}}})
	startSTUN(t, lab, true)
	pc, err := lab.Host("a", 0).ListenPacket(context.Background(), "udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	rep := checkFrom(t, lab, lab.Host("a", 0), natcheck.Options{Conn: pc})
	local := pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	pub, _ := netip.ParseAddrPort(rep.Public)
	if pub.Port() != local || rep.Filtering != natcheck.FilteringEndpointIndependent {
		t.Errorf("public %v for local port %d, filtering %v", pub, local, rep.Filtering)
	}
	// Still readable: the server reaches the socket through its mapping.
	s, err := lab.Server().ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(lab.Server().Addr(), 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.WriteTo([]byte("after"), net.UDPAddrFromAddrPort(pub)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "after" {
		t.Fatalf("socket after Check: %q, %v", buf[:n], err)
	}
}

// TestUDPBlocked: a network that drops UDP to the server.
func TestUDPBlocked(t *testing.T) {
	t.Parallel()
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{{Name: "a", NAT: natlab.PortRestricted, Hosts: 1}}})
	startSTUN(t, lab, true)
	lab.Router("a").BlockServerUDP(t)
	rep := checkFrom(t, lab, lab.Host("a", 0), natcheck.Options{})
	if rep.UDP || rep.Difficulty() != natcheck.Blocked || !strings.Contains(rep.Summary(), "blocks UDP") {
		t.Errorf("UDP %v difficulty %v summary %q; want blocked", rep.UDP, rep.Difficulty(), rep.Summary())
	}
}

// TestLifetimeNeedsResponsePort: rendezvous' STUN server has no
// RESPONSE-PORT (yet); the report says so instead of guessing.
func TestLifetimeNeedsResponsePort(t *testing.T) {
	t.Parallel()
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{{Name: "a", NAT: natlab.PortRestricted, Hosts: 1}}})
	startSTUN(t, lab, true)
	rep := checkFrom(t, lab, lab.Host("a", 0), natcheck.Options{Lifetime: 400 * time.Millisecond})
	if rep.Lifetime == nil {
		t.Fatal("no lifetime result")
	}
	if rep.Lifetime.Tested {
		t.Skip("the STUN server supports RESPONSE-PORT now; TestLifetime covers it")
	}
	if !strings.Contains(strings.Join(rep.Notes, " "), "RESPONSE-PORT") {
		t.Errorf("notes %q do not say why the lifetime was not tested", rep.Notes)
	}
}

// responsePortServer answers Binding requests with XOR-MAPPED-ADDRESS and
// honours RESPONSE-PORT (RFC 5780 §7.5), for the lifetime test.
func responsePortServer(t *testing.T, h *natlab.Host, addr netip.AddrPort) {
	t.Helper()
	pc, err := h.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil || req.Type != stun.BindingRequest {
				continue
			}
			ua := from.(*net.UDPAddr)
			to := &net.UDPAddr{IP: ua.IP, Port: ua.Port}
			if v, err := req.Get(stun.AttrResponsePort); err == nil && len(v) >= 2 {
				to.Port = int(v[0])<<8 | int(v[1])
			}
			resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}, stun.Fingerprint)
			if err != nil {
				continue
			}
			pc.WriteTo(resp.Raw, to)
		}
	}()
}

// TestLifetime: a router that forgets idle UDP mappings after 1 s.
func TestLifetime(t *testing.T) {
	t.Parallel()
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{{Name: "a", NAT: natlab.PortRestricted, Hosts: 1, UDPTimeout: time.Second}}})
	server := netip.AddrPortFrom(lab.Server().Addr(), 3478)
	responsePortServer(t, lab.Server().Host, server)
	rep := checkFrom(t, lab, lab.Host("a", 0), natcheck.Options{Server: server.String(), Lifetime: 4 * time.Second})
	lt := rep.Lifetime
	if lt == nil || !lt.Tested {
		t.Fatalf("lifetime %+v, notes %q", lt, rep.Notes)
	}
	// Probes at 0.5, 1, 2, 3, 4 s of idleness; conntrack forgets after 1 s
	// (the 1 s probe is on the edge and may see it either way).
	alive := lt.AliveAfter == 500*time.Millisecond || lt.AliveAfter == time.Second
	gone := lt.ExpiredBy == time.Second || lt.ExpiredBy == 2*time.Second
	if !alive || !gone || lt.ExpiredBy <= lt.AliveAfter {
		t.Errorf("lifetime alive after %v, expired by %v; want alive at 0.5s (maybe 1s) and gone by 2s", lt.AliveAfter, lt.ExpiredBy)
	}
	if !strings.Contains(rep.Summary(), "forgets an idle connection") {
		t.Errorf("summary: %s", rep.Summary())
	}
}

package punch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
)

// punchable is which ordered NAT pairs the lab proves punchable without port
// prediction: any endpoint-independent-mapping pair, and full-cone or
// address-restricted against symmetric (through peer-address learning).
func punchable(a, b natlab.NAT) bool {
	eim := func(n natlab.NAT) bool { return n != natlab.Symmetric }
	loose := func(n natlab.NAT) bool {
		return n == natlab.FullCone || n == natlab.AddressRestricted || n == natlab.None
	}
	switch {
	case eim(a) && eim(b):
		return true
	case a == natlab.Symmetric && b == natlab.Symmetric:
		return false
	case a == natlab.Symmetric:
		return loose(b)
	default:
		return loose(a)
	}
}

// labPeer is one side in the lab: an endpoint on a host, with its host and
// server-reflexive candidates.
type labPeer struct {
	e     *Endpoint
	cands []Candidate
	nat   NATType // what DiscoverNAT found
}

func newLabPeer(t *testing.T, h *natlab.Host, stunAddr netip.AddrPort) labPeer {
	t.Helper()
	return newLabPeerConfig(t, h, stunAddr, DefaultConfig())
}

func newLabPeerConfig(t *testing.T, h *natlab.Host, stunAddr netip.AddrPort, cfg Config) labPeer {
	t.Helper()
	conn, err := h.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEndpoint(conn, id, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nat, err := e.DiscoverNAT(ctx, stunAddr, "")
	if err != nil {
		t.Fatalf("%s: STUN: %v", h, err)
	}
	host := netip.AddrPortFrom(h.Addr(), e.LocalAddr().Port())
	return labPeer{e: e, cands: []Candidate{{Addr: host, Kind: Host}, {Addr: nat.Reflexive, Kind: Reflexive}}, nat: nat.Type}
}

type outcome struct {
	direct bool
	took   time.Duration
	remote netip.AddrPort
	err    error
}

// peer is what the other side learns of p from signaling.
func (p labPeer) peer(session [8]byte, start time.Time) Peer {
	return Peer{Key: p.e.PublicKey(), Session: session, Candidates: p.cands, Start: start, NAT: p.nat}
}

// punchPair connects two lab peers as signaling would (same start instant) and
// reports what a saw.
func punchPair(a, b labPeer, session [8]byte) outcome {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now().Add(30 * time.Millisecond)
	x, y := connectBoth(ctx, a.e, b.peer(session, start), b.e, a.peer(session, start))
	took := time.Since(start)
	for _, r := range []result{x, y} {
		if r.s != nil {
			defer r.s.Close()
		}
	}
	if x.err != nil || y.err != nil {
		return outcome{took: took, err: errors.Join(x.err, y.err)}
	}
	// Prove the session carries data both ways.
	st, err := x.s.OpenStream(ctx)
	if err == nil {
		_, err = st.Write([]byte("hi"))
	}
	if err == nil {
		var in *Stream
		in, err = y.s.AcceptStream(ctx)
		if err == nil {
			buf := make([]byte, 2)
			_, err = in.Read(buf)
		}
	}
	return outcome{direct: err == nil, took: took, remote: x.s.Path().Remote, err: err}
}

func TestPunchAcrossKernelNATs(t *testing.T) {
	natlab.Require(t)
	profiles := []natlab.NAT{natlab.FullCone, natlab.AddressRestricted, natlab.PortRestricted, natlab.Symmetric}
	// Two routers per profile, so same-profile pairs use distinct NATs.
	var top natlab.Topology
	for _, n := range profiles {
		for i := range 2 {
			top.Routers = append(top.Routers, natlab.Router{Name: fmt.Sprintf("%s%d", short(n), i), NAT: n, Hosts: 1})
		}
	}
	lab := natlab.New(t, top)
	stunAddrs := stunservertest.StartConfig(t,
		stunserver.Config{Primary: netip.AddrPortFrom(lab.Server().Addr(), 3478)},
		stunserver.Options{Network: lab.Server()})

	type row struct {
		a, b natlab.NAT
		o    outcome
	}
	var (
		mu   sync.Mutex
		rows []row
	)
	t.Run("pairs", func(t *testing.T) {
		for i, a := range profiles {
			for j, b := range profiles {
				t.Run(a.String()+"_x_"+b.String(), func(t *testing.T) {
					t.Parallel()
					pa := newLabPeer(t, lab.Router(short(a) + "0").Hosts()[0], stunAddrs.Primary)
					pb := newLabPeer(t, lab.Router(short(b) + "1").Hosts()[0], stunAddrs.Primary)
					o := punchPair(pa, pb, [8]byte{byte(i), byte(j), 0xAB})
					mu.Lock()
					rows = append(rows, row{a, b, o})
					mu.Unlock()
					want := punchable(a, b)
					if want && !o.direct {
						t.Errorf("%v × %v: no direct session: %v", a, b, o.err)
					}
					if !want && o.direct {
						t.Errorf("%v × %v: punched directly, which the lab says needs port prediction; the NAT lab may be wrong", a, b)
					}
					if !want && o.err != nil && !errors.Is(o.err, ErrNoPath) {
						t.Errorf("%v × %v: failed for another reason than no path: %v", a, b, o.err)
					}
				})
			}
		}
	})
	writeTable(t, rows2table(rows, func(r row) (natlab.NAT, natlab.NAT, outcome) { return r.a, r.b, r.o }))
}

func short(n natlab.NAT) string {
	return map[natlab.NAT]string{natlab.FullCone: "fc", natlab.AddressRestricted: "ar", natlab.PortRestricted: "pr", natlab.Symmetric: "sy"}[n]
}

func rows2table[R any](rows []R, get func(R) (natlab.NAT, natlab.NAT, outcome)) string {
	var b strings.Builder
	b.WriteString("| A × B | outcome | time |\n| --- | --- | --- |\n")
	rows = slices.Clone(rows)
	slices.SortFunc(rows, func(p, q R) int {
		pa, pb, _ := get(p)
		qa, qb, _ := get(q)
		return cmp.Or(cmp.Compare(pa, qa), cmp.Compare(pb, qb))
	})
	for _, r := range rows {
		x, y, o := get(r)
		res := "direct"
		if !o.direct {
			res = "no direct path"
		}
		fmt.Fprintf(&b, "| %v × %v | %s | %v |\n", x, y, res, o.took.Round(time.Millisecond))
	}
	return b.String()
}

// writeTable logs the pair table and, when PUNCH_TABLE names a file, writes it
// there (bench/ uses it to refresh docs).
func writeTable(t *testing.T, table string) {
	t.Logf("punch outcomes (in-process peers, kernel NATs):\n%s", table)
	if p := os.Getenv("PUNCH_TABLE"); p != "" {
		if err := os.WriteFile(filepath.Clean(p), []byte(table), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// Two peers behind one NAT without hairpinning reach each other over their
// host candidates: the reflexive ones would need the router to hairpin.
func TestPunchBehindSameNATWithoutHairpin(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{{Name: "home", NAT: natlab.PortRestricted, Hairpin: false, Hosts: 2}}})
	stunAddrs := stunservertest.StartConfig(t,
		stunserver.Config{Primary: netip.AddrPortFrom(lab.Server().Addr(), 3478)},
		stunserver.Options{Network: lab.Server()})
	ha, hb := lab.Host("home", 0), lab.Host("home", 1)
	pa, pb := newLabPeer(t, ha, stunAddrs.Primary), newLabPeer(t, hb, stunAddrs.Primary)
	o := punchPair(pa, pb, [8]byte{0x5A})
	if !o.direct {
		t.Fatalf("no direct session behind one NAT: %v", o.err)
	}
	if want := pb.cands[0].Addr; o.remote != want {
		t.Fatalf("path goes to %v, want b's host candidate %v", o.remote, want)
	}
}

// Two hosts with routed IPv6 behind stateful firewalls (the common home
// setup) connect directly over IPv6: simultaneous probes open both firewalls.
func TestPunchOverIPv6Firewalls(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "a", NAT: natlab.PortRestricted, Hosts: 1},
		{Name: "b", NAT: natlab.Symmetric, Hosts: 1},
	}})
	peer := func(h *natlab.Host) labPeer {
		conn, err := h.ListenPacket(context.Background(), "udp6", "[::]:0")
		if err != nil {
			t.Fatal(err)
		}
		id, _ := NewIdentity()
		e, err := NewEndpoint(conn, id, DefaultConfig(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return labPeer{e: e, cands: []Candidate{{Addr: netip.AddrPortFrom(h.Addr6(), e.LocalAddr().Port()), Kind: Host}}}
	}
	pa, pb := peer(lab.Host("a", 0)), peer(lab.Host("b", 0))
	o := punchPair(pa, pb, [8]byte{6})
	if !o.direct {
		t.Fatalf("no direct IPv6 session: %v", o.err)
	}
	if !o.remote.Addr().Is6() || o.remote != pb.cands[0].Addr {
		t.Fatalf("path %v, want b's routed IPv6 address %v", o.remote, pb.cands[0].Addr)
	}
}

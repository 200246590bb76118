package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/benchdoc"
	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
)

// labServer runs `rendezvous serve` on the lab's server host and returns its URL.
func labServer(t *testing.T, lab *natlab.Lab) string {
	t.Helper()
	return labServerRelay(t, lab, "")
}

// labServerRelay is labServer with more keys for the relay section
// (indented lines, e.g. "  tls-listen: ...\n"). The relay answers RFC 5780
// on the server's second address, so peers learn their NAT's mapping.
func labServerRelay(t testing.TB, lab *natlab.Lab, relayYAML string) string {
	t.Helper()
	srv := lab.Server()
	return labServe(t, lab, fmt.Sprintf("public-host: %s\nsignaling:\n  open: true\nrelay:\n  relay-address: %s\n  alternate-address: %s:3479\n%s", srv.Addr(), srv.Addr(), srv.AltAddr(), relayYAML))
}

// labServerOneAddress is a server with one address, as most VPSs have: no
// RFC 5780, so peers test their NAT's mapping through their TURN allocation.
func labServerOneAddress(t testing.TB, lab *natlab.Lab) string {
	t.Helper()
	srv := lab.Server()
	return labServe(t, lab, fmt.Sprintf("public-host: %s\nsignaling:\n  open: true\nrelay:\n  relay-address: %s\n", srv.Addr(), srv.Addr()))
}

// labServe runs `rendezvous serve` with config cfg on the lab's server host.
func labServe(t testing.TB, lab *natlab.Lab, cfg string) string {
	t.Helper()
	srv := lab.Server()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "rendezvous.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := srv.Command(context.Background(), binary, "serve", "--config", cfgPath, "--state-dir", filepath.Join(dir, "state"),
		"--http-listen", srv.Addr().String()+":8080", "--relay-listen", srv.Addr().String()+":3478", "--log-format", "json")
	p := watch(t, cmd)
	t.Cleanup(func() { killGroup(cmd) })
	p.nthLine(t, "msg=rendezvous ready", 1, func(l map[string]any) bool { return l["msg"] == "rendezvous ready" }, 20*time.Second)
	return "http://" + srv.Addr().String() + ":8080"
}

// killGroup ends a process started through `ip netns exec` and its children.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = syscallKill(-cmd.Process.Pid)
		_ = cmd.Process.Kill()
	}
}

// labConnect starts `rendezvous connect --json` on a lab host.
func labConnect(t *testing.T, h *natlab.Host, stdin []byte, args ...string) (*proc, *bytes.Buffer) {
	t.Helper()
	return labConnectFrom(t, h, bytes.NewReader(stdin), args...)
}

// labConnectFrom is labConnect reading stdin from r.
func labConnectFrom(t *testing.T, h *natlab.Host, r io.Reader, args ...string) (*proc, *bytes.Buffer) {
	t.Helper()
	cmd := h.Command(context.Background(), binary, append([]string{"connect", "--json", "--timeout", "40s", "--name", h.String()}, args...)...)
	cmd.Stdin = r
	var out lockedBuffer
	cmd.Stdout = &out
	p := watch(t, cmd)
	t.Cleanup(func() { killGroup(cmd) })
	return p, &out.buf
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

type pairResult struct {
	name    string
	direct  bool
	kind    string // the path kind connect reported: direct, relay-udp, relay-tcp, relay-tls
	tookMS  float64
	remote  string
	detail  string
	stepped bool // direct by a later switch from the relay (birthday probing)
}

// isDirectPath matches a `path` event that moves the session to a direct path.
func isDirectPath(l map[string]any) bool {
	p, _ := l["path"].(map[string]any)
	return l["event"] == "path" && p != nil && p["kind"] == "direct"
}

// eventTime is an event's time stamp.
func eventTime(t testing.TB, l map[string]any) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"]))
	if err != nil {
		t.Fatalf("event time in %v: %v", l, err)
	}
	return at
}

// connectPair runs a creator on a and a joiner on b; the joiner sends a
// checksummed payload that must arrive intact. It reports the creator's view.
// A session that starts on the relay gets up to waitDirect to move to a
// direct path (birthday probing) before the payload is sent.
func connectPair(t *testing.T, server string, a, b *natlab.Host, listen string, payload []byte, waitDirect time.Duration, extra ...string) pairResult {
	t.Helper()
	pa, outA := labConnect(t, a, nil, append([]string{"--server", server, "--create", "--listen", listen}, extra...)...)
	room := pa.waitEvent(t, "room", 20*time.Second)
	stdin, feed := io.Pipe()
	pb, _ := labConnectFrom(t, b, stdin, append([]string{"--server", server, "--room", room["code"].(string), "--listen", listen}, extra...)...)
	defer feed.Close()
	res := pairResult{}
	ev := pa.waitLine(t, "connected or failed", func(l map[string]any) bool { return l["event"] == "connected" || l["event"] == "failed" }, 20*time.Second)
	if ev["event"] == "failed" {
		res.detail = fmt.Sprint(ev["error"])
		pb.cmd.Process.Kill()
		return res
	}
	path := ev["path"].(map[string]any)
	res.kind = fmt.Sprint(path["kind"])
	res.direct = res.kind == "direct"
	res.remote = fmt.Sprint(path["remote"])
	res.tookMS, _ = ev["took_ms"].(float64)
	if !res.direct && waitDirect > 0 {
		start := eventTime(t, ev).Add(-time.Duration(res.tookMS * float64(time.Millisecond)))
		if pe, err := pa.findLine(isDirectPath, waitDirect); err == nil {
			path = pe["path"].(map[string]any)
			res.kind, res.direct, res.stepped = "direct", true, true
			res.remote = fmt.Sprint(path["remote"])
			res.tookMS = float64(eventTime(t, pe).Sub(start)) / float64(time.Millisecond)
		}
	}
	go func() {
		feed.Write(payload)
		feed.Close()
	}()
	res.detail = fmt.Sprint(pa.dump())
	if err := pb.waitExit(t, 20*time.Second); err != nil {
		t.Errorf("joiner on %s: exit %v\n%s", b, err, pb.dump())
	}
	if err := pa.waitExit(t, 20*time.Second); err != nil {
		t.Errorf("creator on %s: exit %v\n%s", a, err, pa.dump())
	}
	if got := outA.Bytes(); sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Errorf("payload from %s to %s: %d bytes arrived, want %d intact", b, a, len(got), len(payload))
	}
	return res
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Acceptance (issues 6, 7 and 10): with the real binaries, 15 of the 16
// ordered pairs of NAT profiles end on a direct path: the pairs the lab proves
// punchable at once, and port-restricted × symmetric (both orders) after
// birthday probing moves the session off the relay; symmetric × symmetric
// stays relayed. The payload arrives intact either way.
func TestConnectAcrossKernelNATs(t *testing.T) {
	natlab.Require(t)
	profiles := []natlab.NAT{natlab.FullCone, natlab.AddressRestricted, natlab.PortRestricted, natlab.Symmetric}
	short := map[natlab.NAT]string{natlab.FullCone: "fc", natlab.AddressRestricted: "ar", natlab.PortRestricted: "pr", natlab.Symmetric: "sy"}
	var top natlab.Topology
	for _, n := range profiles {
		for i := range 2 {
			top.Routers = append(top.Routers, natlab.Router{Name: fmt.Sprintf("%s%d", short[n], i), NAT: n, Hosts: 1})
		}
	}
	lab := natlab.New(t, top)
	server := labServer(t, lab)
	payload := randomPayload(64 << 10)

	var (
		mu   sync.Mutex
		rows []pairResult
	)
	t.Run("pairs", func(t *testing.T) {
		for _, a := range profiles {
			for _, b := range profiles {
				name := a.String() + " × " + b.String()
				t.Run(strings.ReplaceAll(name, " × ", "_x_"), func(t *testing.T) {
					t.Parallel()
					r := connectPair(t, server, lab.Router(short[a] + "0").Hosts()[0], lab.Router(short[b] + "1").Hosts()[0], "0.0.0.0:0", payload, 22*time.Second) // probing's whole budget: a miss is a 0.04% event
					r.name = name
					mu.Lock()
					rows = append(rows, r)
					mu.Unlock()
					probed := a == natlab.Symmetric && b == natlab.PortRestricted || a == natlab.PortRestricted && b == natlab.Symmetric
					want := !(a == natlab.Symmetric && b == natlab.Symmetric)
					if want && !r.direct {
						t.Errorf("%s: no direct path: %s", name, r.detail)
					}
					if r.stepped != probed {
						t.Errorf("%s: moved to direct later = %v, want %v (only birthday probing starts on the relay): %s", name, r.stepped, probed, r.detail)
					}
					if !want && r.kind != "relay-udp" {
						t.Errorf("%s: path %q, want relay-udp (two symmetric NATs cannot punch): %s", name, r.kind, r.detail)
					}
				})
			}
		}
	})
	sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })
	var table strings.Builder
	table.WriteString("| pair (creator × joiner) | outcome | time from scheduled start |\n| --- | --- | --- |\n")
	for _, r := range rows {
		outcome := r.kind
		switch {
		case r.kind == "":
			outcome = "failed: " + r.detail
		case r.stepped:
			outcome = "direct (birthday probing; relayed until then)"
		}
		fmt.Fprintf(&table, "| %s | %s | %.0f ms |\n", r.name, outcome, r.tookMS)
	}
	t.Logf("rendezvous connect across kernel NATs:\n%s", table.String())
	direct := 0
	for _, r := range rows {
		if r.direct {
			direct++
		}
	}
	writeDocSection(t, "connectivity", fmt.Sprintf(`## Connectivity: 16 ordered pairs of kernel NATs

Command: `+"`UPDATE_BENCHMARKS=1 go test ./cmd/rendezvous -run TestConnectAcrossKernelNATs -v`"+` (as root; NAT lab)

Real binaries: `+"`rendezvous serve`"+` on the lab's server (relay with RFC 5780 on its second address),
`+"`rendezvous connect --create`"+` and `+"`--room`"+` behind two NAT routers; 64 KiB checksummed from
joiner to creator, over IPv4 (`+"`--listen 0.0.0.0:0`"+`). **%d of %d ordered pairs end on a direct path**;
symmetric × symmetric relays. Over IPv6 (the default socket is dual-stack) there is no NAT: every pair
connects directly through the routers' stateful firewalls.
%s.

%s`, direct, len(rows), benchdoc.Machine(), table.String()))
}

// writeDocSection replaces a section of docs/benchmarks.md when
// UPDATE_BENCHMARKS=1 (the figures of a lab test worth keeping).
func writeDocSection(t *testing.T, section, body string) {
	if os.Getenv("UPDATE_BENCHMARKS") != "1" {
		return
	}
	if err := benchdoc.Update(section, body); err != nil {
		t.Error(err)
	}
}

// Two peers behind one NAT without hairpinning connect over host candidates;
// two hosts with routed IPv6 behind stateful firewalls connect over IPv6.
func TestConnectSameNATAndIPv6(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "home", NAT: natlab.PortRestricted, Hairpin: false, Hosts: 2},
		{Name: "six", NAT: natlab.Symmetric, Hosts: 1},
	}})
	server := labServer(t, lab)
	payload := randomPayload(16 << 10)

	t.Run("same NAT, no hairpin", func(t *testing.T) {
		a, b := lab.Host("home", 0), lab.Host("home", 1)
		r := connectPair(t, server, a, b, "0.0.0.0:0", payload, 0)
		if !r.direct || !strings.HasPrefix(r.remote, b.Addr().String()+":") {
			t.Fatalf("want a direct path to b's LAN address %v, got direct=%v remote=%s %s", b.Addr(), r.direct, r.remote, r.detail)
		}
	})
	t.Run("IPv6 behind firewalls", func(t *testing.T) {
		a, b := lab.Host("home", 0), lab.Host("six", 0)
		r := connectPair(t, server, a, b, "[::]:0", payload, 0)
		if !r.direct || !strings.HasPrefix(r.remote, "["+b.Addr6().String()+"]:") {
			t.Fatalf("want a direct IPv6 path to %v, got direct=%v remote=%s %s", b.Addr6(), r.direct, r.remote, r.detail)
		}
	})
}

// Acceptance (issue 7, 1): when the networks drop all UDP to the server, two
// symmetric NATs still connect, relayed over TURN-over-TCP; when TCP to the
// TURN port is closed too, over TURN-over-TLS (the relay's self-signed
// certificate is trusted through --relay-ca).
func TestConnectRelayedOverTCPAndTLS(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "sa", NAT: natlab.Symmetric, Hosts: 1},
		{Name: "sb", NAT: natlab.Symmetric, Hosts: 1},
	}})
	srv := lab.Server().Addr()
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir, srv)
	server := labServerRelay(t, lab, fmt.Sprintf("  tls-listen: %s:443\n  cert-file: %s\n  key-file: %s\n", srv, certFile, keyFile))
	payload := randomPayload(64 << 10)
	a, b := lab.Host("sa", 0), lab.Host("sb", 0)
	for _, r := range []string{"sa", "sb"} {
		lab.Router(r).BlockServerUDP(t)
	}
	t.Run("TCP", func(t *testing.T) {
		r := connectPair(t, server, a, b, "0.0.0.0:0", payload, 0, "--relay-ca", certFile)
		if r.kind != "relay-tcp" {
			t.Fatalf("path %q, want relay-tcp with UDP to the server blocked\n%s", r.kind, r.detail)
		}
	})
	t.Run("TLS", func(t *testing.T) {
		for _, r := range []string{"sa", "sb"} {
			lab.Router(r).NFT(t, fmt.Sprintf("add rule inet rzlab cut ip daddr %s tcp dport 3478 drop", srv))
		}
		r := connectPair(t, server, a, b, "0.0.0.0:0", payload, 0, "--relay-ca", certFile)
		if r.kind != "relay-tls" {
			t.Fatalf("path %q, want relay-tls with only TLS to the server open\n%s", r.kind, r.detail)
		}
	})
}

// writeSelfSigned writes a self-signed certificate for ip and its key.
func writeSelfSigned(t *testing.T, dir string, ip netip.Addr) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "rendezvous lab relay"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP(ip.String())},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(cryptorand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// Acceptance (issue 7, 2): cutting the direct path mid-session moves traffic
// to the relay within 3 s, a reliable stream carrying a checksummed byte
// stream across both switches arrives complete and in order, and removing the
// cut moves the session back to direct; both switches are `path` events.
func TestConnectSurvivesDirectPathCut(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "pa", NAT: natlab.PortRestricted, Hosts: 1},
		{Name: "pb", NAT: natlab.PortRestricted, Hosts: 1},
	}})
	server := labServer(t, lab)
	ha, hb := lab.Host("pa", 0), lab.Host("pb", 0)
	payload := randomPayload(3 << 20)
	// IPv4 only: the cut below is an IPv4 rule (the lab also routes IPv6).
	pa, outA := labConnect(t, ha, nil, "--server", server, "--create", "--listen", "0.0.0.0:0")
	room := pa.waitEvent(t, "room", 20*time.Second)
	pr, pw := io.Pipe()
	pb, _ := labConnectFrom(t, hb, pr, "--server", server, "--room", room["code"].(string), "--listen", "0.0.0.0:0")
	for _, p := range []*proc{pa, pb} {
		if ev := p.waitEvent(t, "connected", 20*time.Second); ev["path"].(map[string]any)["kind"] != "direct" {
			t.Fatalf("want a direct path first, got %v", ev)
		}
	}
	third := len(payload) / 3
	write := func(b []byte) {
		t.Helper()
		if _, err := pw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	write(payload[:third])

	isPath := func(kind func(string) bool) func(map[string]any) bool {
		return func(l map[string]any) bool {
			p, _ := l["path"].(map[string]any)
			return l["event"] == "path" && p != nil && kind(fmt.Sprint(p["kind"]))
		}
	}
	relayed := isPath(func(k string) bool { return strings.HasPrefix(k, "relay") })
	direct := isPath(func(k string) bool { return k == "direct" })

	cutAt := time.Now()
	unblock := lab.Router("pa").Block(t, netip.PrefixFrom(lab.Router("pb").Public(), 32))
	write(payload[third : 2*third]) // sent into the cut: QUIC retransmits it on the relay
	var fallback []time.Duration
	for _, p := range []*proc{pa, pb} {
		ev := p.waitLine(t, "a switch to the relay", relayed, 10*time.Second)
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["time"]))
		if err != nil {
			t.Fatal(err)
		}
		took := at.Sub(cutAt)
		fallback = append(fallback, took)
		if took > 3*time.Second {
			t.Errorf("switch to the relay %v after the cut, want within 3 s: %v", took, ev)
		}
		if ev["reason"] == "" || ev["reason"] == nil {
			t.Errorf("path event without a reason: %v", ev)
		}
	}
	unblock()
	for _, p := range []*proc{pa, pb} {
		p.waitLine(t, "a switch back to direct", direct, 15*time.Second)
	}
	write(payload[2*third:])
	pw.Close()
	if err := pb.waitExit(t, 30*time.Second); err != nil {
		t.Errorf("joiner: exit %v\n%s", err, pb.dump())
	}
	if err := pa.waitExit(t, 30*time.Second); err != nil {
		t.Errorf("creator: exit %v\n%s", err, pa.dump())
	}
	if got := outA.Bytes(); sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Errorf("stream across the switches: %d bytes arrived, want %d intact and in order", len(got), len(payload))
	}
	t.Logf("fallback to relay after the cut: creator %v, joiner %v", fallback[0].Round(time.Millisecond), fallback[1].Round(time.Millisecond))
}

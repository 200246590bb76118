package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
)

// labServer runs `rendezvous serve` on the lab's server host and returns its URL.
func labServer(t *testing.T, lab *natlab.Lab) string {
	t.Helper()
	srv := lab.Server()
	dir := t.TempDir()
	cfg := fmt.Sprintf("public-host: %s\nsignaling:\n  open: true\nrelay:\n  relay-address: %s\n", srv.Addr(), srv.Addr())
	cfgPath := filepath.Join(dir, "rendezvous.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := srv.Command(context.Background(), binary, "serve", "--config", cfgPath, "--state-dir", filepath.Join(dir, "state"),
		"--http-listen", srv.Addr().String()+":8080", "--relay-listen", srv.Addr().String()+":3478", "--log-format", "json")
	p := watch(t, cmd)
	t.Cleanup(func() { killGroup(cmd) })
	p.waitLog(t, "rendezvous ready", 20*time.Second)
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
	cmd := h.Command(context.Background(), binary, append([]string{"connect", "--json", "--timeout", "30s", "--name", h.String()}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
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
	name   string
	direct bool
	kind   string // the path kind connect reported: direct, relay-udp, relay-tcp, relay-tls
	tookMS float64
	remote string
	detail string
}

// connectPair runs a creator on a and a joiner on b; the joiner sends a
// checksummed payload that must arrive intact. It reports the creator's view.
func connectPair(t *testing.T, server string, a, b *natlab.Host, listen string, payload []byte) pairResult {
	t.Helper()
	pa, outA := labConnect(t, a, nil, "--server", server, "--create", "--listen", listen)
	room := pa.waitEvent(t, "room", 20*time.Second)
	pb, _ := labConnect(t, b, payload, "--server", server, "--room", room["code"].(string), "--listen", listen)
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

// Acceptance (issues 6 and 7): every ordered pair of NAT profiles the lab
// proves punchable ends on a direct path, with the real binaries; the others
// (they would need port prediction) end on the relay, and the payload
// arrives intact either way.
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
					r := connectPair(t, server, lab.Router(short[a] + "0").Hosts()[0], lab.Router(short[b] + "1").Hosts()[0], "0.0.0.0:0", payload)
					r.name = name
					mu.Lock()
					rows = append(rows, r)
					mu.Unlock()
					want := a != natlab.Symmetric && b != natlab.Symmetric ||
						a == natlab.Symmetric && (b == natlab.FullCone || b == natlab.AddressRestricted) ||
						b == natlab.Symmetric && (a == natlab.FullCone || a == natlab.AddressRestricted)
					if want && !r.direct {
						t.Errorf("%s: no direct path: %s", name, r.detail)
					}
					if !want && r.kind != "relay-udp" {
						t.Errorf("%s: path %q, want relay-udp (the lab says this pair needs port prediction): %s", name, r.kind, r.detail)
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
		if r.kind == "" {
			outcome = "failed: " + r.detail
		}
		fmt.Fprintf(&table, "| %s | %s | %.0f ms |\n", r.name, outcome, r.tookMS)
	}
	t.Logf("rendezvous connect across kernel NATs:\n%s", table.String())
	if p := os.Getenv("CONNECT_TABLE"); p != "" {
		os.WriteFile(p, []byte(table.String()), 0o644)
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
		r := connectPair(t, server, a, b, "0.0.0.0:0", payload)
		if !r.direct || !strings.HasPrefix(r.remote, b.Addr().String()+":") {
			t.Fatalf("want a direct path to b's LAN address %v, got direct=%v remote=%s %s", b.Addr(), r.direct, r.remote, r.detail)
		}
	})
	t.Run("IPv6 behind firewalls", func(t *testing.T) {
		a, b := lab.Host("home", 0), lab.Host("six", 0)
		r := connectPair(t, server, a, b, "[::]:0", payload)
		if !r.direct || !strings.HasPrefix(r.remote, "["+b.Addr6().String()+"]:") {
			t.Fatalf("want a direct IPv6 path to %v, got direct=%v remote=%s %s", b.Addr6(), r.direct, r.remote, r.detail)
		}
	})
}

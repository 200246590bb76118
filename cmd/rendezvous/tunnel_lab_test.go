package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
)

// udpEcho runs a UDP echo server (the "game server") on h's loopback and
// returns its port and a function listing the sources it saw.
func udpEcho(t *testing.T, h *natlab.Host) (int, func() map[string]bool) {
	t.Helper()
	c, err := h.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var mu sync.Mutex
	seen := map[string]bool{}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			seen[from.String()] = true
			mu.Unlock()
			c.WriteTo(buf[:n], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).Port, func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]bool{}
		for k := range seen {
			out[k] = true
		}
		return out
	}
}

func labTunnel(tb testing.TB, h *natlab.Host, args ...string) *proc {
	tb.Helper()
	cmd := h.Command(context.Background(), binary, append([]string{"tunnel", "--json", "--timeout", "120s", "--stats-every", "500ms", "--name", h.String()}, args...)...)
	p := watch(tb, cmd)
	tb.Cleanup(func() { killGroup(cmd) })
	return p
}

// echoThrough sends datagrams from h's loopback to the tunnel's local port
// until one comes back (UDP: the first may go out before the session is up),
// and checks the echo.
func echoThrough(t *testing.T, h *natlab.Host, port int, msg string) {
	t.Helper()
	c, err := h.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		want := fmt.Sprintf("%s #%d", msg, i)
		if _, err := c.WriteTo([]byte(want), to); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			continue // lost or not up yet: send again
		}
		if got := string(buf[:n]); got != want {
			t.Fatalf("echo through the tunnel: got %q, want %q", got, want)
		}
		return
	}
	t.Fatalf("no echo through the tunnel from %s within 10s", h)
}

// Acceptance (issue 7, 3): `tunnel` carries a UDP echo between lab hosts
// behind symmetric NATs (relayed) and behind full-cone NATs (direct); two
// joiners get one game-side address each on the host.
func TestTunnelCarriesUDP(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "sa", NAT: natlab.Symmetric, Hosts: 1},
		{Name: "sb", NAT: natlab.Symmetric, Hosts: 1},
		{Name: "ca", NAT: natlab.FullCone, Hosts: 1},
		{Name: "cb", NAT: natlab.FullCone, Hosts: 2},
	}})
	server := labServer(t, lab)
	cases := []struct {
		name, host, join string
		joiners          int
		kind             string
	}{
		{"symmetric", "sa", "sb", 1, "relay-udp"},
		{"full-cone", "ca", "cb", 2, "direct"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			host := lab.Host(tc.host, 0)
			gamePort, sources := udpEcho(t, host)
			ph := labTunnel(t, host, "--server", server, "--create", "--forward", "udp:127.0.0.1:"+strconv.Itoa(gamePort), "--peer-listen", "0.0.0.0:0")
			code := ph.waitEvent(t, "room", 20*time.Second)["code"].(string)
			for i := range tc.joiners {
				jh := lab.Host(tc.join, i)
				const listenPort = 47000
				pj := labTunnel(t, jh, "--server", server, "--room", code, "--listen", "udp:127.0.0.1:"+strconv.Itoa(listenPort), "--peer-listen", "0.0.0.0:0")
				ev := pj.waitEvent(t, "connected", 20*time.Second)
				if kind := ev["path"].(map[string]any)["kind"]; kind != tc.kind {
					t.Errorf("joiner %d: path %v, want %s", i, kind, tc.kind)
				}
				echoThrough(t, jh, listenPort, fmt.Sprintf("hello from %s", jh))
				st := pj.waitLine(t, "stats with traffic", func(l map[string]any) bool {
					up, _ := l["up_bps"].(float64)
					return l["event"] == "stats" && up > 0
				}, 5*time.Second)
				if st["path"] == nil || st["rtt_ms"] == nil {
					t.Errorf("stats line without path or RTT: %v", st)
				}
			}
			if got := sources(); len(got) != tc.joiners {
				t.Errorf("game server saw %d source addresses %v, want one per joiner (%d)", len(got), got, tc.joiners)
			}
		})
	}
}

// A joiner is not left unconnected: when its connect to the host fails (here
// the direct path is blocked and relaying is off), it asks again until a
// session is up, and the game's packets flow once the path opens.
func TestTunnelJoinerRetriesTheHost(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{Routers: []natlab.Router{
		{Name: "ha", NAT: natlab.FullCone, Hosts: 1},
		{Name: "hb", NAT: natlab.FullCone, Hosts: 1},
	}})
	server := labServer(t, lab)
	host, join := lab.Host("ha", 0), lab.Host("hb", 0)
	gamePort, _ := udpEcho(t, host)
	unblock := lab.Router("ha").Block(t, netip.PrefixFrom(lab.Router("hb").Public(), 32))
	ph := labTunnel(t, host, "--server", server, "--create", "--no-relay", "--forward", "udp:127.0.0.1:"+strconv.Itoa(gamePort), "--peer-listen", "0.0.0.0:0")
	code := ph.waitEvent(t, "room", 20*time.Second)["code"].(string)
	const listenPort = 47000
	pj := labTunnel(t, join, "--server", server, "--room", code, "--no-relay", "--listen", "udp:127.0.0.1:"+strconv.Itoa(listenPort), "--peer-listen", "0.0.0.0:0")
	pj.waitEvent(t, "failed", 20*time.Second)
	unblock()
	ev := pj.waitEvent(t, "connected", 20*time.Second)
	if kind := ev["path"].(map[string]any)["kind"]; kind != "direct" {
		t.Fatalf("after the retry: path %v, want direct", kind)
	}
	echoThrough(t, join, listenPort, "after a retry")
}

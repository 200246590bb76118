package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/benchdoc"
	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
)

// echoStats is what one measurement over an echo path found.
type echoStats struct {
	p50, p99, min time.Duration
	lost          int
	bytesPerSec   float64
}

// measureEcho sends n sequential probes to the echo at `to` from h (RTT), then
// floods 1100-byte datagrams for d and counts the echoed bytes (goodput of the
// round trip).
func measureEcho(tb testing.TB, h *natlab.Host, to netip.AddrPort, n int, d time.Duration) echoStats {
	tb.Helper()
	c, err := h.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	dst := net.UDPAddrFromAddrPort(to)
	buf := make([]byte, 2048)
	var rtts []time.Duration
	var st echoStats
	for i := range n {
		msg := []byte("rtt " + strconv.Itoa(i))
		start := time.Now()
		c.WriteTo(msg, dst)
		c.SetReadDeadline(start.Add(time.Second))
		for {
			m, _, err := c.ReadFrom(buf)
			if err != nil {
				st.lost++
				break
			}
			if string(buf[:m]) == string(msg) {
				rtts = append(rtts, time.Since(start))
				break
			}
		}
	}
	if len(rtts) == 0 {
		tb.Fatalf("no echo from %v", to)
	}
	slices.Sort(rtts)
	st.min, st.p50, st.p99 = rtts[0], rtts[len(rtts)/2], rtts[len(rtts)*99/100]

	var got atomic.Int64
	done := make(chan struct{})
	c.SetReadDeadline(time.Time{})
	go func() {
		defer close(done)
		rb := make([]byte, 2048)
		for {
			m, _, err := c.ReadFrom(rb)
			if err != nil {
				return
			}
			got.Add(int64(m))
		}
	}()
	payload := make([]byte, 1100)
	start := time.Now()
	for time.Since(start) < d {
		c.WriteTo(payload, dst)
	}
	// Count echoes still in flight for one more p99 RTT, then stop reading.
	c.SetReadDeadline(time.Now().Add(st.p99 + 50*time.Millisecond))
	<-done
	st.bytesPerSec = float64(got.Load()) / d.Seconds()
	return st
}

// nthLine waits for the n-th (1-based) line matching.
func (p *proc) nthLine(tb testing.TB, what string, n int, match func(map[string]any) bool, timeout time.Duration) map[string]any {
	tb.Helper()
	count := 0
	deadline := time.After(timeout)
	seen := 0
	for {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if match(p.lines[seen]) {
				count++
				if count == n {
					found := p.lines[seen]
					p.mu.Unlock()
					return found
				}
			}
		}
		p.mu.Unlock()
		select {
		case <-p.added:
		case err := <-p.exit:
			p.exit <- err
			p.mu.Lock()
			more := seen < len(p.lines)
			p.mu.Unlock()
			if !more {
				tb.Fatalf("process exited (%v) before %s #%d; output:\n%s", err, what, n, p.dump())
			}
		case <-deadline:
			tb.Fatalf("no %s #%d within %v; output:\n%s", what, n, timeout, p.dump())
		}
	}
}

// BenchmarkPathLadder measures, with the real binaries in the NAT lab, the
// time from cutting a direct path to the switch onto the relay, and the
// round trip and goodput of a UDP echo through `tunnel` on a direct and on a
// relayed path against raw UDP between the same two hosts.
//
//	go test ./cmd/rendezvous -run '^$' -bench PathLadder -benchtime 1x
func BenchmarkPathLadder(b *testing.B) {
	natlab.Require(b)
	lab := natlab.New(b, natlab.Topology{Routers: []natlab.Router{
		{Name: "a", NAT: natlab.None, Hosts: 1},
		{Name: "b", NAT: natlab.None, Hosts: 1},
	}})
	server := labServerRelay(b, lab, "")
	ha, hb := lab.Host("a", 0), lab.Host("b", 0)
	const probes, flood = 300, 2 * time.Second
	cuts := 4

	// Raw UDP: an echo on a's public address, straight from b.
	rawEcho, err := ha.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		b.Fatal(err)
	}
	defer rawEcho.Close()
	go echoLoop(rawEcho)
	rawPort := rawEcho.LocalAddr().(*net.UDPAddr).Port
	gameEcho, err := ha.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer gameEcho.Close()
	go echoLoop(gameEcho)
	gamePort := gameEcho.LocalAddr().(*net.UDPAddr).Port

	b.ResetTimer()
	raw := measureEcho(b, hb, netip.AddrPortFrom(ha.Addr(), uint16(rawPort)), probes, flood)

	startPair := func(listenPort int) (host, joiner *proc) {
		host = labTunnel(b, ha, "--server", server, "--create", "--forward", "udp:127.0.0.1:"+strconv.Itoa(gamePort), "--peer-listen", "0.0.0.0:0", "--stats-every", "0")
		code := host.nthLine(b, "room", 1, func(l map[string]any) bool { return l["event"] == "room" }, 20*time.Second)["code"].(string)
		joiner = labTunnel(b, hb, "--server", server, "--room", code, "--listen", "udp:127.0.0.1:"+strconv.Itoa(listenPort), "--peer-listen", "0.0.0.0:0", "--stats-every", "0")
		return host, joiner
	}
	kindIs := func(event string, pred func(string) bool) func(map[string]any) bool {
		return func(l map[string]any) bool {
			p, _ := l["path"].(map[string]any)
			return l["event"] == event && p != nil && pred(fmt.Sprint(p["kind"]))
		}
	}
	isDirect := func(k string) bool { return k == "direct" }
	isRelay := func(k string) bool { return k == "relay-udp" }

	// Direct tunnel, then cuts of its direct path.
	host, joiner := startPair(47001)
	joiner.nthLine(b, "direct connect", 1, kindIs("connected", isDirect), 20*time.Second)
	direct := measureEcho(b, hb, netip.MustParseAddrPort("127.0.0.1:47001"), probes, flood)
	var fallback []time.Duration
	for i := 1; i <= cuts; i++ {
		cutAt := time.Now()
		b.Logf("cut %d at %v", i, cutAt.UTC().Format(time.RFC3339Nano))
		unblock := lab.Router("a").Block(b, netip.PrefixFrom(hb.Addr(), 32))
		ev := joiner.nthLine(b, "switch to the relay", i, kindIs("path", isRelay), 10*time.Second)
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["time"]))
		if err != nil {
			b.Fatal(err)
		}
		fallback = append(fallback, at.Sub(cutAt))
		unblock()
		joiner.nthLine(b, "switch back to direct", i, kindIs("path", isDirect), 40*time.Second)
	}
	joiner.mu.Lock()
	for _, l := range joiner.lines {
		if l["event"] == "path" {
			b.Logf("joiner path event: %v %v (%v)", l["time"], l["path"].(map[string]any)["kind"], l["reason"])
		}
	}
	joiner.mu.Unlock()
	killGroup(host.cmd)
	killGroup(joiner.cmd)

	// Relayed tunnel: the direct path is blocked from the start.
	unblock := lab.Router("a").Block(b, netip.PrefixFrom(hb.Addr(), 32))
	_, joiner = startPair(47002)
	joiner.nthLine(b, "relayed connect", 1, kindIs("connected", isRelay), 20*time.Second)
	relayed := measureEcho(b, hb, netip.MustParseAddrPort("127.0.0.1:47002"), probes, flood)
	unblock()
	b.StopTimer()

	slices.Sort(fallback)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	mbps := func(x float64) string { return fmt.Sprintf("%.1f Mbit/s", x*8/1e6) }
	row := func(name string, s echoStats) string {
		return fmt.Sprintf("| %s | %s | %s | %s | %s (+%s) | %s (%.2f×) | %d |\n", name, ms(s.min), ms(s.p50), ms(s.p99),
			ms(s.p50), ms(s.p50-raw.p50), mbps(s.bytesPerSec), s.bytesPerSec/raw.bytesPerSec, s.lost)
	}
	b.ReportMetric(float64(fallback[len(fallback)/2].Milliseconds()), "fallback-p50-ms")
	b.ReportMetric(float64(direct.p50-raw.p50)/1e3, "direct-added-us")
	b.ReportMetric(float64(relayed.p50-raw.p50)/1e3, "relay-added-us")
	var fb []string
	for _, f := range fallback {
		fb = append(fb, ms(f))
	}
	body := fmt.Sprintf(`## Path ladder: fallback to the relay, tunnel latency and throughput

Command: `+"`go test ./cmd/rendezvous -run '^$' -bench PathLadder -benchtime 1x`"+` (as root; NAT lab, real binaries)

Two lab hosts with public addresses (no NAT), `+"`rendezvous serve`"+` on the lab's server (signaling + TURN). %s.
No delay is added (this kernel has no netem), so the figures are the software's own cost on a fast path.

**Fallback.** A `+"`tunnel`"+` session on its direct path; an nft rule on host a's router then drops everything
to and from host b (the relay stays reachable). Time from adding the rule to the joiner's `+"`path`"+` event onto
relay-udp (threshold: newest echo older than 1.5 s), %d cuts, each followed by removing the rule and waiting
for the step back up to direct (2 s of healthy pings, doubled by each flap: a cut within 30 s of a step up):

| fallback p50 | min | max | all | goal |
| --- | --- | --- | --- | --- |
| %s | %s | %s | %s | ≤ 3 s |

**Tunnel.** A UDP echo (the "game server") on host a's loopback; on host b, %d sequential probes for the round trip, then
1100-byte datagrams flooded for %v, counting echoed bytes (round-trip goodput). Raw UDP is the same echo on
a's public address, straight from b. Added latency is p50 minus raw UDP's p50.

| path | min RTT | p50 | p99 | p50 (added) | goodput (× raw) | lost probes |
| --- | --- | --- | --- | --- | --- | --- |
%s%s%s`, benchdoc.Machine(), cuts,
		ms(fallback[len(fallback)/2]), ms(fallback[0]), ms(fallback[len(fallback)-1]), fmt.Sprint(fb), probes, flood,
		row("raw UDP", raw), row("tunnel, direct", direct), row("tunnel, relayed (TURN/UDP)", relayed))
	if err := benchdoc.Update("path-ladder", body); err != nil {
		b.Error(err)
	}
	b.Logf("\n%s", body)
}

func echoLoop(c net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		c.WriteTo(buf[:n], from)
	}
}

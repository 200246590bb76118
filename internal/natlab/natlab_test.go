package natlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recvWithin reads one datagram or reports false after d (a window for a
// packet that must not arrive; used only after a positive marker).
func recvWithin(t *testing.T, pc net.PacketConn, d time.Duration) (string, netip.AddrPort, bool) {
	t.Helper()
	buf := make([]byte, 1500)
	pc.SetReadDeadline(time.Now().Add(d))
	defer pc.SetReadDeadline(time.Time{})
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", netip.AddrPort{}, false
		}
		t.Fatalf("read: %v", err)
	}
	return string(buf[:n]), from.(*net.UDPAddr).AddrPort(), true
}

func mustRecv(t *testing.T, pc net.PacketConn) (string, netip.AddrPort) {
	t.Helper()
	msg, from, ok := recvWithin(t, pc, 5*time.Second)
	if !ok {
		t.Fatalf("%v: nothing received within 5s", pc.LocalAddr())
	}
	return msg, from
}

func listen(t *testing.T, h *Host, network, addr string) net.PacketConn {
	t.Helper()
	pc, err := h.ListenPacket(context.Background(), network, addr)
	if err != nil {
		t.Fatalf("%v: listen %s %s: %v", h, network, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func sendTo(t *testing.T, pc net.PacketConn, msg string, to netip.AddrPort) {
	t.Helper()
	if _, err := pc.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(to)); err != nil {
		t.Fatalf("send to %v: %v", to, err)
	}
}

func TestTopologyValidation(t *testing.T) {
	for _, top := range []Topology{
		{Routers: []Router{{Name: "A"}}},
		{Routers: []Router{{Name: "toolongname"}}},
		{Routers: []Router{{Name: "a"}}, LANs: []LAN{{Name: "a"}}},
		{Routers: []Router{{Name: "a", Hosts: 14}}},
		{Routers: []Router{{Name: "a", UDPTimeout: 1500 * time.Millisecond}}},
		{MultiHomed: []MultiHomed{{Name: "m", LANs: []string{"x"}}}},
	} {
		if err := top.validate(); err == nil {
			t.Errorf("validate(%+v) = nil, want an error", top)
		}
	}
	ok := Topology{Routers: []Router{{Name: "a", Hosts: 2}}, LANs: []LAN{{Name: "p", Hosts: 3}},
		MultiHomed: []MultiHomed{{Name: "m", LANs: []string{"a", "p"}}}}
	if err := ok.validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
}

func TestOwnerPID(t *testing.T) {
	name := newLabPrefix() + "srv"
	pid, ok := ownerPID(name)
	if !ok || pid != os.Getpid() {
		t.Errorf("ownerPID(%q) = %d, %v; want %d", name, pid, ok, os.Getpid())
	}
	for _, bad := range []string{"rzl", "rzlzzzzzzzzzzzzz-1-sw", "other-1-2", "rzl-1-sw"} {
		if _, ok := ownerPID(bad); ok {
			t.Errorf("ownerPID(%q) parsed", bad)
		}
	}
}

// fakeTB records how Require ends a test.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Skipf(format string, args ...any)  { f.skipped = fmt.Sprintf(format, args...) }
func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = fmt.Sprintf(format, args...) }

func TestRequireSkipsOrFailsUnderCI(t *testing.T) {
	// Force the "cannot run" outcome.
	requireOnce.Do(func() {})
	saved := requireReason
	requireReason = "needs root (test)"
	defer func() { requireReason = saved }()

	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	Require(f)
	if f.skipped == "" || f.failed != "" || !strings.Contains(f.skipped, "needs root (test)") {
		t.Errorf("without CI: skipped %q failed %q; want a skip naming the reason", f.skipped, f.failed)
	}
	t.Setenv("CI", "true")
	f = &fakeTB{TB: t}
	Require(f)
	if f.failed == "" || f.skipped != "" || !strings.Contains(f.failed, "CI=true") {
		t.Errorf("with CI=true: skipped %q failed %q; want a failure", f.skipped, f.failed)
	}
}

// TestConcurrentLabs builds two identical labs at once: the same addresses
// exist in both, and traffic in one never reaches the other.
func TestConcurrentLabs(t *testing.T) {
	top := Topology{Routers: []Router{{Name: "a", NAT: PortRestricted, Hosts: 1}}}
	labs := make(chan *Lab, 2)
	t.Run("group", func(t *testing.T) {
		for i := range 2 {
			t.Run(fmt.Sprint("lab", i), func(t *testing.T) {
				t.Parallel()
				lab := New(t, top)
				labs <- lab
				srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
				c := listen(t, lab.Host("a", 0), "udp4", ":0")
				// The other lab's server listens on the same address; each must
				// see exactly its own lab's client, tagged with the lab prefix.
				sendTo(t, c, lab.Prefix(), netip.MustParseAddrPort("203.0.113.1:5000"))
				msg, from := mustRecv(t, srv)
				if msg != lab.Prefix() {
					t.Errorf("server of %s got %q, from another lab", lab.Prefix(), msg)
				}
				if from.Addr() != lab.Router("a").Public() {
					t.Errorf("source %v, want the router's public address %v", from, lab.Router("a").Public())
				}
				// A second packet from the same lab, then nothing else.
				sendTo(t, c, lab.Prefix(), netip.MustParseAddrPort("203.0.113.1:5000"))
				if msg, _ := mustRecv(t, srv); msg != lab.Prefix() {
					t.Errorf("server of %s got %q", lab.Prefix(), msg)
				}
			})
		}
	})
	close(labs)
	var prefixes []string
	for l := range labs {
		prefixes = append(prefixes, l.Prefix())
	}
	if len(prefixes) == 2 && prefixes[0] == prefixes[1] {
		t.Errorf("two labs share prefix %q", prefixes[0])
	}
	// Both cleaned up.
	names, _ := listNetns()
	for _, n := range names {
		for _, p := range prefixes {
			if strings.HasPrefix(n, p) {
				t.Errorf("namespace %s left after its test", n)
			}
		}
	}
}

const childEnv = "RZL_NATLAB_STALE_CHILD"

// TestStaleChild is the child half of TestStaleLabCleanup: it builds a lab,
// starts a process inside it that outlives it, reports, and waits to be killed.
func TestStaleChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("helper for TestStaleLabCleanup")
	}
	lab := New(t, Topology{Routers: []Router{{Name: "a", Hosts: 1}}})
	// Deliberately without Pdeathsig and in its own session: it must survive
	// its owner, like a leaked server would.
	cmd := exec.Command("ip", "netns", "exec", lab.Server().Netns(), "sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("READY %s %d\n", lab.Prefix(), cmd.Process.Pid)
	select {} // killed by the parent
}

func TestStaleLabCleanup(t *testing.T) {
	Require(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(exe, "-test.run=^TestStaleChild$", "-test.v")
	child.Env = append(os.Environ(), childEnv+"=1")
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	var prefix string
	var sleepPID int
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, out)
	}()
	deadline := time.After(30 * time.Second)
	for prefix == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				child.Wait()
				t.Fatal("child exited before building its lab")
			}
			if f := strings.Fields(line); len(f) == 3 && f[0] == "READY" {
				prefix = f[1]
				sleepPID, _ = strconv.Atoi(f[2])
			} else {
				t.Logf("child: %s", line)
			}
		case <-deadline:
			child.Process.Kill()
			child.Wait()
			t.Fatal("child did not report its lab within 30s")
		}
	}
	t.Cleanup(func() { syscall.Kill(sleepPID, syscall.SIGKILL) })
	// SIGKILL: no t.Cleanup runs in the child.
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()

	left := labNamespaces(t, prefix)
	if len(left) == 0 {
		t.Fatalf("child's lab %s vanished by itself; the test proves nothing", prefix)
	}
	if !alive(sleepPID) {
		t.Fatalf("process %d inside the child's lab died with the child; the test proves nothing", sleepPID)
	}
	// The next lab removes it.
	New(t, Topology{SkipSelfCheck: true})
	if left := labNamespaces(t, prefix); len(left) > 0 {
		t.Errorf("stale namespaces left after New: %v", left)
	}
	waitDead(t, sleepPID)
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running", pid)
		}
		time.Sleep(10 * time.Millisecond) // polling process state: there is no event for a non-child's death
	}
}

func labNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	names, err := listNetns()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// TestLANs covers what the LAN-beacon tests need: three hosts on one plain
// LAN (IPv4 broadcast and IPv6 link-local multicast reach all), a host on
// another LAN behind a router, and a host with two LAN interfaces.
func TestLANs(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{
		Routers:    []Router{{Name: "a", NAT: PortRestricted, Hosts: 1}},
		LANs:       []LAN{{Name: "p", Hosts: 3}},
		MultiHomed: []MultiHomed{{Name: "m", LANs: []string{"a", "p"}}},
	})
	const port = 4242
	var pcs []net.PacketConn
	for i := range 3 {
		pcs = append(pcs, listen(t, lab.Host("p", i), "udp6", fmt.Sprintf("[::]:%d", port)))
	}
	sender := listen(t, lab.Host("p", 0), "udp6", ":0")
	if _, err := sender.WriteTo([]byte("hello-ll"), &net.UDPAddr{IP: net.ParseIP("ff02::1"), Port: port, Zone: "rz-lan0"}); err != nil {
		t.Fatal(err)
	}
	for i, pc := range pcs {
		msg, from := mustRecv(t, pc)
		if msg != "hello-ll" || !from.Addr().IsLinkLocalUnicast() {
			t.Errorf("p/%d got %q from %v, want hello-ll from a link-local address", i, msg, from)
		}
	}
	// IPv4 broadcast on the plain LAN (inside the lab's namespaces).
	var pcs4 []net.PacketConn
	for i := 1; i < 3; i++ {
		pcs4 = append(pcs4, listen(t, lab.Host("p", i), "udp4", fmt.Sprintf(":%d", port)))
	}
	b := listen(t, lab.Host("p", 0), "udp4", ":0")
	if err := b.(*net.UDPConn).SetWriteBuffer(1 << 16); err != nil {
		t.Fatal(err)
	}
	rc, _ := b.(*net.UDPConn).SyscallConn()
	rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1) })
	bcast := netip.AddrPortFrom(lastAddr(lab.Host("p", 0).Ifaces()[0].Addr), port)
	sendTo(t, b, "hello-bcast", bcast)
	for i, pc := range pcs4 {
		if msg, _ := mustRecv(t, pc); msg != "hello-bcast" {
			t.Errorf("p/%d got %q", i+1, msg)
		}
	}

	// The multi-homed host is on both LANs and reaches the server through a.
	m := lab.MultiHomed("m")
	if ifs := m.Ifaces(); len(ifs) != 2 || ifs[0].LAN != "a" || ifs[1].LAN != "p" {
		t.Fatalf("multi-homed interfaces %+v", ifs)
	}
	onA := listen(t, lab.Host("a", 0), "udp4", fmt.Sprintf(":%d", port))
	mc := listen(t, m, "udp4", ":0")
	sendTo(t, mc, "to-a", netip.AddrPortFrom(lab.Host("a", 0).Addr(), port))
	if msg, from := mustRecv(t, onA); msg != "to-a" || from.Addr() != m.Ifaces()[0].Addr.Addr() {
		t.Errorf("a/0 got %q from %v", msg, from)
	}
	sendTo(t, mc, "to-p", netip.AddrPortFrom(lab.Host("p", 1).Addr(), port))
	if msg, from := mustRecv(t, pcs4[0]); msg != "to-p" || from.Addr() != m.Ifaces()[1].Addr.Addr() {
		t.Errorf("p/1 got %q from %v", msg, from)
	}
	srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
	sendTo(t, mc, "to-server", netip.MustParseAddrPort("203.0.113.1:5000"))
	if msg, from := mustRecv(t, srv); msg != "to-server" || from.Addr() != lab.Router("a").Public() {
		t.Errorf("server got %q from %v, want from router a's public address", msg, from)
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// TestBlock cuts UDP to the server on a router mid-session and restores it;
// TCP (the marker) keeps working.
func TestBlock(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: PortRestricted, Hosts: 1}}})
	srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
	ln, err := lab.Server().Listen(context.Background(), "tcp4", "203.0.113.1:5001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := listen(t, lab.Host("a", 0), "udp4", ":0")
	dst := netip.MustParseAddrPort("203.0.113.1:5000")
	sendTo(t, c, "before", dst)
	if msg, _ := mustRecv(t, srv); msg != "before" {
		t.Fatalf("got %q", msg)
	}
	unblock := lab.Router("a").BlockServerUDP(t)
	sendTo(t, c, "blocked", dst)
	// Marker: a TCP connection over the same path after the UDP packet.
	conn, err := lab.Host("a", 0).Dial(context.Background(), "tcp4", "203.0.113.1:5001")
	if err != nil {
		t.Fatalf("TCP while UDP is blocked: %v", err)
	}
	conn.Close()
	if a, err := ln.Accept(); err != nil {
		t.Fatal(err)
	} else {
		a.Close()
	}
	if msg, _, ok := recvWithin(t, srv, 100*time.Millisecond); ok {
		t.Fatalf("server got %q while UDP was blocked", msg)
	}
	unblock()
	sendTo(t, c, "after", dst)
	if msg, _ := mustRecv(t, srv); msg != "after" {
		t.Fatalf("got %q after unblock", msg)
	}

	// Block cuts everything to a prefix, established flows too.
	unblockAll := lab.Router("a").Block(t, netip.MustParsePrefix("203.0.113.0/24"))
	if _, err := lab.Host("a", 0).Dial(ctxTimeout(t, 300*time.Millisecond), "tcp4", "203.0.113.1:5001"); err == nil {
		t.Error("TCP connected through a blocked prefix")
	}
	unblockAll()
	conn, err = lab.Host("a", 0).Dial(ctxTimeout(t, 5*time.Second), "tcp4", "203.0.113.1:5001")
	if err != nil {
		t.Fatalf("TCP after unblock: %v", err)
	}
	conn.Close()
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestCommand runs real binaries inside lab hosts and checks Start's cleanup
// kills them.
func TestCommand(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: Symmetric, Hosts: 1}}, SkipSelfCheck: true})
	h := lab.Host("a", 0)
	out, err := h.Command(context.Background(), "ip", "-4", "-o", "addr", "show", "dev", "rz-lan0").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte(h.Addr().String()+"/")) {
		t.Errorf("ip addr inside %v: %s; want %v", h, out, h.Addr())
	}
	var pid int
	t.Run("start", func(t *testing.T) {
		cmd := h.Start(t, nil, "sleep", "600")
		pid = cmd.Process.Pid
		if !alive(pid) {
			t.Fatal("sleep not running")
		}
	})
	if alive(pid) {
		t.Errorf("process %d still alive after its test's cleanup", pid)
	}
	// ctx's end kills the process group, children included.
	ctx, cancel := context.WithCancel(context.Background())
	cmd := h.Command(ctx, "sh", "-c", "sleep 600 & echo $!; wait")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	grandchild, _ := strconv.Atoi(strings.TrimSpace(line))
	cancel()
	cmd.Wait()
	waitDead(t, grandchild)
}

// TestUDPTimeout: a router's mapping expires after its configured timeout.
func TestUDPTimeout(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: FullCone, Hosts: 1, UDPTimeout: time.Second}}})
	r := lab.Router("a")
	for _, key := range []string{"nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"} {
		var v []byte
		if err := r.Do(func() (err error) { v, err = os.ReadFile("/proc/sys/net/netfilter/" + key); return err }); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(v)) != "1" {
			t.Errorf("%s in router = %q, want 1", key, v)
		}
	}
	srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
	c := listen(t, lab.Host("a", 0), "udp4", ":0")
	sendTo(t, c, "map", netip.MustParseAddrPort("203.0.113.1:5000"))
	_, mapped := mustRecv(t, srv)
	// Full cone: anyone reaches the mapping while it lives.
	other := listen(t, lab.Server().Host, "udp4", "203.0.113.2:5000")
	sendTo(t, other, "alive", mapped)
	if msg, _ := mustRecv(t, c); msg != "alive" {
		t.Fatalf("got %q", msg)
	}
	// Wait until the router forgot the mapping (conntrack and cone map).
	deadline := time.Now().Add(10 * time.Second)
	for {
		var ct []byte
		err := r.Do(func() (err error) { ct, err = os.ReadFile("/proc/thread-self/net/nf_conntrack"); return err })
		if err != nil {
			t.Skipf("conntrack table not readable: %v", err)
		}
		m, _ := exec.Command("ip", "netns", "exec", r.Netns(), "nft", "list", "map", "inet", "rzlab", "mappings").Output()
		if !bytes.Contains(ct, []byte("dport="+strconv.Itoa(int(mapped.Port())))) && !bytes.Contains(m, []byte(" "+strconv.Itoa(int(mapped.Port()))+" ")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mapping still present 10s after a 1s timeout:\n%s\n%s", ct, m)
		}
		time.Sleep(100 * time.Millisecond) // polling kernel state that has no event
	}
	// Expired: a new sender no longer reaches the LAN socket. Marker: the
	// LAN socket then refreshes its mapping and hears the server.
	sendTo(t, other, "expired", mapped)
	sendTo(t, c, "again", netip.MustParseAddrPort("203.0.113.1:5000"))
	_, again := mustRecv(t, srv)
	sendTo(t, srv, "marker", again)
	msg, _ := mustRecv(t, c)
	if msg == "expired" {
		t.Fatal("packet to an expired mapping was delivered")
	}
	if msg != "marker" {
		t.Fatalf("got %q", msg)
	}
}

// TestNetem: delay on a router's WAN shows in the round trip (netem never
// delivers early, so the lower bound is safe under load).
func TestNetem(t *testing.T) {
	t.Parallel()
	Require(t)
	if !HasNetem() {
		// No netem in this kernel (it cannot be added at run time). Benchmarks
		// fall back to delaying in their own sockets on HasNetem's word, so it
		// must agree with tc and say why.
		lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: PortRestricted, Hosts: 1}}})
		out, err := exec.Command("tc", "-n", lab.Router("a").Netns(), "qdisc", "add", "dev", "rz-wan", "root", "netem", "delay", "1ms").CombinedOutput()
		if err == nil {
			t.Fatalf("HasNetem says no, but tc added a netem qdisc: %s", out)
		}
		if !strings.Contains(netemReason, "CONFIG_NET_SCH_NETEM") {
			t.Fatalf("the reason %q does not name the missing kernel option", netemReason)
		}
		t.Logf("no netem here (%s): checked that detection agrees with tc", netemReason)
		return
	}
	lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: PortRestricted, Hosts: 1, Netem: &Netem{Delay: 60 * time.Millisecond}}}})
	out, err := exec.Command("tc", "-n", lab.Router("a").Netns(), "qdisc", "show", "dev", "rz-wan").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("netem")) || !bytes.Contains(out, []byte("delay 60ms")) {
		t.Fatalf("qdisc: %s %v", out, err)
	}
	srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
	c := listen(t, lab.Host("a", 0), "udp4", ":0")
	start := time.Now()
	sendTo(t, c, "ping", netip.MustParseAddrPort("203.0.113.1:5000"))
	_, from := mustRecv(t, srv)
	sendTo(t, srv, "pong", from)
	mustRecv(t, c)
	if rtt := time.Since(start); rtt < 60*time.Millisecond {
		t.Errorf("round trip %v with 60ms netem delay", rtt)
	}
	lab.Router("a").SetNetem(t, Netem{})
	out, _ = exec.Command("tc", "-n", lab.Router("a").Netns(), "qdisc", "show", "dev", "rz-wan").CombinedOutput()
	if bytes.Contains(out, []byte("netem")) {
		t.Errorf("netem still there after removal: %s", out)
	}
}

// TestSelfCheckDetectsMismatch breaks a router behind the lab's back and
// checks the measurement and the table name the difference.
func TestSelfCheckDetectsMismatch(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: PortRestricted, Hosts: 1}}})
	lab.Router("a").NFT(t,
		"flush chain inet rzlab postrouting",
		`add rule inet rzlab postrouting oifname "rz-wan" meta nfproto ipv4 masquerade random`)
	got, err := lab.Measure()
	if err != nil {
		t.Fatal(err)
	}
	if got["a"].Mapping != MappingAddressAndPortDependent {
		t.Errorf("mapping after switching to masquerade random: %v", got["a"].Mapping)
	}
	table, bad := lab.behaviorTable(got)
	if !bad || !strings.Contains(table, "MISMATCH") {
		t.Errorf("table does not flag the mismatch:\n%s", table)
	}
	// The self-check itself (measuring twice) fails the test with the table.
	f := &fakeTB{TB: t}
	lab.selfCheck(f)
	if !strings.Contains(f.failed, "do not behave as configured") || !strings.Contains(f.failed, "MISMATCH") {
		t.Errorf("self-check did not fail with a table: %q", f.failed)
	}
	t.Logf("self-check failure:\n%s", f.failed)
}

// TestIPv6Punch: two hosts behind firewalled routers reach each other over
// IPv6 once both have sent (the stateful firewall's hole punching).
func TestIPv6Punch(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{Routers: []Router{{Name: "a", NAT: PortRestricted, Hosts: 1}, {Name: "b", NAT: Symmetric, Hosts: 1}}})
	a := listen(t, lab.Host("a", 0), "udp6", "[::]:7000")
	b := listen(t, lab.Host("b", 0), "udp6", "[::]:7000")
	aAddr := netip.AddrPortFrom(lab.Host("a", 0).Addr6(), 7000)
	bAddr := netip.AddrPortFrom(lab.Host("b", 0).Addr6(), 7000)
	sendTo(t, a, "a1", bAddr) // opens a's firewall towards b; dropped at b's
	sendTo(t, b, "b1", aAddr) // opens b's firewall; passes a's
	if msg, _ := mustRecv(t, a); msg != "b1" {
		t.Fatalf("a got %q", msg)
	}
	sendTo(t, a, "a2", bAddr)
	if msg, _ := mustRecv(t, b); msg != "a2" {
		t.Fatalf("b got %q, want a2 (a1 must have been dropped by b's firewall)", msg)
	}
}

// TestPortRestrictedPunch is the scenario the WAN "ct state new drop" exists
// for: b's first packet reaches a's router before a has sent to b. It must
// leave no state behind, so a's later packet to b keeps a's public port and
// the punch succeeds in both directions.
func TestPortRestrictedPunch(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{Routers: []Router{
		{Name: "a", NAT: PortRestricted, Hosts: 1},
		{Name: "b", NAT: PortRestricted, Hosts: 1},
	}})
	srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
	a := listen(t, lab.Host("a", 0), "udp4", ":0")
	b := listen(t, lab.Host("b", 0), "udp4", ":0")
	stun := netip.MustParseAddrPort("203.0.113.1:5000")
	sendTo(t, a, "a", stun)
	_, aPub := mustRecv(t, srv)
	sendTo(t, b, "b", stun)
	_, bPub := mustRecv(t, srv)

	drops := lab.Router("a").WANDrops(t)
	sendTo(t, b, "early", aPub) // dropped by a's router, must leave no conntrack entry
	lab.Router("a").WaitWANDrops(t, drops)
	sendTo(t, a, "punch-a", bPub)
	sendTo(t, b, "punch-b", aPub)
	if msg, from := mustRecv(t, a); msg != "punch-b" || from != bPub {
		t.Fatalf("a got %q from %v, want punch-b from %v", msg, from, bPub)
	}
	if msg, from := mustRecv(t, b); msg != "punch-a" || from != aPub {
		t.Fatalf("b got %q from %v, want punch-a from %v (a's router remapped?)", msg, from, aPub)
	}

	// Control: without the WAN drop, the early packet leaves a conntrack
	// entry and masquerade moves a's next flow to another public port.
	lab.Router("a").NFT(t, "flush chain inet rzlab input")
	a2 := listen(t, lab.Host("a", 0), "udp4", ":0")
	sendTo(t, a2, "a2", stun)
	_, a2Pub := mustRecv(t, srv)
	sendTo(t, b, "early", a2Pub)
	conntrack := func() string {
		var ct []byte
		err := lab.Router("a").Do(func() (err error) { ct, err = os.ReadFile("/proc/thread-self/net/nf_conntrack"); return err })
		if err != nil {
			t.Fatalf("control needs the conntrack table: %v", err)
		}
		return string(ct)
	}
	early := fmt.Sprintf("src=%v dst=%v sport=%d dport=%d", bPub.Addr(), a2Pub.Addr(), bPub.Port(), a2Pub.Port())
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(conntrack(), early) {
		if time.Now().After(deadline) {
			t.Fatalf("control: the early packet left no conntrack entry:\n%s", conntrack())
		}
		time.Sleep(5 * time.Millisecond) // polling kernel state that has no event
	}
	sendTo(t, a2, "punch-a2", bPub)
	// b's router drops punch-a2 (it comes from an unexpected port); read
	// the public port a's router chose from its conntrack table.
	local := a2.LocalAddr().(*net.UDPAddr).Port
	ct := conntrack()
	var used string
	for _, line := range strings.Split(ct, "\n") {
		if strings.Contains(line, fmt.Sprintf("sport=%d dport=%d", local, bPub.Port())) {
			f := strings.Fields(line)
			for _, w := range f {
				if strings.HasPrefix(w, "dport=") {
					used = strings.TrimPrefix(w, "dport=") // the last one is the reply direction's
				}
			}
		}
	}
	if used == "" {
		t.Fatalf("control: no conntrack entry for a2 -> b:\n%s", ct)
	}
	if used == strconv.Itoa(int(a2Pub.Port())) {
		t.Errorf("control: without the WAN drop a's router still used port %s; the drop rule would be unnecessary", used)
	}
}

// TestSymmetricPunchFails: a symmetric NAT uses a new public port towards
// the peer, so the address the server saw is useless to the peer; both
// punches are dropped while markers from the server on the live paths arrive.
func TestSymmetricPunchFails(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{Routers: []Router{
		{Name: "a", NAT: Symmetric, Hosts: 1},
		{Name: "b", NAT: PortRestricted, Hosts: 1},
	}})
	srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
	a := listen(t, lab.Host("a", 0), "udp4", ":0")
	b := listen(t, lab.Host("b", 0), "udp4", ":0")
	stun := netip.MustParseAddrPort("203.0.113.1:5000")
	sendTo(t, a, "a", stun)
	_, aPub := mustRecv(t, srv)
	sendTo(t, b, "b", stun)
	_, bPub := mustRecv(t, srv)
	sendTo(t, a, "punch-a", bPub) // leaves a's router from another port: dropped at b's
	sendTo(t, b, "punch-b", aPub) // aPub is bound to the server only: dropped at a's
	sendTo(t, srv, "marker", aPub)
	sendTo(t, srv, "marker", bPub)
	if msg, _ := mustRecv(t, a); msg != "marker" {
		t.Errorf("a got %q before the marker; a symmetric NAT let a peer's punch in", msg)
	}
	if msg, _ := mustRecv(t, b); msg != "marker" {
		t.Errorf("b got %q before the marker", msg)
	}
}

// TestSameLANPrefix: two homes on the same private prefix (both
// 192.168.1.0/24) reach the server, seen from their routers' addresses; a
// connected UDP socket (DialUDP) works from inside a host.
func TestSameLANPrefix(t *testing.T) {
	t.Parallel()
	home := netip.MustParsePrefix("192.168.1.0/24")
	lab := New(t, Topology{Routers: []Router{
		{Name: "a", NAT: PortRestricted, Hosts: 1, LAN: home},
		{Name: "b", NAT: FullCone, Hosts: 1, LAN: home},
	}})
	if lab.Host("a", 0).Addr() != lab.Host("b", 0).Addr() || !home.Contains(lab.Host("a", 0).Addr()) {
		t.Fatalf("hosts %v and %v, want the same address in %v", lab.Host("a", 0).Addr(), lab.Host("b", 0).Addr(), home)
	}
	srv := listen(t, lab.Server().Host, "udp4", "203.0.113.1:5000")
	for _, r := range []string{"a", "b"} {
		c, err := lab.Host(r, 0).DialUDP(netip.MustParseAddrPort("203.0.113.1:5000"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(r)); err != nil {
			t.Fatal(err)
		}
		msg, from := mustRecv(t, srv)
		if msg != r || from.Addr() != lab.Router(r).Public() {
			t.Errorf("server got %q from %v, want %q from %v", msg, from, r, lab.Router(r).Public())
		}
		sendTo(t, srv, "reply-"+r, from)
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "reply-"+r {
			t.Errorf("%s: reply %q, %v", r, buf[:n], err)
		}
	}
}

// TestDoRestoresNamespace: after Do (even one that panics) the thread is
// back in its own namespace; inside, it is in the host's.
func TestDoRestoresNamespace(t *testing.T) {
	t.Parallel()
	lab := New(t, Topology{SkipSelfCheck: true})
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inside string
	func() {
		defer func() { recover() }()
		lab.Server().Do(func() error {
			inside, _ = os.Readlink("/proc/thread-self/ns/net")
			panic("boom")
		})
	}()
	after, _ := os.Readlink("/proc/thread-self/ns/net")
	if after != before {
		t.Errorf("thread left in namespace %s after a panicking Do (was %s)", after, before)
	}
	if inside == before || inside == "" {
		t.Errorf("inside Do the thread was in %q, the test's own namespace", inside)
	}
}

// TestManyRouters: every profile with hairpin on and off as routers of one
// lab (the shape of a punching matrix), all measured by one self-check.
func TestManyRouters(t *testing.T) {
	t.Parallel()
	var top Topology
	for _, nat := range NATs {
		for _, hairpin := range []bool{false, true} {
			top.Routers = append(top.Routers, Router{Name: fmt.Sprintf("r%d%v", len(top.Routers), map[bool]string{false: "n", true: "h"}[hairpin]), NAT: nat, Hairpin: hairpin, Hosts: 2})
		}
	}
	lab := New(t, top)
	for _, r := range lab.Routers() {
		m, ok := lab.Measured(r.Name())
		if !ok || m.Behavior != r.Expected() {
			t.Errorf("router %s (%v): measured %+v, want %+v", r.Name(), r.Spec().NAT, m.Behavior, r.Expected())
		}
	}
	t.Logf("%d routers, %d namespaces: build %v, self-check %v", len(top.Routers), len(lab.Namespaces()), lab.BuildTime, lab.SelfCheckTime)
}

package natlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// The self-check measures every router with a UDP reflector inside the server
// namespace, on the server's two IPv4 addresses x two ports (plus two IPv6
// sockets), before the lab is handed to a test.
//
// Reflector protocol (text, one datagram each, fields separated by spaces):
//
//	"<nonce> echo"          -> "<nonce> echo <observed source>" from the same socket
//	"<nonce> from <i>"      -> "<nonce> alt" from reflector socket i, then
//	                           "<nonce> mark" from the receiving socket
//	"<nonce> to <addrport>" -> "<nonce> mark" from the receiving socket to addrport
//
// A negative observation (a packet that must not arrive) needs a window: the
// reflector sends a marker after the probe packet over the same path, and the
// prober waits markGrace after the marker before concluding it was dropped.
const (
	reflectorPort1 = 40001
	reflectorPort2 = 40002
	markGrace      = 100 * time.Millisecond
	// retryGrace is the window of the second measurement the self-check takes
	// before declaring a mismatch, so that a packet delayed by a loaded
	// machine is not mistaken for a dropped one.
	retryGrace    = time.Second
	probeDeadline = 3 * time.Second
	probeResend   = 250 * time.Millisecond
)

// Measured is the measured behaviour of one router.
type Measured struct {
	Behavior
	// Observed mapped addresses towards the reflector sockets, for the table.
	Local                      netip.AddrPort
	MappedPrimary, MappedAltIP netip.AddrPort
	MappedAltBoth              netip.AddrPort
}

type reflector struct {
	socks []net.PacketConn
	addrs []netip.AddrPort
	wg    sync.WaitGroup
}

func startReflector(s *Server) (*reflector, error) {
	rf := &reflector{}
	for _, a := range []netip.Addr{s.addrs[0], s.addrs[1]} {
		for _, p := range []uint16{reflectorPort1, reflectorPort2} {
			rf.addrs = append(rf.addrs, netip.AddrPortFrom(a, p))
		}
	}
	rf.addrs = append(rf.addrs, netip.AddrPortFrom(s.addrs6[0], reflectorPort1), netip.AddrPortFrom(s.addrs6[0], reflectorPort2))
	for _, a := range rf.addrs {
		pc, err := s.ListenPacket(context.Background(), "udp", a.String())
		if err != nil {
			rf.close()
			return nil, fmt.Errorf("reflector listen %v: %w", a, err)
		}
		rf.socks = append(rf.socks, pc)
	}
	for i := range rf.socks {
		rf.wg.Go(func() { rf.serve(i) })
	}
	return rf, nil
}

// Indexes into reflector.addrs.
const (
	rfPrimary = 0 // addr 1, port 1
	rfAltPort = 1 // addr 1, port 2
	rfAltIP   = 2 // addr 2, port 1
	rfAltBoth = 3 // addr 2, port 2
	rf6       = 4
	rf6AltPrt = 5
)

func (rf *reflector) close() {
	for _, s := range rf.socks {
		s.Close()
	}
	rf.wg.Wait()
}

func (rf *reflector) serve(i int) {
	pc := rf.socks[i]
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		f := strings.Fields(string(buf[:n]))
		if len(f) < 2 {
			continue
		}
		nonce := f[0]
		switch {
		case f[1] == "echo":
			pc.WriteTo([]byte(nonce+" echo "+from.String()), from)
		case f[1] == "from" && len(f) == 3:
			var j int
			if _, err := fmt.Sscan(f[2], &j); err != nil || j < 0 || j >= len(rf.socks) {
				continue
			}
			rf.socks[j].WriteTo([]byte(nonce+" alt"), from)
			pc.WriteTo([]byte(nonce+" mark"), from)
		case f[1] == "to" && len(f) == 3:
			to, err := netip.ParseAddrPort(f[2])
			if err != nil {
				continue
			}
			pc.WriteTo([]byte(nonce+" mark"), net.UDPAddrFromAddrPort(to))
		}
	}
}

// prober is a UDP socket in a lab host that remembers what it received.
type prober struct {
	pc     net.PacketConn
	mu     sync.Mutex
	got    []string
	notify chan struct{}
	done   chan struct{}
}

func newProber(h *Host, network string) (*prober, error) {
	pc, err := h.ListenPacket(context.Background(), network, ":0")
	if err != nil {
		return nil, err
	}
	p := &prober{pc: pc, notify: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p.mu.Lock()
			p.got = append(p.got, string(buf[:n]))
			close(p.notify)
			p.notify = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	return p, nil
}

func (p *prober) close() { p.pc.Close(); <-p.done }

func (p *prober) localPort() uint16 { return p.pc.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

// find returns the first received message with the prefix.
func (p *prober) find(prefix string) (string, bool, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.got {
		if strings.HasPrefix(m, prefix) {
			return m, true, p.notify
		}
	}
	return "", false, p.notify
}

// exchange sends msg to `to` (resending) until a message starting with want arrives.
func (p *prober) exchange(to netip.AddrPort, msg, want string, before func()) (string, error) {
	deadline := time.After(probeDeadline)
	resend := time.NewTicker(probeResend)
	defer resend.Stop()
	for {
		if before != nil {
			before()
		}
		if _, err := p.pc.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(to)); err != nil {
			return "", fmt.Errorf("send to %v: %w", to, err)
		}
	wait:
		m, ok, notify := p.find(want)
		if ok {
			return m, nil
		}
		select {
		case <-notify:
			goto wait
		case <-resend.C:
		case <-deadline:
			return "", fmt.Errorf("no %q from %v within %v", want, to, probeDeadline)
		}
	}
}

// echo returns the source address the reflector socket observed.
func (p *prober) echo(to netip.AddrPort) (netip.AddrPort, error) {
	n := nonce()
	m, err := p.exchange(to, n+" echo", n+" echo ", nil)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.ParseAddrPort(strings.TrimPrefix(m, n+" echo "))
}

// arrivesFrom asks the reflector socket `via` to send from socket i and
// reports whether that packet arrived.
func (p *prober) arrivesFrom(rf *reflector, via, i int, grace time.Duration) (bool, error) {
	n := nonce()
	if _, err := p.exchange(rf.addrs[via], fmt.Sprintf("%s from %d", n, i), n+" mark", nil); err != nil {
		return false, err
	}
	return p.arrivedWithin(n+" alt", grace), nil
}

func (p *prober) arrivedWithin(prefix string, grace time.Duration) bool {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for {
		_, ok, notify := p.find(prefix)
		if ok {
			return true
		}
		select {
		case <-notify:
		case <-timer.C:
			_, ok, _ := p.find(prefix)
			return ok
		}
	}
}

func nonce() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// measure runs the RFC 5780-style tests for a router from its first host.
func measure(r *RouterHost, rf *reflector, grace time.Duration) (Measured, error) {
	var m Measured
	h := r.Hosts()[0]

	// Mapping: one socket towards three reflector sockets.
	p, err := newProber(h, "udp4")
	if err != nil {
		return m, err
	}
	defer p.close()
	m.Local = netip.AddrPortFrom(h.Addr(), p.localPort())
	if m.MappedPrimary, err = p.echo(rf.addrs[rfPrimary]); err != nil {
		return m, fmt.Errorf("mapping test I: %w", err)
	}
	if m.MappedAltIP, err = p.echo(rf.addrs[rfAltIP]); err != nil {
		return m, fmt.Errorf("mapping test II: %w", err)
	}
	if m.MappedAltBoth, err = p.echo(rf.addrs[rfAltBoth]); err != nil {
		return m, fmt.Errorf("mapping test III: %w", err)
	}
	switch {
	case m.MappedPrimary == m.Local:
		m.Mapping = MappingNone
	case m.MappedPrimary == m.MappedAltIP && m.MappedAltIP == m.MappedAltBoth:
		m.Mapping = MappingEndpointIndependent
	case m.MappedAltIP == m.MappedAltBoth:
		m.Mapping = MappingAddressDependent
	default:
		m.Mapping = MappingAddressAndPortDependent
	}
	m.PortPreserving = m.MappedPrimary.Port() == m.Local.Port()

	// The three negative observations wait markGrace each: run them at once.
	var wg sync.WaitGroup
	var ferr, herr, verr error
	wg.Go(func() { m.Filtering, ferr = measureFiltering(h, rf, grace) })
	wg.Go(func() { m.Hairpin, herr = measureHairpin(h, rf, grace) })
	wg.Go(func() { m.IPv6Firewall, verr = measureFirewall6(h, rf, grace) })
	wg.Wait()
	if err := errors.Join(ferr, herr, verr); err != nil {
		return m, err
	}
	return m, nil
}

// measureFiltering: on a fresh socket, does a packet from another address
// and port arrive, and from the same address and another port?
func measureFiltering(h *Host, rf *reflector, grace time.Duration) (Filtering, error) {
	f, err := newProber(h, "udp4")
	if err != nil {
		return "", err
	}
	defer f.close()
	if _, err := f.echo(rf.addrs[rfPrimary]); err != nil {
		return "", fmt.Errorf("filtering test I: %w", err)
	}
	otherBoth, err := f.arrivesFrom(rf, rfPrimary, rfAltBoth, grace)
	if err != nil {
		return "", fmt.Errorf("filtering test II: %w", err)
	}
	otherPort, err := f.arrivesFrom(rf, rfPrimary, rfAltPort, grace)
	if err != nil {
		return "", fmt.Errorf("filtering test III: %w", err)
	}
	switch {
	case otherBoth:
		return FilteringEndpointIndependent, nil
	case otherPort:
		return FilteringAddressDependent, nil
	}
	return FilteringAddressAndPortDependent, nil
}

// measureHairpin: socket y sends to socket x's public mapping; then the
// reflector sends x a marker over the WAN.
func measureHairpin(h *Host, rf *reflector, grace time.Duration) (bool, error) {
	x, err := newProber(h, "udp4")
	if err != nil {
		return false, err
	}
	defer x.close()
	mx, err := x.echo(rf.addrs[rfPrimary])
	if err != nil {
		return false, fmt.Errorf("hairpin test: %w", err)
	}
	y, err := newProber(h, "udp4")
	if err != nil {
		return false, err
	}
	defer y.close()
	n := nonce()
	sendHairpin := func() { y.pc.WriteTo([]byte(n+" hairpin"), net.UDPAddrFromAddrPort(mx)) }
	// y resends its request until x has the marker.
	markSeen := make(chan error, 1)
	go func() {
		_, err := x.exchangeWait(n + " mark")
		markSeen <- err
	}()
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(probeResend)
		defer t.Stop()
		for {
			sendHairpin()
			y.pc.WriteTo([]byte(fmt.Sprintf("%s to %s", n, mx)), net.UDPAddrFromAddrPort(rf.addrs[rfPrimary]))
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	err = <-markSeen
	close(stop)
	if err != nil {
		return false, fmt.Errorf("hairpin test marker: %w", err)
	}
	return x.arrivedWithin(n+" hairpin", grace), nil

}

// measureFirewall6: IPv6 reaches the server, and is unsolicited inbound
// (from another port) dropped?
func measureFirewall6(h *Host, rf *reflector, grace time.Duration) (bool, error) {
	p6, err := newProber(h, "udp6")
	if err != nil {
		return false, err
	}
	defer p6.close()
	if _, err := p6.echo(rf.addrs[rf6]); err != nil {
		return false, fmt.Errorf("ipv6 test: %w", err)
	}
	open6, err := p6.arrivesFrom(rf, rf6, rf6AltPrt, grace)
	if err != nil {
		return false, fmt.Errorf("ipv6 firewall test: %w", err)
	}
	return !open6, nil
}

// exchangeWait waits (without sending) for a message with the prefix.
func (p *prober) exchangeWait(want string) (string, error) {
	deadline := time.After(probeDeadline)
	for {
		m, ok, notify := p.find(want)
		if ok {
			return m, nil
		}
		select {
		case <-notify:
		case <-deadline:
			return "", fmt.Errorf("no %q within %v", want, probeDeadline)
		}
	}
}

// Measure measures every router that has at least one host. The lab's
// self-check calls it; tests may call it again (e.g. after changing rules).
func (l *Lab) Measure() (map[string]Measured, error) {
	return l.measure(l.routers, markGrace)
}

func (l *Lab) measure(routers []*RouterHost, grace time.Duration) (map[string]Measured, error) {
	rf, err := startReflector(l.server)
	if err != nil {
		return nil, err
	}
	defer rf.close()
	res := map[string]Measured{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, r := range routers {
		if len(r.Hosts()) == 0 {
			continue
		}
		wg.Go(func() {
			m, err := measure(r, rf, grace)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("router %s (%v): %w", r.spec.Name, r.spec.NAT, err))
				return
			}
			res[r.spec.Name] = m
		})
	}
	wg.Wait()
	return res, errors.Join(errs...)
}

func (l *Lab) selfCheck(t testing.TB) {
	t.Helper()
	got, err := l.Measure()
	if err != nil {
		t.Fatalf("natlab: self-check of lab %s could not measure: %v", l.prefix, err)
	}
	// Measure a mismatching router again with a long window before failing.
	var again []*RouterHost
	for _, r := range l.routers {
		if m, ok := got[r.spec.Name]; ok && m.Behavior != r.Expected() {
			again = append(again, r)
		}
	}
	if len(again) > 0 {
		second, err := l.measure(again, retryGrace)
		if err != nil {
			t.Fatalf("natlab: self-check of lab %s could not measure: %v", l.prefix, err)
		}
		for name, m := range second {
			t.Logf("natlab: router %s measured again after a mismatch: %+v (first %+v)", name, m.Behavior, got[name].Behavior)
			got[name] = m
		}
	}
	l.measured = got
	table, bad := l.behaviorTable(got)
	if bad {
		t.Fatalf("natlab: self-check of lab %s: routers do not behave as configured:\n%s", l.prefix, table)
	}
}

// Measured is what the self-check measured for the named router (false when
// the self-check was skipped or the router has no hosts).
func (l *Lab) Measured(router string) (Measured, bool) {
	m, ok := l.measured[router]
	return m, ok
}

// BehaviorTable renders expected vs measured behaviour of every router, the
// table the self-check prints on a mismatch.
func (l *Lab) BehaviorTable(got map[string]Measured) string {
	s, _ := l.behaviorTable(got)
	return s
}

// behaviorTable renders expected vs measured per router; bad reports a mismatch.
func (l *Lab) behaviorTable(got map[string]Measured) (string, bool) {
	var s strings.Builder
	bad := false
	fmt.Fprintf(&s, "%-9s %-33s %-9s %-27s %-27s %-7s %-8s %-6s %s\n",
		"router", "profile", "", "mapping", "filtering", "ports", "hairpin", "v6-fw", "observed (local -> I / II / III)")
	for _, r := range l.routers {
		m, ok := got[r.spec.Name]
		if !ok {
			continue
		}
		want := r.Expected()
		mismatch := want != m.Behavior
		bad = bad || mismatch
		mark := "ok"
		if mismatch {
			mark = "MISMATCH"
		}
		row := func(label string, b Behavior, extra string) {
			fmt.Fprintf(&s, "%-9s %-33s %-9s %-27s %-27s %-7s %-8v %-6v %s\n", r.spec.Name,
				fmt.Sprintf("%v hairpin=%v", r.spec.NAT, r.spec.Hairpin), label, b.Mapping, b.Filtering,
				map[bool]string{true: "kept", false: "changed"}[b.PortPreserving], b.Hairpin, b.IPv6Firewall, extra)
		}
		row("expected", want, "")
		row("measured", m.Behavior, fmt.Sprintf("%v -> %v / %v / %v  %s", m.Local, m.MappedPrimary, m.MappedAltIP, m.MappedAltBoth, mark))
	}
	return s.String(), bad
}

// Package natcheck finds out how the player's router treats UDP (RFC 5780 NAT
// behaviour discovery) and says it in words a player understands.
//
// It asks a STUN server (rendezvous' own answers RFC 5780: OTHER-ADDRESS,
// RESPONSE-ORIGIN, CHANGE-REQUEST) from one socket:
//
//	test                     request to                   tells
//	I    Binding             primary                      public address, port preservation, NAT or not
//	F-II CHANGE-REQUEST ip+port  primary (answer from alt ip+port)  endpoint-independent filtering?
//	F-III CHANGE-REQUEST port    primary (answer from primary ip, alt port)  address-dependent filtering?
//	M-II Binding             alternate ip, primary port   endpoint-independent mapping?
//	M-III Binding            alternate ip + port          address-dependent mapping?
//	hairpin                  second socket -> own public address
//	lifetime                 RESPONSE-PORT from a second socket after idle periods (optional)
//	IPv6                     Binding (and the filtering tests) over IPv6
//
// The filtering tests run before the mapping tests II/III on purpose: sending
// to the alternate address opens the router's filter for it. A server without
// OTHER-ADDRESS allows test I, hairpin and IPv6 only.
//
// natcheck imports no HTTP, metrics or CLI code, and exports no pion types.
package natcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
)

// Options configures a check.
type Options struct {
	// Server is the STUN server, "host:port" (IPv4 is used for the NAT tests).
	Server string
	// Server6 is the server's IPv6 address ("[addr]:port"); empty takes the
	// first IPv6 address Server resolves to, if any.
	Server6 string
	// Conn, when set, is the socket to test (the game's own socket); Check reads
	// from it until it returns. Otherwise Check opens one through Network.
	Conn net.PacketConn
	// Network opens the extra sockets (hairpin, lifetime, IPv6, and the main
	// one without Conn); nil is the host's network.
	Network netx.Network
	// Timeout bounds each test's wait for an answer (retransmitting meanwhile).
	// A test whose answer must not come (a filtered packet) always waits this
	// long. Default 2 s.
	Timeout time.Duration
	// Lifetime, when positive, estimates how long the router keeps an idle
	// mapping, by probing mappings left idle for up to Lifetime (at most
	// MaxLifetime). Check then takes that long.
	Lifetime time.Duration
	// Resolver resolves Server; nil uses net.DefaultResolver.
	Resolver *net.Resolver
}

// MaxLifetime bounds Options.Lifetime.
const MaxLifetime = 10 * time.Minute

// Mapping is how the router picks the public address of a socket (RFC 4787).
type Mapping string

// Filtering is which inbound packets the router lets through to a socket.
type Filtering string

// Answer is a yes/no test result that may not have been determined.
type Answer string

const (
	MappingUnknown                 Mapping = "unknown"
	MappingNoNAT                   Mapping = "no-nat"
	MappingEndpointIndependent     Mapping = "endpoint-independent"
	MappingAddressDependent        Mapping = "address-dependent"
	MappingAddressAndPortDependent Mapping = "address-and-port-dependent"

	FilteringUnknown                 Filtering = "unknown"
	FilteringEndpointIndependent     Filtering = "endpoint-independent"
	FilteringAddressDependent        Filtering = "address-dependent"
	FilteringAddressAndPortDependent Filtering = "address-and-port-dependent"

	Yes     Answer = "yes"
	No      Answer = "no"
	Unknown Answer = "unknown"
)

// Report is the outcome of a check.
type Report struct {
	Server string `json:"server"`
	// UDP is false when the server never answered over UDP (UDP blocked or the
	// server down); nothing else was tested then.
	UDP bool `json:"udp"`
	// RFC5780 is true when the server gave an OTHER-ADDRESS, so mapping and
	// filtering behaviour could be tested.
	RFC5780 bool `json:"rfc5780"`
	// Local is the tested socket's local address; Public what the server saw.
	Local  string `json:"local"`
	Public string `json:"public,omitempty"`
	// BehindNAT: the public address is not one of this host's.
	BehindNAT     bool      `json:"behind_nat"`
	Mapping       Mapping   `json:"mapping"`
	Filtering     Filtering `json:"filtering"`
	PortPreserved bool      `json:"port_preserved"`
	Hairpin       Answer    `json:"hairpin"`
	// Lifetime is set when Options.Lifetime asked for an estimate.
	Lifetime *Lifetime `json:"mapping_lifetime,omitempty"`
	IPv6     IPv6      `json:"ipv6"`
	// Notes explain tests that could not run.
	Notes []string `json:"notes,omitempty"`
}

// Lifetime bounds how long the router keeps an idle UDP mapping.
type Lifetime struct {
	// Tested is false when the server lacks RESPONSE-PORT (see Notes).
	Tested bool `json:"tested"`
	// AliveAfter is the longest idle time after which the mapping still worked.
	AliveAfter time.Duration `json:"alive_after_ns"`
	// ExpiredBy is the shortest idle time after which it was gone (0: it
	// survived every probe).
	ExpiredBy time.Duration `json:"expired_by_ns,omitempty"`
}

// IPv6 is the IPv6 result.
type IPv6 struct {
	Tested    bool   `json:"tested"`
	Reachable bool   `json:"reachable"`
	Public    string `json:"public,omitempty"`
	// Filtering is the IPv6 firewall's behaviour (tested when the IPv6 server
	// has an OTHER-ADDRESS): a home router's stateful firewall is
	// address-and-port-dependent, like a port-restricted NAT.
	Filtering Filtering `json:"filtering,omitempty"`
}

// Check runs the tests. It returns an error only when it cannot start
// (bad options, no socket); an unreachable server is a Report with UDP false.
func Check(ctx context.Context, opts Options) (*Report, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Lifetime > MaxLifetime {
		return nil, fmt.Errorf("natcheck: lifetime %v above the maximum %v", opts.Lifetime, MaxLifetime)
	}
	nw := netx.Or(opts.Network)
	server4, server6, err := resolve(ctx, opts)
	if err != nil {
		return nil, err
	}
	rep := &Report{Server: opts.Server, Mapping: MappingUnknown, Filtering: FilteringUnknown, Hairpin: Unknown}
	ck := &checker{opts: opts, nw: nw, rep: rep, rto: rtoFor(opts.Timeout)}

	var main *conn
	if opts.Conn != nil {
		main = newConn(opts.Conn, false)
	} else {
		pc, err := nw.ListenPacket(ctx, "udp4", ":0")
		if err != nil {
			return nil, fmt.Errorf("natcheck: open socket: %w", err)
		}
		main = newConn(pc, true)
	}
	defer main.stop()
	rep.Local = main.pc.LocalAddr().String()

	var wg sync.WaitGroup
	if server4.IsValid() {
		wg.Go(func() { ck.nat(ctx, main, server4) })
	} else {
		ck.note("the server has no IPv4 address: NAT tests skipped")
	}
	if server6.IsValid() {
		wg.Go(func() { ck.ipv6(ctx, server6) })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	return rep, nil
}

func rtoFor(timeout time.Duration) time.Duration {
	rto := timeout / 8
	if rto > 250*time.Millisecond {
		rto = 250 * time.Millisecond
	}
	if rto < 10*time.Millisecond {
		rto = 10 * time.Millisecond
	}
	return rto
}

func resolve(ctx context.Context, opts Options) (v4, v6 netip.AddrPort, err error) {
	if opts.Server == "" {
		return v4, v6, errors.New("natcheck: no server given")
	}
	host, portStr, err := net.SplitHostPort(opts.Server)
	if err != nil {
		return v4, v6, fmt.Errorf("natcheck: server %q: %w", opts.Server, err)
	}
	port, err := net.LookupPort("udp", portStr)
	if err != nil {
		return v4, v6, fmt.Errorf("natcheck: server %q: %w", opts.Server, err)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		r := opts.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		addrs, err = r.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return v4, v6, fmt.Errorf("natcheck: resolve %q: %w", host, err)
		}
	}
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() && !v4.IsValid() {
			v4 = netip.AddrPortFrom(a, uint16(port))
		}
		if a.Is6() && !v6.IsValid() {
			v6 = netip.AddrPortFrom(a, uint16(port))
		}
	}
	if opts.Server6 != "" {
		if v6, err = netip.ParseAddrPort(opts.Server6); err != nil || !v6.Addr().Is6() {
			return v4, v6, fmt.Errorf("natcheck: server6 %q: want [ipv6]:port", opts.Server6)
		}
	}
	return v4, v6, nil
}

// checker runs the tests; independent ones run at once (each writes its own
// Report fields), so a check takes about the longest chain of timeouts.
type checker struct {
	mu   sync.Mutex // Notes
	opts Options
	nw   netx.Network
	rep  *Report
	rto  time.Duration
}

func (ck *checker) note(format string, args ...any) {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	ck.rep.Notes = append(ck.rep.Notes, fmt.Sprintf(format, args...))
}

// nat runs the IPv4 tests on the main socket.
func (ck *checker) nat(ctx context.Context, c *conn, server netip.AddrPort) {
	rep := ck.rep
	r, err := c.roundTrip(ctx, server, ck.rto, ck.opts.Timeout)
	if err != nil {
		ck.note("no answer from %v over UDP: %v", server, err)
		return
	}
	b1, err := parseBinding(r)
	if err != nil {
		ck.note("test I: %v", err)
		return
	}
	rep.UDP = true
	rep.Public = b1.mapped.String()
	rep.PortPreserved = b1.mapped.Port() == c.localPort()
	rep.BehindNAT = !ck.isLocal(ctx, b1.mapped)
	if !rep.BehindNAT {
		rep.Mapping = MappingNoNAT
		rep.Hairpin = Yes // a public address reaches itself
	}
	other := b1.other
	rep.RFC5780 = other.IsValid() && other.Addr() != server.Addr() && other.Port() != server.Port()
	if !rep.RFC5780 {
		ck.note("the server gave no usable OTHER-ADDRESS (RFC 5780): mapping and filtering behaviour not tested")
	}

	var wg sync.WaitGroup
	if rep.RFC5780 {
		wg.Go(func() {
			rep.Filtering = ck.filtering(ctx, c, server, other, "")
			if rep.BehindNAT {
				ck.mapping(ctx, c, server, other, b1.mapped)
			}
		})
	}
	if rep.BehindNAT {
		wg.Go(func() { ck.hairpin(ctx, c, server, b1.mapped) })
	}
	if ck.opts.Lifetime > 0 {
		wg.Go(func() { ck.lifetime(ctx, server) })
	}
	wg.Wait()
}

// filtering: RFC 5780 §4.4 tests II and III. label prefixes notes ("" or "IPv6 ").
func (ck *checker) filtering(ctx context.Context, c *conn, server, other netip.AddrPort, label string) Filtering {
	r, err := c.roundTrip(ctx, server, ck.rto, ck.opts.Timeout, changeRequest{ip: true, port: true})
	if err == nil {
		b, perr := parseBinding(r)
		switch {
		case perr != nil:
			ck.note("%sfiltering test II: %v", label, perr)
			return FilteringUnknown
		case b.from != other:
			ck.note("%sfiltering test II: the server answered from %v instead of %v (CHANGE-REQUEST ignored)", label, b.from, other)
			return FilteringUnknown
		}
		return FilteringEndpointIndependent
	}
	if !errors.Is(err, errTimeout) {
		ck.note("%sfiltering test II: %v", label, err)
		return FilteringUnknown
	}
	r, err = c.roundTrip(ctx, server, ck.rto, ck.opts.Timeout, changeRequest{port: true})
	if err == nil {
		b, perr := parseBinding(r)
		want := netip.AddrPortFrom(server.Addr(), other.Port())
		switch {
		case perr != nil:
			ck.note("%sfiltering test III: %v", label, perr)
			return FilteringUnknown
		case b.from != want:
			ck.note("%sfiltering test III: the server answered from %v instead of %v", label, b.from, want)
			return FilteringUnknown
		}
		return FilteringAddressDependent
	}
	if !errors.Is(err, errTimeout) {
		ck.note("%sfiltering test III: %v", label, err)
		return FilteringUnknown
	}
	return FilteringAddressAndPortDependent
}

// mapping: RFC 5780 §4.3 tests II and III.
func (ck *checker) mapping(ctx context.Context, c *conn, server, other, m1 netip.AddrPort) {
	get := func(to netip.AddrPort, name string) (netip.AddrPort, bool) {
		r, err := c.roundTrip(ctx, to, ck.rto, ck.opts.Timeout)
		if err != nil {
			ck.note("mapping test %s (to %v): %v", name, to, err)
			return netip.AddrPort{}, false
		}
		b, err := parseBinding(r)
		if err != nil {
			ck.note("mapping test %s: %v", name, err)
			return netip.AddrPort{}, false
		}
		return b.mapped, true
	}
	m2, ok := get(netip.AddrPortFrom(other.Addr(), server.Port()), "II")
	if !ok {
		return
	}
	if m2 == m1 {
		ck.rep.Mapping = MappingEndpointIndependent
		return
	}
	m3, ok := get(other, "III")
	if !ok {
		return
	}
	if m3 == m2 {
		ck.rep.Mapping = MappingAddressDependent
	} else {
		ck.rep.Mapping = MappingAddressAndPortDependent
	}
}

// isLocal reports whether addr is one of this host's addresses: binding to
// it succeeds only then (works inside any netx.Network).
func (ck *checker) isLocal(ctx context.Context, addr netip.AddrPort) bool {
	pc, err := ck.nw.ListenPacket(ctx, "udp", netip.AddrPortFrom(addr.Addr(), 0).String())
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// hairpin: a second socket sends a Binding request to the main socket's
// public address; does the main socket receive it?
func (ck *checker) hairpin(ctx context.Context, c *conn, server, public netip.AddrPort) {
	pc, err := ck.nw.ListenPacket(ctx, "udp4", ":0")
	if err != nil {
		ck.note("hairpin test: open socket: %v", err)
		return
	}
	h := newConn(pc, true)
	defer h.stop()
	req, err := bindingRequest()
	if err != nil {
		ck.note("hairpin test: %v", err)
		return
	}
	ch := c.expect(req.TransactionID)
	defer c.forget(req.TransactionID)
	deadline := time.NewTimer(ck.opts.Timeout)
	defer deadline.Stop()
	rto := ck.rto
	for {
		if _, err := h.pc.WriteTo(req.Raw, net.UDPAddrFromAddrPort(public)); err != nil {
			ck.note("hairpin test: send: %v", err)
			return
		}
		resend := time.NewTimer(rto)
		select {
		case <-ch:
			resend.Stop()
			ck.rep.Hairpin = Yes
			return
		case <-resend.C:
			rto *= 2
		case <-deadline.C:
			resend.Stop()
			ck.rep.Hairpin = No
			return
		case <-ctx.Done():
			resend.Stop()
			return
		}
	}
}

// lifetime probes mappings left idle for growing periods: socket k binds at
// the start and, after idle period d_k, a fresh socket asks the server to
// answer to socket k's public port (RESPONSE-PORT). The answer arrives only
// while socket k's mapping lives (the server's primary address is the one
// socket k talked to, so filtering lets it in).
func (ck *checker) lifetime(ctx context.Context, server netip.AddrPort) {
	lt := &Lifetime{}
	ck.rep.Lifetime = lt
	total := ck.opts.Lifetime
	periods := []time.Duration{total / 8, total / 4, total / 2, total * 3 / 4, total}
	type probe struct {
		c      *conn
		public netip.AddrPort
		idle   time.Duration
	}
	var probes []probe
	defer func() {
		for _, p := range probes {
			p.c.stop()
		}
	}()
	for _, d := range periods {
		if d <= 0 {
			continue
		}
		pc, err := ck.nw.ListenPacket(ctx, "udp4", ":0")
		if err != nil {
			ck.note("lifetime test: open socket: %v", err)
			return
		}
		c := newConn(pc, true)
		probes = append(probes, probe{c: c, idle: d})
		r, err := c.roundTrip(ctx, server, ck.rto, ck.opts.Timeout)
		if err != nil {
			ck.note("lifetime test: %v", err)
			return
		}
		b, err := parseBinding(r)
		if err != nil {
			ck.note("lifetime test: %v", err)
			return
		}
		probes[len(probes)-1].public = b.mapped
	}
	start := time.Now()
	var alive, expired []time.Duration
	for _, p := range probes {
		wait := time.Until(start.Add(p.idle))
		select {
		case <-time.After(wait): // the idle period under test
		case <-ctx.Done():
			return
		}
		ok, err := ck.responsePortProbe(ctx, p.c, server, p.public)
		if err != nil {
			var se *stunError
			if errors.As(err, &se) && se.Code == 420 {
				ck.note("the server does not support RESPONSE-PORT: mapping lifetime not tested")
			} else {
				ck.note("lifetime test: %v", err)
			}
			return
		}
		if ok {
			alive = append(alive, p.idle)
		} else {
			// Longer idle periods will not bring it back: stop early.
			expired = append(expired, p.idle)
			break
		}
	}
	lt.Tested = true
	sort.Slice(alive, func(i, j int) bool { return alive[i] < alive[j] })
	if len(alive) > 0 {
		lt.AliveAfter = alive[len(alive)-1]
	}
	if len(expired) > 0 {
		lt.ExpiredBy = expired[0]
	}
}

// responsePortProbe asks from a fresh socket that the answer go to target's
// port; reports whether target received it.
func (ck *checker) responsePortProbe(ctx context.Context, target *conn, server, public netip.AddrPort) (bool, error) {
	pc, err := ck.nw.ListenPacket(ctx, "udp4", ":0")
	if err != nil {
		return false, err
	}
	asker := newConn(pc, true)
	defer asker.stop()
	req, err := bindingRequest(responsePort(public.Port()))
	if err != nil {
		return false, err
	}
	toTarget := target.expect(req.TransactionID)
	defer target.forget(req.TransactionID)
	toAsker := asker.expect(req.TransactionID)
	defer asker.forget(req.TransactionID)
	deadline := time.NewTimer(ck.opts.Timeout)
	defer deadline.Stop()
	rto := ck.rto
	for {
		if _, err := asker.pc.WriteTo(req.Raw, net.UDPAddrFromAddrPort(server)); err != nil {
			return false, err
		}
		resend := time.NewTimer(rto)
		select {
		case <-toTarget:
			resend.Stop()
			return true, nil
		case r := <-toAsker:
			resend.Stop()
			if _, err := parseBinding(r); err != nil {
				return false, err
			}
			return false, errors.New("the server answered the asking socket, ignoring RESPONSE-PORT")
		case <-resend.C:
			rto *= 2
		case <-deadline.C:
			resend.Stop()
			return false, nil
		case <-ctx.Done():
			resend.Stop()
			return false, ctx.Err()
		}
	}
}

// ipv6: one Binding over IPv6.
func (ck *checker) ipv6(ctx context.Context, server netip.AddrPort) {
	ck.rep.IPv6.Tested = true
	ck.rep.IPv6.Filtering = FilteringUnknown
	pc, err := ck.nw.ListenPacket(ctx, "udp6", ":0")
	if err != nil {
		ck.note("IPv6: no IPv6 socket: %v", err)
		return
	}
	c := newConn(pc, true)
	defer c.stop()
	r, err := c.roundTrip(ctx, server, ck.rto, ck.opts.Timeout)
	if err != nil {
		ck.note("IPv6: no answer from %v: %v", server, err)
		return
	}
	b, err := parseBinding(r)
	if err != nil {
		ck.note("IPv6: %v", err)
		return
	}
	ck.rep.IPv6.Reachable = true
	ck.rep.IPv6.Public = b.mapped.String()
	if b.other.IsValid() && b.other.Addr() != server.Addr() && b.other.Port() != server.Port() {
		ck.rep.IPv6.Filtering = ck.filtering(ctx, c, server, b.other, "IPv6 ")
	}
}

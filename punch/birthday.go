package punch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Birthday probing finds a direct path between a "hard" NAT, which gives
// every destination a fresh public port (endpoint-dependent mapping, a
// symmetric NAT), and an "easy" one, which keeps one public port for every
// destination (endpoint-independent mapping) but filters by address and port.
// Plain punching cannot work there: the hard side's packets leave from ports
// nobody told the easy side, whose filter drops them, and the easy side
// cannot guess which port to answer. Probing guesses instead:
//
//	hard side (opener)                        easy side (prober)
//	N sockets, each pings the easy side's     (dropped by the easy side's filter,
//	public address: N fresh mappings          but each leaves a mapping on the
//	on the hard NAT                           hard NAT: public port -> socket k)
//	                                          one socket pings hard-IP:random-port,
//	                                          Rate per second, at most Probes
//	socket k <- a ping that hit a mapping
//	socket k -> pong, and pings back (the easy filter is open: the prober
//	            sent to that port), the rest of the N sockets close at once
//
// Each probe hits with p = N/64,512 (the ports above 1023 a Linux or most
// other NATs draw from): with N = 256, half the runs need 175 probes, 90%
// 580, 98% 1,000 (Tailscale's "birthday paradox" analysis of NAT traversal).
// Probes are ordinary signed pings (probe.go), so nobody else can answer them,
// and a session that relays meanwhile never waits for probing: the ladder
// moves it to the direct path once one answers. Pairs whose plain punching
// finds a direct path before After never probe (a full-cone or
// address-restricted easy side lets the hard side's pings in).

// BirthdayConfig tunes hard-NAT probing. Some networks treat a port scan as
// abuse: Probes = 0 turns probing off (the pair then relays as before).
type BirthdayConfig struct {
	// Probes is the most probes the easy side sends for one connect; 0 turns
	// probing off on this side (neither probing nor opening sockets).
	Probes int
	// Rate is probes per second.
	Rate float64
	// Sockets is how many sockets the hard side opens.
	Sockets int
	// After is how long plain punching runs before probing starts.
	After time.Duration
	// ListenPacket opens the hard side's sockets (nil: the host's network).
	ListenPacket func(ctx context.Context, network, address string) (net.PacketConn, error)
}

// DefaultBirthday is 256 sockets, 100 probes/s, at most 2,000 probes (20 s),
// after 250 ms of plain punching (which answers within one round trip
// between the peers when it can).
func DefaultBirthday() BirthdayConfig {
	return BirthdayConfig{Probes: 2000, Rate: 100, Sockets: 256, After: 250 * time.Millisecond}
}

func (c BirthdayConfig) validate() error {
	switch {
	case c.Probes < 0 || c.Probes > 65535:
		return errors.New("birthday probing: probes must be 0 (off) to 65535")
	case c.Probes == 0:
		return nil
	case c.Rate <= 0 || c.Rate > 1000:
		return errors.New("birthday probing: probe-rate must be in (0, 1000] probes/s")
	case c.Sockets < 1 || c.Sockets > 1024:
		return errors.New("birthday probing: probe-sockets must be 1 to 1024")
	case c.After < 0:
		return errors.New("birthday probing: after must not be negative")
	}
	return nil
}

// duration is how long the prober may probe.
func (c BirthdayConfig) duration() time.Duration {
	return time.Duration(float64(c.Probes) / c.Rate * float64(time.Second))
}

// The two roles of a probing pair.
const (
	roleProber = "prober" // endpoint-independent side: sends the probes
	roleOpener = "opener" // endpoint-dependent side: opens the sockets
)

// birthdayRole is this side's role for a pair, "" when the pair punches plainly.
func birthdayRole(mine, peer NATType) string {
	switch {
	case mine == NATEndpointIndependent && peer.hard():
		return roleProber
	case mine.hard() && peer == NATEndpointIndependent:
		return roleOpener
	}
	return ""
}

// ProbeResult is how hard-NAT probing went for one session.
type ProbeResult struct {
	Role string `json:"role"` // "prober" or "opener"
	// Probes is how many probes the prober sent, or sockets the opener opened
	// (0 when plain punching found a direct path first).
	Probes int  `json:"probes"`
	Found  bool `json:"found"` // a probe was answered: there is a direct path
	// Took is from the scheduled start to the answer, or to the end of probing.
	Took time.Duration `json:"-"` // in the probed event as took_ms
}

// Probe is hard-NAT probing for one session (Session.Probe).
type Probe struct {
	role  string
	start time.Time
	done  chan struct{}
	found chan struct{}

	mu      sync.Mutex
	result  ProbeResult
	socks   []*extraSocket
	winner  *extraSocket
	closed  bool
	readers sync.WaitGroup
}

// extraSocket is one of the opener's sockets.
type extraSocket struct {
	conn  net.PacketConn
	local netip.AddrPort
}

func newProbe(role string, start time.Time) *Probe {
	return &Probe{role: role, start: start, done: make(chan struct{}), found: make(chan struct{}),
		result: ProbeResult{Role: role}}
}

// Done is closed when probing has ended; Result is then final.
func (p *Probe) Done() <-chan struct{} { return p.done }

// Result is the outcome so far.
func (p *Probe) Result() ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.result
}

// answered records the first answer: on the opener, a probe that arrived on
// socket s (the other sockets close at once); on the prober, a pong (s nil).
func (p *Probe) answered(s *extraSocket) {
	p.mu.Lock()
	if p.result.Found {
		p.mu.Unlock()
		return
	}
	p.result.Found = true
	p.result.Took = time.Since(p.start)
	p.winner = s
	p.mu.Unlock()
	close(p.found)
	if s != nil {
		p.closeLosers()
	}
}

// add keeps s unless probing was closed meanwhile.
func (p *Probe) add(s *extraSocket, read func(*extraSocket)) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.result.Found {
		return false
	}
	p.socks = append(p.socks, s)
	p.result.Probes = len(p.socks)
	p.readers.Add(1)
	go func() {
		defer p.readers.Done()
		read(s)
	}()
	return true
}

// closeLosers closes every socket but the winner (the session's path).
func (p *Probe) closeLosers() {
	p.mu.Lock()
	var losers []*extraSocket
	for _, s := range p.socks {
		if s != p.winner {
			losers = append(losers, s)
		}
	}
	if p.winner != nil {
		p.socks = []*extraSocket{p.winner}
	} else {
		p.socks = nil
	}
	p.mu.Unlock()
	for _, s := range losers {
		s.conn.Close()
	}
}

// close closes every socket, the winner too, and waits for their readers.
func (p *Probe) close() {
	p.mu.Lock()
	p.closed = true
	socks := p.socks
	p.socks = nil
	p.mu.Unlock()
	for _, s := range socks {
		s.conn.Close()
	}
	p.readers.Wait()
}

func (p *Probe) sockets() []*extraSocket {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*extraSocket(nil), p.socks...)
}

// startBirthday starts probing for a when the pair needs it, and returns how
// long Connect should keep looking for a path.
func (e *Endpoint) startBirthday(a *attempt, start time.Time) time.Duration {
	cfg := e.cfg.Birthday
	role := birthdayRole(e.NATType(), a.peer.NAT)
	if role == "" || cfg.Probes == 0 || len(a.peer.reflexive4()) == 0 {
		return e.cfg.PunchWindow
	}
	p := newProbe(role, start)
	a.mu.Lock()
	a.probe = p
	a.mu.Unlock()
	go e.runBirthday(a, p)
	return max(e.cfg.PunchWindow, cfg.After+cfg.duration()+time.Second)
}

// reflexive4 is the peer's public IPv4 addresses (probing is IPv4 only: an
// IPv6 firewall does not map ports).
func (p Peer) reflexive4() []netip.AddrPort {
	var out []netip.AddrPort
	for _, c := range p.Candidates {
		if c.Kind == Reflexive && c.Addr.Addr().Is4() {
			out = append(out, c.Addr)
		}
	}
	return out
}

func (e *Endpoint) runBirthday(a *attempt, p *Probe) {
	defer close(p.done)
	defer p.closeLosers()
	cfg := e.cfg.Birthday
	wait := cfg.After
	if p.role == roleProber {
		wait += 50 * time.Millisecond // the opener's mappings first
	}
	t := time.NewTimer(time.Until(p.start.Add(wait)))
	defer t.Stop()
	select {
	case <-t.C:
	case <-a.gone:
		return
	case <-e.ctx.Done():
		return
	}
	if a.hasDirect() {
		return // plain punching found one: no probing
	}
	e.log.Debug("birthday probing", "peer", a.peer.Key.String(), "role", p.role)
	if p.role == roleOpener {
		e.openAndHold(a, p)
	} else {
		e.probePorts(a, p)
	}
	if r := p.Result(); !r.Found {
		p.mu.Lock()
		p.result.Took = time.Since(p.start)
		p.mu.Unlock()
	}
}

// openAndHold opens the opener's sockets, pings the peer from each, and keeps
// the mappings open until a probe arrives or the prober must have given up.
func (e *Endpoint) openAndHold(a *attempt, p *Probe) {
	cfg := e.cfg.Birthday
	listen := cfg.ListenPacket
	if listen == nil {
		listen = (&net.ListenConfig{}).ListenPacket
	}
	targets := a.peer.reflexive4()
	ping := func(s *extraSocket) {
		for _, to := range targets {
			e.ping(a, route{sock: s, addr: to}, false)
		}
	}
	for range cfg.Sockets {
		c, err := listen(e.ctx, "udp4", "0.0.0.0:0")
		if err != nil {
			e.log.Warn("birthday probing: opening a socket", "opened", len(p.sockets()), "err", err)
			break
		}
		s := &extraSocket{conn: c, local: addrPort(c.LocalAddr())}
		if !p.add(s, e.readExtra) {
			c.Close()
			break
		}
		e.count(func(st *Stats) { st.BirthdaySockets++ })
		ping(s)
	}
	// Hold the mappings while the prober may still probe; NATs forget an
	// unanswered mapping after ~30 s, so ping again every 10 s.
	end := time.NewTimer(time.Until(p.start.Add(cfg.After + cfg.duration() + 2*time.Second)))
	defer end.Stop()
	refresh := time.NewTicker(10 * time.Second)
	defer refresh.Stop()
	for {
		select {
		case <-refresh.C:
			for _, s := range p.sockets() {
				ping(s)
			}
		case <-p.found:
			return
		case <-end.C:
			return
		case <-a.gone:
			return
		case <-e.ctx.Done():
			return
		}
	}
}

// probePorts sends pings to random ports of the peer's public addresses, at
// most Probes of them at Rate, until one is answered.
func (e *Endpoint) probePorts(a *attempt, p *Probe) {
	cfg := e.cfg.Birthday
	targets := a.peer.reflexive4()
	tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
	defer tick.Stop()
	tried := map[uint16]bool{}
	for _, t := range targets {
		tried[t.Port()] = true // plain punching pings those
	}
	began := time.Now()
	sent := 0
	for sent < cfg.Probes && len(tried) < 65535-1024 {
		select {
		case <-tick.C:
		case <-p.found:
			return
		case <-a.gone:
			return
		case <-e.ctx.Done():
			return
		}
		if a.hasDirect() {
			return
		}
		// Send what is due by now: a busy machine skips ticks, and every
		// probe missed is time to a direct path lost. At most maxBurst at once.
		before := sent
		due := min(int(time.Since(began).Seconds()*cfg.Rate)+1-sent, maxBurst, cfg.Probes-sent)
		for ; due > 0 && len(tried) < 65535-1024; due -= len(targets) {
			port := uint16(1024 + rand.IntN(65536-1024))
			for tried[port] {
				port = uint16(1024 + rand.IntN(65536-1024))
			}
			tried[port] = true
			for _, t := range targets {
				e.ping(a, route{addr: netip.AddrPortFrom(t.Addr(), port)}, false)
				sent++
			}
		}
		p.mu.Lock()
		p.result.Probes = sent
		p.mu.Unlock()
		e.count(func(st *Stats) { st.BirthdayProbes += uint64(sent - before) })
	}
	// The last probes may still be answered.
	late := time.NewTimer(time.Second)
	defer late.Stop()
	select {
	case <-late.C:
	case <-p.found:
	case <-a.gone:
	case <-e.ctx.Done():
	}
}

// maxBurst bounds the probes a late tick sends at once.
const maxBurst = 4

// readExtra reads one of the opener's sockets until it is closed.
func (e *Endpoint) readExtra(s *extraSocket) {
	buf := make([]byte, 2048)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		e.handlePacket(buf[:n], route{sock: s, addr: addrPort(from)})
	}
}

// hasDirect reports whether a direct path answered.
func (a *attempt) hasDirect() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.paths {
		if p.verified && p.kind() == Direct {
			return true
		}
	}
	return false
}

func (r ProbeResult) String() string {
	return fmt.Sprintf("%s: %d probes, found=%v after %v", r.Role, r.Probes, r.Found, r.Took.Round(time.Millisecond))
}

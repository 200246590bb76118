package punch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// CandidateKind says where a candidate address came from.
type CandidateKind string

const (
	Host      CandidateKind = "host"  // an address of the peer's own interface
	Reflexive CandidateKind = "srflx" // the peer's public address, as our STUN server saw it
	Relayed   CandidateKind = "relay" // a TURN allocation
)

// Candidate is an address where the peer may be reachable.
type Candidate struct {
	Addr netip.AddrPort `json:"addr"`
	Kind CandidateKind  `json:"kind"`
}

// Peer is everything signaling told us about the other side of one connect.
type Peer struct {
	Key        PublicKey
	Session    [8]byte // the connect id both sides got from signaling
	Candidates []Candidate
	// Start is when both sides begin probing (local clock); zero means now.
	Start time.Time
	// NAT is the peer's NAT type as it reported it (NATUnknown when empty).
	NAT NATType
}

// Path describes the path a session sends on. For a relayed path, Local is
// our relayed address and Remote the peer's.
type Path struct {
	Kind   PathKind       `json:"kind"`
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	RTT    time.Duration  `json:"rtt"`
}

// ErrNoPath is returned when no candidate answered within the punch window.
var ErrNoPath = errors.New("punch: no path (direct or relayed) answered within the punch window")

type pendingPing struct {
	to   route
	sent time.Time
}

type win struct {
	route route
	rtt   time.Duration
}

// attempt is one Connect in progress and, after it, the session's path
// state: pings keep being answered and sent on every path while the session
// lives, and the ladder picks the path for our sends.
type attempt struct {
	e      *Endpoint
	peer   Peer
	dialer bool
	vaddr  netip.AddrPort // what quic-go sees as the peer's address

	mu          sync.Mutex
	targets     []route
	pending     map[[12]byte]pendingPing
	learned     chan route // new routes to ping at once
	paths       map[route]*pathState
	active      *pathState
	lastIn      route // where the newest QUIC packet came from
	hasLastIn   bool
	activeSince time.Time
	steppedUpAt time.Time     // the last step up (flap damping)
	stepUpWait  time.Duration // the current step-up hysteresis
	live        bool          // a session runs: the ladder switches paths
	pathEvents  chan PathEvent

	won      chan win // verified paths, first first
	incoming chan *quic.Conn

	probe    *Probe        // birthday probing, when the pair needs it
	gone     chan struct{} // closed when the attempt is unregistered
	goneOnce sync.Once
}

// closeProbe ends birthday probing and closes its sockets.
func (a *attempt) closeProbe() {
	a.mu.Lock()
	p := a.probe
	a.mu.Unlock()
	if p != nil {
		p.close()
	}
}

func (e *Endpoint) register(peer Peer) (*attempt, error) {
	a := &attempt{
		e:          e,
		peer:       peer,
		dialer:     e.id.PublicKey().Less(peer.Key),
		vaddr:      newVirtualAddr(),
		pending:    map[[12]byte]pendingPing{},
		learned:    make(chan route, 16),
		paths:      map[route]*pathState{},
		pathEvents: make(chan PathEvent, 32),
		won:        make(chan win, 8),
		incoming:   make(chan *quic.Conn, 1),
		gone:       make(chan struct{}),
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	seen := map[route]bool{}
	ordered := orderCandidates(peer.Candidates)
	for _, c := range ordered {
		r := route{addr: c.Addr}
		if c.Kind == Relayed || seen[r] || !c.Addr.IsValid() {
			continue
		}
		seen[r] = true
		a.targets = append(a.targets, r)
	}
	for _, r := range relayRoutes(e.allocs, ordered) {
		if !seen[r] {
			seen[r] = true
			a.targets = append(a.targets, r)
		}
	}
	if _, busy := e.attempts[peer.Session]; busy {
		return nil, fmt.Errorf("punch: session %x is already connecting", peer.Session)
	}
	e.attempts[peer.Session] = a
	e.byVirtual[a.vaddr] = a
	return a, nil
}

// relayRoutes are the relayed paths: from each of our allocations to each
// relayed address of the peer (relay to relay always works through our
// relay's filter).
func relayRoutes(allocs []*allocation, cands []Candidate) []route {
	var out []route
	for _, al := range allocs {
		for _, c := range cands {
			if c.Kind == Relayed && c.Addr.IsValid() && c.Addr.Addr().Is4() == al.relayed.Addr().Is4() {
				out = append(out, route{via: al, addr: c.Addr})
			}
		}
	}
	return out
}

// peerRelayed is every relayed address of the peer known to the attempt:
// from signaling's punch and learned since (AddCandidates).
func (a *attempt) peerRelayed() []Candidate {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Candidate
	seen := map[netip.AddrPort]bool{}
	for _, c := range a.peer.Candidates {
		if c.Kind == Relayed && !seen[c.Addr] {
			seen[c.Addr] = true
			out = append(out, c)
		}
	}
	for _, t := range a.targets {
		if t.via != nil && !seen[t.addr] {
			seen[t.addr] = true
			out = append(out, Candidate{Addr: t.addr, Kind: Relayed})
		}
	}
	return out
}

// addRoutes makes new routes targets of the attempt and pings them at once.
func (a *attempt) addRoutes(routes []route) {
	for _, r := range routes {
		a.learn(r)
	}
}

// dropRoutes forgets the routes drop matches. A session that was sending on
// one moves to its best healthy path left.
func (a *attempt) dropRoutes(drop func(route) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.targets = slices.DeleteFunc(a.targets, drop)
	for r := range a.paths {
		if drop(r) {
			delete(a.paths, r)
		}
	}
	if a.active == nil || !drop(a.active.route) {
		return
	}
	now := time.Now()
	var best *pathState
	for _, p := range a.paths {
		if ok, _ := p.health(now, a.e.cfg.Ladder, time.Time{}); ok && (best == nil || better(p, best)) {
			best = p
		}
	}
	if best != nil {
		a.switchLocked(a.e, best, "relay allocation replaced", now)
	} else {
		a.active = nil // the ladder takes the next path that answers
	}
}

// AddCandidates tells the sessions with peer about new candidates of its
// (signaling's peer_updated: e.g. the relayed addresses of its renewed
// allocations); they are pinged at once and become paths when they answer.
func (e *Endpoint) AddCandidates(peer PublicKey, cands []Candidate) {
	e.mu.Lock()
	var atts []*attempt
	for _, a := range e.attempts {
		if keyEqual(a.peer.Key, peer) {
			atts = append(atts, a)
		}
	}
	allocs := append([]*allocation(nil), e.allocs...)
	e.mu.Unlock()
	routes := relayRoutes(allocs, cands)
	for _, c := range cands {
		if c.Kind != Relayed && c.Addr.IsValid() {
			routes = append(routes, route{addr: c.Addr})
		}
	}
	for _, a := range atts {
		a.addRoutes(routes)
	}
}

func (e *Endpoint) unregister(a *attempt) {
	e.mu.Lock()
	if e.attempts[a.peer.Session] == a {
		delete(e.attempts, a.peer.Session)
	}
	delete(e.byVirtual, a.vaddr)
	for r, x := range e.routes {
		if x == a {
			delete(e.routes, r)
		}
	}
	e.mu.Unlock()
	a.goneOnce.Do(func() { close(a.gone) })
	a.closeProbe()
}

func (e *Endpoint) attemptByVirtual(ap netip.AddrPort) *attempt {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byVirtual[ap]
}

// orderCandidates puts host candidates first (a LAN path is best), then
// reflexive ones, then relayed, IPv6 before IPv4 within a kind, keeping
// signaling's order otherwise.
func orderCandidates(cs []Candidate) []Candidate {
	rank := func(c Candidate) int {
		r := 0
		switch c.Kind {
		case Reflexive:
			r = 2
		case Relayed:
			r = 4
		}
		if c.Addr.Addr().Is4() {
			r++
		}
		return r
	}
	out := append([]Candidate(nil), cs...)
	// insertion sort: stable and the lists are short
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && rank(out[j]) < rank(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func (e *Endpoint) sendPing(a *attempt, to route) { e.ping(a, to, true) }

// ping sends a signed ping on to. A path tracked by the ladder records it
// for its loss window; a birthday probe does not (most never get an answer:
// the path is tracked once one does).
func (e *Endpoint) ping(a *attempt, to route, track bool) {
	txid := randomTxID()
	now := time.Now()
	a.mu.Lock()
	a.pending[txid] = pendingPing{to: to, sent: now}
	if track {
		ps := a.paths[to]
		if ps == nil {
			ps = &pathState{route: to}
			a.paths[to] = ps
		}
		ps.recordPing(txid, now, e.cfg.Ladder.LossWindow)
	}
	// Forget pings nobody will answer any more.
	if len(a.pending) > 256 {
		for id, pp := range a.pending {
			if now.Sub(pp.sent) > 10*time.Second {
				delete(a.pending, id)
			}
		}
	}
	a.mu.Unlock()
	p := probe{typ: probePing, session: a.peer.Session, sender: e.id.PublicKey(), txid: txid, sentUnix: now.UnixNano()}
	e.sendRoute(p.marshal(make([]byte, 0, probeMaxLen), e.id.private), to)
	e.count(func(s *Stats) { s.ProbesSent++ })
}

func (e *Endpoint) handleProbe(b []byte, src route) {
	p, err := parseProbe(b)
	if err != nil {
		if errors.Is(err, errBadSignature) {
			e.count(func(s *Stats) { s.DroppedBadSig++ })
		} else {
			e.count(func(s *Stats) { s.DroppedMalformed++ })
		}
		return
	}
	e.mu.Lock()
	a := e.attempts[p.session]
	if a != nil && keyEqual(a.peer.Key, p.sender) {
		// A signed probe proves this path leads to the peer: QUIC packets
		// arriving on it belong to the session.
		e.routes[src] = a
	}
	e.mu.Unlock()
	if a == nil || !keyEqual(a.peer.Key, p.sender) {
		e.count(func(s *Stats) { s.DroppedUnknownPeer++ })
		return
	}
	if src.sock != nil {
		// The peer's probe hit one of our birthday sockets: it is the path.
		a.mu.Lock()
		pr := a.probe
		a.mu.Unlock()
		if pr != nil {
			pr.answered(src.sock)
		}
	}
	switch p.typ {
	case probePing:
		pong := probe{typ: probePong, session: p.session, sender: e.id.PublicKey(), txid: p.txid, sentUnix: p.sentUnix, observed: src.addr}
		e.sendRoute(pong.marshal(make([]byte, 0, probeMaxLen), e.id.private), src)
		e.count(func(s *Stats) { s.PingsAnswered++ })
		a.learn(src)
	case probePong:
		now := time.Now()
		a.mu.Lock()
		pp, ok := a.pending[p.txid]
		var probed *Probe
		if ok && pp.to == src {
			delete(a.pending, p.txid)
			ps := a.paths[src]
			if ps == nil { // an answered birthday probe: a path from now on
				ps = &pathState{route: src}
				a.paths[src] = ps
				probed = a.probe
			}
			ps.recordPong(p.txid, pp.sent, now, e.cfg.Ladder.StaleAfter)
			a.evaluateLocked(e, now)
		}
		a.mu.Unlock()
		if probed != nil {
			probed.answered(nil)
		}
		if !ok || pp.to != src {
			e.count(func(s *Stats) { s.DroppedUnasked++ })
			return
		}
		select {
		case a.won <- win{route: src, rtt: now.Sub(pp.sent)}:
		default:
		}
	}
}

// learn adds a source that sent an authenticated ping, so it gets pinged
// (and, once it answers, can win) — peer-address learning.
func (a *attempt) learn(src route) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.targets {
		if t == src {
			return
		}
	}
	a.targets = append(a.targets, src)
	select {
	case a.learned <- src:
	default:
	}
}

func (a *attempt) snapshotTargets() []route {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]route(nil), a.targets...)
}

func (a *attempt) noteInbound(r route) {
	a.mu.Lock()
	a.lastIn, a.hasLastIn = r, true
	a.mu.Unlock()
}

// sendQUIC sends a packet of the session over the active path (before the
// ladder chose one: back where the peer's last packet came from).
func (a *attempt) sendQUIC(b []byte) {
	a.mu.Lock()
	var r route
	switch {
	case a.active != nil:
		r = a.active.route
	case a.hasLastIn:
		r = a.lastIn
	default:
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	a.e.sendRoute(b, r)
}

// activePath is the path our sends take.
func (a *attempt) activePath() (Path, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.active == nil {
		return Path{}, false
	}
	return a.e.pathOf(a.active), true
}

// Connect reaches peer over the best path that answers and opens a QUIC
// session over it. Direct candidates and, when the endpoint has TURN
// allocations (AllocateRelays), relayed paths are probed at once; a direct
// path is preferred, but once a relayed path answered Connect waits only
// Ladder.RelayGrace for a direct one: traffic starts on the relay and the
// session moves to direct when it answers. It returns ErrNoPath (wrapped)
// when nothing answered in the window.
func (e *Endpoint) Connect(ctx context.Context, peer Peer) (*Session, error) {
	a, err := e.register(peer)
	if err != nil {
		return nil, err
	}
	s, err := e.connect(ctx, a)
	if err != nil {
		e.unregister(a)
		return nil, err
	}
	return s, nil
}

func (e *Endpoint) connect(ctx context.Context, a *attempt) (*Session, error) {
	if d := time.Until(a.peer.Start); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	started := time.Now()
	window := e.startBirthday(a, started)
	punchCtx, cancel := context.WithTimeout(ctx, window)
	defer cancel()

	var (
		w        win
		relayWin *win
		grace    <-chan time.Time
		qc       *quic.Conn
	)
	gap := e.cfg.FirstRetry
	next := time.NewTimer(0)
	defer next.Stop()
punching:
	for {
		select {
		case <-next.C:
			for _, t := range a.snapshotTargets() {
				e.sendPing(a, t)
			}
			next.Reset(gap)
			gap = min(gap*3/2, e.cfg.MaxRetry)
		case src := <-a.learned:
			e.sendPing(a, src)
		case w = <-a.won:
			if w.route.kind() == Direct {
				break punching
			}
			if relayWin == nil {
				rw := w
				relayWin = &rw
				if e.cfg.Ladder.RelayGrace <= 0 {
					break punching
				}
				t := time.NewTimer(e.cfg.Ladder.RelayGrace)
				defer t.Stop()
				grace = t.C
			} else if w.route.kind().rank() < relayWin.route.kind().rank() {
				rw := w // a better rung of the relay (UDP before TCP before TLS)
				relayWin = &rw
			}
		case <-grace:
			w = *relayWin
			break punching
		case qc = <-a.incoming: // the peer won first and dialed us
			break punching
		case <-punchCtx.Done():
			if relayWin != nil {
				w = *relayWin
				break punching
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w (%v, %d candidates tried)", ErrNoPath, window, len(a.snapshotTargets()))
		case <-e.ctx.Done():
			return nil, net.ErrClosed
		}
	}
	a.mu.Lock()
	if qc == nil {
		a.active = a.paths[w.route]
	} else if a.hasLastIn {
		// The dialer chose this path (with its grace for direct): answer on it.
		a.active = a.paths[a.lastIn]
		if a.active == nil {
			a.active = &pathState{route: a.lastIn}
			a.paths[a.lastIn] = a.active
		}
		// Among relayed paths the rung is ours to choose (it is how we reach
		// our own allocation): take our best one that answered.
		if a.active.kind() != Direct {
			now := time.Now()
			for _, p := range a.paths {
				if ok, _ := p.health(now, e.cfg.Ladder, time.Time{}); ok && p.kind() != Direct && better(p, a.active) {
					a.active = p
				}
			}
		}
	}
	a.activeSince = time.Now()
	a.mu.Unlock()

	if qc == nil {
		hctx, cancel := context.WithTimeout(ctx, e.cfg.HandshakeTimeout)
		defer cancel()
		var err error
		if a.dialer {
			tlsConf := e.id.tlsConfig(func(k PublicKey) error {
				if !keyEqual(k, a.peer.Key) {
					return errors.New("peer presented the wrong key")
				}
				return nil
			})
			qc, err = e.tr.Dial(hctx, net.UDPAddrFromAddrPort(a.vaddr), tlsConf, e.quicConfig())
			if err != nil {
				return nil, fmt.Errorf("punch: QUIC handshake with %s: %w", w.route.addr, err)
			}
		} else {
			// Keep answering pings (the read loop does) until the dialer's handshake lands.
			select {
			case qc = <-a.incoming:
			case <-hctx.Done():
				return nil, fmt.Errorf("punch: path %s found but the peer did not open the session: %w", w.route.addr, hctx.Err())
			}
		}
	}
	a.mu.Lock()
	a.live = true
	if a.active == nil {
		a.evaluateLocked(e, time.Now())
	}
	a.mu.Unlock()
	// Drain the initial "first path" event: Connect's result reports it.
	for len(a.pathEvents) > 0 {
		<-a.pathEvents
	}
	s := newSession(e, a, qc)
	path := s.Path()
	e.log.Debug("session up", "peer", a.peer.Key.String(), "kind", string(path.Kind), "remote", path.Remote.String(), "after", time.Since(started))
	return s, nil
}

// acceptIncoming approves a QUIC client's key during the handshake: only a
// peer we are connecting to, and for which we are the listening side.
func (e *Endpoint) acceptIncoming(k PublicKey) error {
	if e.findListening(k) != nil {
		return nil
	}
	e.count(func(s *Stats) { s.RejectedHandshakes++ })
	return errors.New("unexpected peer key")
}

func (e *Endpoint) findListening(k PublicKey) *attempt {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, a := range e.attempts {
		if !a.dialer && keyEqual(a.peer.Key, k) {
			return a
		}
	}
	return nil
}

func (e *Endpoint) acceptLoop() {
	defer e.done.Done()
	for {
		qc, err := e.ln.Accept(e.ctx)
		if err != nil {
			return
		}
		k, err := certKey(qc.ConnectionState().TLS.PeerCertificates)
		var a *attempt
		if err == nil {
			a = e.findListening(k)
		}
		if a == nil {
			qc.CloseWithError(1, "unexpected peer")
			continue
		}
		select {
		case a.incoming <- qc:
		default:
			qc.CloseWithError(1, "duplicate session")
		}
	}
}

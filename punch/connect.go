package punch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
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
}

// Path describes the path a session runs over.
type Path struct {
	Kind   string         `json:"kind"` // "direct"
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	RTT    time.Duration  `json:"rtt"`
}

// ErrNoPath is returned when no candidate answered within the punch window.
var ErrNoPath = errors.New("punch: no direct path answered within the punch window")

type pendingPing struct {
	to   netip.AddrPort
	sent time.Time
}

type win struct {
	remote netip.AddrPort
	rtt    time.Duration
}

// attempt is one Connect in progress (and, after it, the session's probe
// responder: pings keep being answered while the session lives).
type attempt struct {
	peer   Peer
	dialer bool

	mu      sync.Mutex
	targets []netip.AddrPort
	pending map[[12]byte]pendingPing
	learned chan netip.AddrPort // new addresses to ping at once

	won      chan win // first verified path; buffered 1
	incoming chan *quic.Conn
}

func (e *Endpoint) register(peer Peer) (*attempt, error) {
	a := &attempt{
		peer:     peer,
		dialer:   e.id.PublicKey().Less(peer.Key),
		pending:  map[[12]byte]pendingPing{},
		learned:  make(chan netip.AddrPort, 16),
		won:      make(chan win, 1),
		incoming: make(chan *quic.Conn, 1),
	}
	seen := map[netip.AddrPort]bool{}
	for _, c := range orderCandidates(peer.Candidates) {
		if c.Kind == Relayed || seen[c.Addr] || !c.Addr.IsValid() {
			continue
		}
		seen[c.Addr] = true
		a.targets = append(a.targets, c.Addr)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, busy := e.attempts[peer.Session]; busy {
		return nil, fmt.Errorf("punch: session %x is already connecting", peer.Session)
	}
	e.attempts[peer.Session] = a
	return a, nil
}

func (e *Endpoint) unregister(a *attempt) {
	e.mu.Lock()
	if e.attempts[a.peer.Session] == a {
		delete(e.attempts, a.peer.Session)
	}
	e.mu.Unlock()
}

// orderCandidates puts host candidates first (a LAN path is best), then
// reflexive ones, IPv6 before IPv4 within a kind, keeping signaling's order otherwise.
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

func (e *Endpoint) sendPing(a *attempt, to netip.AddrPort) {
	txid := randomTxID()
	now := time.Now()
	a.mu.Lock()
	a.pending[txid] = pendingPing{to: to, sent: now}
	a.mu.Unlock()
	p := probe{typ: probePing, session: a.peer.Session, sender: e.id.PublicKey(), txid: txid, sentUnix: now.UnixNano()}
	e.send(p.marshal(make([]byte, 0, probeMaxLen), e.id.private), to)
	e.count(func(s *Stats) { s.ProbesSent++ })
}

func (e *Endpoint) handleProbe(b []byte, src netip.AddrPort) {
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
	e.mu.Unlock()
	if a == nil || !keyEqual(a.peer.Key, p.sender) {
		e.count(func(s *Stats) { s.DroppedUnknownPeer++ })
		return
	}
	switch p.typ {
	case probePing:
		pong := probe{typ: probePong, session: p.session, sender: e.id.PublicKey(), txid: p.txid, sentUnix: p.sentUnix, observed: src}
		e.send(pong.marshal(make([]byte, 0, probeMaxLen), e.id.private), src)
		e.count(func(s *Stats) { s.PingsAnswered++ })
		a.learn(src)
	case probePong:
		a.mu.Lock()
		pp, ok := a.pending[p.txid]
		if ok && pp.to == src {
			delete(a.pending, p.txid)
		}
		a.mu.Unlock()
		if !ok || pp.to != src {
			e.count(func(s *Stats) { s.DroppedUnasked++ })
			return
		}
		select {
		case a.won <- win{remote: src, rtt: time.Since(pp.sent)}:
		default: // a path already won
		}
	}
}

// learn adds a source that sent an authenticated ping, so it gets pinged
// (and, once it answers, can win) — peer-address learning.
func (a *attempt) learn(src netip.AddrPort) {
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

func (a *attempt) snapshotTargets() []netip.AddrPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]netip.AddrPort(nil), a.targets...)
}

// Connect punches a direct path to peer and opens a QUIC session over it.
// It returns ErrNoPath (wrapped) when no candidate answered in the window.
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
	punchCtx, cancel := context.WithTimeout(ctx, e.cfg.PunchWindow)
	defer cancel()

	var (
		w  win
		qc *quic.Conn
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
			break punching
		case qc = <-a.incoming: // the peer won first and dialed us
			w.remote = addrPort(qc.RemoteAddr())
			break punching
		case <-punchCtx.Done():
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w (%v, %d candidates tried)", ErrNoPath, e.cfg.PunchWindow, len(a.snapshotTargets()))
		case <-e.ctx.Done():
			return nil, net.ErrClosed
		}
	}

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
			qc, err = e.tr.Dial(hctx, net.UDPAddrFromAddrPort(w.remote), tlsConf, e.quicConfig())
			if err != nil {
				return nil, fmt.Errorf("punch: QUIC handshake with %s: %w", w.remote, err)
			}
		} else {
			// Keep answering pings (the read loop does) until the dialer's handshake lands.
			select {
			case qc = <-a.incoming:
			case <-hctx.Done():
				return nil, fmt.Errorf("punch: path %s found but the peer did not open the session: %w", w.remote, hctx.Err())
			}
		}
	}
	path := Path{Kind: "direct", Local: e.LocalAddr(), Remote: addrPort(qc.RemoteAddr()), RTT: w.rtt}
	e.log.Debug("direct session up", "peer", a.peer.Key.String(), "remote", path.Remote.String(), "after", time.Since(started))
	return newSession(e, a, qc, path), nil
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

package punch

import (
	"fmt"
	"net/netip"
	"time"
)

// The path ladder. A session may reach its peer over several paths: direct
// (the punched UDP path) and, through TURN, from each of our allocations
// (over UDP, TCP or TLS to the server) to each of the peer's relayed
// addresses. Every path carries signed pings about four times a second; a
// pong echoes its ping's timestamp, so the newest echoed timestamp says when
// our packets last made it across and back on that path (reference note 004's
// timestamp echo). Each side picks the path for its own sends on its own:
//
//   - step down when the active path's newest echo is older than StaleAfter
//     (default 1.5 s) or more than MaxLoss (30 %) of the last pings on it went
//     unanswered: direct → relay over UDP → relay over TCP → relay over TLS;
//   - step up when a better path has been healthy for StepUpAfter (default
//     2 s): hysteresis, so a flaky direct path does not flap; leaving a path
//     within 30 s of stepping up to it doubles that wait (up to 8×).
//
// Packets arriving on any path of the session are accepted, so both sides
// need not agree on the path; quic-go sees one stable virtual address
// (virtualConn) and its streams never notice a switch.

// PathKind names a rung of the ladder, best first.
type PathKind string

const (
	Direct   PathKind = "direct"
	RelayUDP PathKind = "relay-udp" // through our TURN allocation, reached over UDP
	RelayTCP PathKind = "relay-tcp" // ... over TCP
	RelayTLS PathKind = "relay-tls" // ... over TLS (networks that allow only 443/TLS)
)

func (k PathKind) rank() int {
	switch k {
	case Direct:
		return 0
	case RelayUDP:
		return 1
	case RelayTCP:
		return 2
	}
	return 3
}

// route is one way to the peer: our UDP socket (via nil) or one of our TURN
// allocations, to the peer's address (its real one, or its relayed address).
type route struct {
	via  *allocation  // through a TURN allocation
	sock *extraSocket // direct, from one of birthday probing's sockets
	addr netip.AddrPort
}

func (r route) kind() PathKind {
	if r.via == nil {
		return Direct
	}
	return r.via.transport.kind()
}

func (r route) local(e *Endpoint) netip.AddrPort {
	switch {
	case r.via != nil:
		return r.via.relayed
	case r.sock != nil:
		return r.sock.local
	}
	return e.LocalAddr()
}

// LadderConfig tunes path liveness and switching.
type LadderConfig struct {
	// PingEvery is the gap between liveness pings on each known path.
	PingEvery time.Duration
	// StaleAfter steps down from a path whose newest echo is older.
	StaleAfter time.Duration
	// MaxLoss steps down from a path losing more of its last LossWindow pings.
	MaxLoss    float64
	LossWindow int
	// StepUpAfter is how long a better path must stay healthy before traffic
	// moves back to it.
	StepUpAfter time.Duration
	// RelayGrace is how long Connect waits, once a relayed path answered,
	// for a direct path before starting on the relay.
	RelayGrace time.Duration
}

// DefaultLadder is reference note 004's thresholds with 30 % loss from note 000.
func DefaultLadder() LadderConfig {
	return LadderConfig{
		PingEvery:   250 * time.Millisecond,
		StaleAfter:  1500 * time.Millisecond,
		MaxLoss:     0.3,
		LossWindow:  20,
		StepUpAfter: 2 * time.Second,
		RelayGrace:  300 * time.Millisecond,
	}
}

// PathEvent is a switch of the path a session sends on.
type PathEvent struct {
	Path   Path      `json:"path"`
	From   *Path     `json:"from,omitempty"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

type pingRecord struct {
	txid     [12]byte
	sent     time.Time
	answered bool
}

// pathState is what the ladder knows about one route.
type pathState struct {
	route
	verified     bool // a pong signed by the peer came back on it
	wasActive    bool // the session has sent on it
	lastEcho     time.Time
	rtt          time.Duration
	window       []pingRecord
	healthySince time.Time
}

func (p *pathState) recordPing(txid [12]byte, sent time.Time, n int) {
	p.window = append(p.window, pingRecord{txid: txid, sent: sent})
	if len(p.window) > n {
		p.window = p.window[len(p.window)-n:]
	}
}

func (p *pathState) recordPong(txid [12]byte, sent, now time.Time, staleAfter time.Duration) {
	if p.verified && sent.Sub(p.lastEcho) > staleAfter {
		// The path is back after an outage: judge its loss from now on, not
		// by the pings the outage swallowed.
		keep := p.window[:0]
		for _, r := range p.window {
			if !r.sent.Before(sent) {
				keep = append(keep, r)
			}
		}
		p.window = keep
	}
	for i := range p.window {
		if p.window[i].txid == txid {
			p.window[i].answered = true
		}
	}
	p.verified = true
	if sent.After(p.lastEcho) {
		p.lastEcho = sent
	}
	p.rtt = now.Sub(sent)
}

// loss is the share of unanswered pings among those sent since `since` and
// old enough to judge.
func (p *pathState) loss(now, since time.Time) (float64, int) {
	grace := 2*p.rtt + 200*time.Millisecond
	var judged, lost int
	for _, r := range p.window {
		if now.Sub(r.sent) < grace || r.sent.Before(since) {
			continue
		}
		judged++
		if !r.answered {
			lost++
		}
	}
	if judged == 0 {
		return 0, 0
	}
	return float64(lost) / float64(judged), judged
}

// health says whether the path is usable now, and if not why. Loss counts
// the pings sent since `since`: for the active path, since it became active
// (losses from before, such as probes sent while punching or the tail of an
// earlier outage, do not make it step down again at the first lost ping);
// for a path to step up to, the whole window (a stricter test).
func (p *pathState) health(now time.Time, cfg LadderConfig, since time.Time) (bool, string) {
	if !p.verified {
		return false, "no answer"
	}
	if age := now.Sub(p.lastEcho); age > cfg.StaleAfter {
		return false, fmt.Sprintf("echo stale %.1fs", age.Seconds())
	}
	if l, n := p.loss(now, since); n >= cfg.LossWindow/2 && l > cfg.MaxLoss {
		return false, fmt.Sprintf("loss %.0f%%", 100*l)
	}
	return true, ""
}

// better orders paths: ladder rank, then RTT.
func better(a, b *pathState) bool {
	if ra, rb := a.kind().rank(), b.kind().rank(); ra != rb {
		return ra < rb
	}
	return a.rtt < b.rtt
}

func (e *Endpoint) pathOf(p *pathState) Path {
	return Path{Kind: p.kind(), Local: p.local(e), Remote: p.addr, RTT: p.rtt}
}

// evaluate runs the ladder once: called after every ping round and pong.
// The caller holds a.mu.
func (a *attempt) evaluateLocked(e *Endpoint, now time.Time) {
	cfg := e.cfg.Ladder
	var best *pathState
	for _, p := range a.paths {
		ok, _ := p.health(now, cfg, time.Time{})
		if !ok {
			p.healthySince = time.Time{}
			continue
		}
		if p.healthySince.IsZero() {
			p.healthySince = now
		}
		if best == nil || better(p, best) {
			best = p
		}
	}
	if !a.live || best == nil || best == a.active {
		return
	}
	switch {
	case a.active == nil:
		a.switchLocked(e, best, "first path", now)
	case !a.active.verified && now.Sub(a.activeSince) < cfg.StaleAfter:
		// The path the peer's handshake came in on, not yet answered to
		// our own pings: give it the time a live path gets.
	default:
		if ok, why := a.active.health(now, cfg, a.activeSince); !ok {
			a.switchLocked(e, best, why, now)
			return
		}
		// Step up only to a strictly better rung that stayed healthy. A path
		// the session never used (found late, e.g. by birthday probing) has no
		// outage history to be wary of: it is taken at its first echo (should
		// it fail at once, it has been active and the damping applies).
		wait := a.stepUpAfter(cfg)
		if !best.wasActive {
			wait = 0
		}
		if best.kind().rank() < a.active.kind().rank() && now.Sub(best.healthySince) >= wait {
			a.switchLocked(e, best, fmt.Sprintf("%s healthy for %v", best.kind(), wait), now)
		}
	}
}

// flapWindow: leaving a path within this long of stepping up to it counts
// as a flap, and doubles the time the next step up waits (up to maxStepUp×).
const (
	flapWindow = 30 * time.Second
	maxStepUp  = 8
)

func (a *attempt) stepUpAfter(cfg LadderConfig) time.Duration {
	if a.stepUpWait < cfg.StepUpAfter {
		return cfg.StepUpAfter
	}
	return a.stepUpWait
}

func (a *attempt) switchLocked(e *Endpoint, to *pathState, reason string, now time.Time) {
	cfg := e.cfg.Ladder
	if a.active != nil {
		switch up := to.kind().rank() < a.active.kind().rank(); {
		case up:
			a.steppedUpAt = now
		case now.Sub(a.steppedUpAt) < flapWindow:
			a.stepUpWait = min(2*a.stepUpAfter(cfg), maxStepUp*cfg.StepUpAfter)
		default:
			a.stepUpWait = cfg.StepUpAfter
		}
	}
	ev := PathEvent{Path: e.pathOf(to), Reason: reason, Time: now}
	if a.active != nil {
		from := e.pathOf(a.active)
		ev.From = &from
	}
	a.active, a.activeSince = to, ev.Time
	to.wasActive = true
	e.log.Debug("path switch", "peer", a.peer.Key.String(), "to", ev.Path.Kind, "remote", ev.Path.Remote.String(), "reason", reason)
	select {
	case a.pathEvents <- ev:
	default:
	}
}

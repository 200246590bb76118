package punch

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// ladderSim drives the ladder of one attempt with synthetic time: every
// PingEvery each path gets a ping, answered 1 ms later when its path is up.
type ladderSim struct {
	t      *testing.T
	e      *Endpoint
	a      *attempt
	direct *pathState
	relay  *pathState
	now    time.Time
}

func newLadderSim(t *testing.T) *ladderSim {
	e := newEndpoint(t)
	a := &attempt{e: e, paths: map[route]*pathState{}, pathEvents: make(chan PathEvent, 64), live: true}
	alloc := &allocation{transport: relayUDP, relayed: netip.MustParseAddrPort("192.0.2.7:50000")}
	d := route{addr: netip.MustParseAddrPort("198.51.100.1:4000")}
	r := route{via: alloc, addr: netip.MustParseAddrPort("192.0.2.7:50001")}
	s := &ladderSim{t: t, e: e, a: a, direct: &pathState{route: d}, relay: &pathState{route: r}, now: time.Unix(1e9, 0)}
	a.paths[d], a.paths[r] = s.direct, s.relay
	return s
}

// run advances d with the direct path up or down (the relay stays up) and
// returns the switches, with the time since the start of this run.
func (s *ladderSim) run(d time.Duration, directUp bool) (evs []PathEvent, after []time.Duration) {
	start := s.now
	every := s.e.cfg.Ladder.PingEvery
	for end := s.now.Add(d); s.now.Before(end); s.now = s.now.Add(every) {
		s.a.mu.Lock()
		for _, p := range []*pathState{s.direct, s.relay} {
			id := randomTxID()
			p.recordPing(id, s.now, s.e.cfg.Ladder.LossWindow)
			if p == s.relay || directUp {
				p.recordPong(id, s.now, s.now.Add(time.Millisecond), s.e.cfg.Ladder.StaleAfter)
			}
		}
		s.a.evaluateLocked(s.e, s.now.Add(time.Millisecond))
		s.a.mu.Unlock()
		for len(s.a.pathEvents) > 0 {
			ev := <-s.a.pathEvents
			evs = append(evs, ev)
			after = append(after, ev.Time.Sub(start))
		}
	}
	return evs, after
}

func (s *ladderSim) expectOne(evs []PathEvent, after []time.Duration, kind PathKind, lo, hi time.Duration, reason string) {
	s.t.Helper()
	if len(evs) != 1 {
		s.t.Fatalf("got %d switches %+v, want one to %s", len(evs), evs, kind)
	}
	if evs[0].Path.Kind != kind || after[0] < lo || after[0] > hi || !strings.Contains(evs[0].Reason, reason) {
		s.t.Fatalf("switch to %s after %v (%q), want %s within [%v, %v] with reason %q", evs[0].Path.Kind, after[0], evs[0].Reason, kind, lo, hi, reason)
	}
}

func TestLadderStepsDownOnStaleEchoAndUpWithHysteresis(t *testing.T) {
	s := newLadderSim(t)
	evs, after := s.run(3*time.Second, true)
	s.expectOne(evs, after, Direct, 0, 10*time.Millisecond, "first path")

	// Cut: the echo goes stale 1.5 s after the last answered ping (one ping
	// period before the cut).
	evs, after = s.run(5*time.Second, false)
	s.expectOne(evs, after, RelayUDP, 1250*time.Millisecond, 1300*time.Millisecond, "echo stale")

	// Repair: back up once direct has been healthy for 2 s (the pings the
	// outage swallowed do not count against it).
	evs, after = s.run(10*time.Second, true)
	s.expectOne(evs, after, Direct, 2*time.Second, 2300*time.Millisecond, "healthy for 2s")
	firstUp := after[0]

	// A second cut right after: a flap. The next step up waits twice as long.
	evs, _ = s.run(3*time.Second, false)
	if len(evs) != 1 || evs[0].Path.Kind != RelayUDP {
		t.Fatalf("second cut: %+v", evs)
	}
	evs, after = s.run(15*time.Second, true)
	s.expectOne(evs, after, Direct, firstUp+2*time.Second, firstUp+2300*time.Millisecond, "healthy for 4s")
}

func TestLadderStepsDownOnLoss(t *testing.T) {
	s := newLadderSim(t)
	s.run(6*time.Second, true) // a full loss window of answered pings
	// Every other ping lost: the echo stays fresh (250–500 ms old) but the
	// loss passes 30 % as the window fills.
	var evs []PathEvent
	for i := 0; i < 40 && len(evs) == 0; i++ {
		e, _ := s.run(250*time.Millisecond, i%2 == 0)
		evs = append(evs, e...)
	}
	if len(evs) != 1 || evs[0].Path.Kind != RelayUDP || !strings.HasPrefix(evs[0].Reason, "loss ") {
		t.Fatalf("want one step down to the relay for loss, got %+v", evs)
	}
}

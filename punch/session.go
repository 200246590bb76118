package punch

import (
	"context"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Session is an encrypted, authenticated QUIC session with one peer: reliable
// streams and unreliable datagrams (RFC 9221).
type Session struct {
	e    *Endpoint
	a    *attempt
	qc   *quic.Conn
	once sync.Once
}

func newSession(e *Endpoint, a *attempt, qc *quic.Conn) *Session {
	s := &Session{e: e, a: a, qc: qc}
	go func() {
		<-qc.Context().Done()
		s.release()
	}()
	go s.keepPaths()
	return s
}

// keepPaths pings the paths of the session while it lives and runs the
// ladder after each round. Every PingEvery: the active path and the verified
// paths above it (a step up needs them continuously healthy); every second
// round the other verified paths (the fallbacks: at 500 ms their newest echo
// stays well inside StaleAfter); every fourth round every candidate (a direct
// path that opens late, or comes back after an outage, is found).
func (s *Session) keepPaths() {
	e, a := s.e, s.a
	t := time.NewTicker(e.cfg.Ladder.PingEvery)
	defer t.Stop()
	round := 0
	for {
		select {
		case <-s.qc.Context().Done():
			return
		case <-e.ctx.Done():
			return
		case r := <-a.learned:
			e.sendPing(a, r)
		case <-t.C:
			round++
			a.mu.Lock()
			due := map[route]bool{}
			if round%4 == 0 {
				for _, r := range a.targets {
					due[r] = true
				}
			}
			for r, p := range a.paths {
				switch {
				case !p.verified:
				case p == a.active, a.active == nil, better(p, a.active) && p.kind() != a.active.kind(), round%2 == 0:
					due[r] = true
				}
			}
			a.mu.Unlock()
			for r := range due {
				e.sendPing(a, r)
			}
			a.mu.Lock()
			a.evaluateLocked(e, time.Now())
			a.mu.Unlock()
		}
	}
}

// PathEvents reports every switch of the path our sends take, with its
// reason. Events are dropped when nobody reads (the buffer holds 32).
func (s *Session) PathEvents() <-chan PathEvent { return s.a.pathEvents }

// PeerKey is the authenticated key of the other side.
func (s *Session) PeerKey() PublicKey { return s.a.peer.Key }

// Path is the path in use, with the session's current smoothed RTT.
func (s *Session) Path() Path {
	p, _ := s.a.activePath()
	if rtt := s.qc.ConnectionStats().SmoothedRTT; rtt > 0 {
		p.RTT = rtt
	}
	return p
}

// OpenStream opens a reliable, ordered byte stream to the peer.
func (s *Session) OpenStream(ctx context.Context) (*Stream, error) {
	st, err := s.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return &Stream{st: st}, nil
}

// AcceptStream waits for the peer to open a stream.
func (s *Session) AcceptStream(ctx context.Context) (*Stream, error) {
	st, err := s.qc.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &Stream{st: st}, nil
}

// SendDatagram sends an unreliable datagram (no retransmission, no ordering).
func (s *Session) SendDatagram(b []byte) error { return s.qc.SendDatagram(b) }

// ReceiveDatagram waits for the next datagram.
func (s *Session) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	return s.qc.ReceiveDatagram(ctx)
}

// Done is closed when the session ends, for whatever reason.
func (s *Session) Done() <-chan struct{} { return s.qc.Context().Done() }

// Err says why the session ended (nil while it runs).
func (s *Session) Err() error { return context.Cause(s.qc.Context()) }

// Close ends the session.
func (s *Session) Close() error {
	err := s.qc.CloseWithError(0, "closed")
	s.release()
	return err
}

func (s *Session) release() { s.once.Do(func() { s.e.unregister(s.a) }) }

// Stream is a reliable byte stream within a session.
type Stream struct{ st *quic.Stream }

func (s *Stream) Read(p []byte) (int, error)  { return s.st.Read(p) }
func (s *Stream) Write(p []byte) (int, error) { return s.st.Write(p) }

// Close ends the sending side: the peer reads EOF after the data written so
// far. Reading continues until the peer closes its side.
func (s *Stream) Close() error { return s.st.Close() }

// Abort abandons the stream in both directions; unsent data is dropped.
func (s *Stream) Abort() {
	s.st.CancelWrite(1)
	s.st.CancelRead(1)
}

// Probe is the session's birthday probing for a direct path through a
// symmetric NAT (nil when the pair does not probe). Probing runs on after
// Connect returned on the relay; the session moves to the direct path it
// finds (a PathEvents switch).
func (s *Session) Probe() *Probe {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	return s.a.probe
}

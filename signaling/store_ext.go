package signaling

import (
	"context"
	"errors"
	"sync"
	"time"
)

// MultiDeliverer is implemented by a Store that can hand one frame to many
// peers at once, for room broadcasts: the NATS store (signaling/natsstore)
// sends one message per node holding some of them instead of one per peer.
// It returns how many peers the frame was handed to. The server uses it for
// every room event and room-wide signal when the store implements it.
type MultiDeliverer interface {
	DeliverMany(ctx context.Context, peerIDs []string, frame []byte) int
}

// ReplaceNotifier is implemented by a Store in which a peer attached on
// this node can attach on another one (it resumed there) while its old
// connection here still lingers, as after a network change. It is Attach
// plus replaced, called once from its own goroutine when that happens; the
// server then closes the old connection as replaced without taking the peer
// offline, as it does when a peer resumes on the same node.
type ReplaceNotifier interface {
	AttachReplaceable(peerID string, deliver func(frame []byte), replaced func()) (detach func())
}

// ErrUnavailable is wrapped by Store errors that mean the shared state could
// not be reached (the NATS store returns it while NATS is down); handlers
// can tell peers so instead of "not found".
var ErrUnavailable = errors.New("shared state (NATS) unreachable")

// SessionTTL is how long a punch session can be reported on after connect
// scheduled it.
const SessionTTL = 5 * time.Minute

// Session is a punch session scheduled by connect: its two peers (A is the
// initiator) and the NAT types they had registered, which label the
// connect_result metrics.
type Session struct {
	ID       string    `json:"id"`
	A        string    `json:"a"`
	B        string    `json:"b"`
	NATA     string    `json:"nat_a"`
	NATB     string    `json:"nat_b"`
	Created  time.Time `json:"created"`
	Reported bool      `json:"reported,omitempty"`
}

// SessionStore is implemented by a Store that shares punch sessions between
// nodes, so a connect_result is accepted on whichever node the reporting
// peer is connected to. Without it the server keeps sessions in memory on
// the node that scheduled them.
type SessionStore interface {
	// PutSessions stores new sessions for SessionTTL.
	PutSessions(ctx context.Context, ss []*Session) error
	// ReportSession marks session id as reported by peer `by` and returns
	// it; first is true for the first report only, on any node. It returns
	// ErrNotFound when the session is unknown, expired, or not by's.
	ReportSession(ctx context.Context, id, by string) (ss *Session, first bool, err error)
}

// localSessions is the SessionStore of a single node.
type localSessions struct {
	mu       sync.Mutex
	sessions map[string]*Session
}

func newLocalSessions() *localSessions {
	return &localSessions{sessions: map[string]*Session{}}
}

func (l *localSessions) PutSessions(_ context.Context, ss []*Session) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range ss {
		c := *s
		l.sessions[s.ID] = &c
		time.AfterFunc(SessionTTL, func() {
			l.mu.Lock()
			delete(l.sessions, c.ID)
			l.mu.Unlock()
		})
	}
	return nil
}

func (l *localSessions) ReportSession(_ context.Context, id, by string) (*Session, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sessions[id]
	if s == nil || (s.A != by && s.B != by) {
		return nil, false, ErrNotFound
	}
	first := !s.Reported
	s.Reported = true
	c := *s
	return &c, first, nil
}

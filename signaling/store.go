package signaling

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// Store is the state that several signaling nodes would share: rooms (with
// their join codes), presence (peer records) and delivery of frames to peers.
// The in-memory implementation is the embedded default; a NATS implementation
// (JetStream KV for rooms/peers with revision-checked updates, core subjects
// "rzv.peer.<id>" for delivery) fits the same shape.
//
// Values returned by a Store are immutable snapshots shared with other callers:
// never modify them; change state only through the update functions, which
// give fn a private copy and store it only if no one else changed the record
// in between (compare-and-set on Rev, retried by the store).
type Store interface {
	// CreateRoom stores r if neither r.ID nor r.Code is in use (compare-and-set
	// on absence). It returns ErrRoomExists or ErrCodeTaken otherwise.
	CreateRoom(ctx context.Context, r *Room) error
	// Room returns the room with id, or ErrNotFound.
	Room(ctx context.Context, id string) (*Room, error)
	// RoomByCode resolves a join code, or ErrNotFound.
	RoomByCode(ctx context.Context, code string) (*Room, error)
	// UpdateRoom applies fn to a copy of the current room and stores it. If fn
	// sets Deleted the room and its code are removed. An error from fn aborts.
	UpdateRoom(ctx context.Context, id string, fn func(r *Room) error) (*Room, error)
	// ListRooms pages through public rooms (filtered by game when not empty)
	// in creation order; cursor is opaque, "" starts at the beginning.
	ListRooms(ctx context.Context, game, cursor string, limit int) (rooms []*Room, next string, err error)

	// PutPeer stores a new peer record.
	PutPeer(ctx context.Context, p *PeerRecord) error
	// Peer returns a peer record, or ErrNotFound.
	Peer(ctx context.Context, id string) (*PeerRecord, error)
	// UpdatePeer applies fn to a copy of the record and stores it.
	UpdatePeer(ctx context.Context, id string, fn func(p *PeerRecord) error) (*PeerRecord, error)
	// DeletePeer removes a peer record.
	DeletePeer(ctx context.Context, id string) error

	// Attach makes this node the receiver of frames for peerID until detach is
	// called. deliver must not block.
	Attach(peerID string, deliver func(frame []byte)) (detach func())
	// Deliver hands frame to wherever peerID is attached; ErrNotFound if nowhere.
	Deliver(ctx context.Context, peerID string, frame []byte) error
}

// Store errors.
var (
	ErrNotFound   = errors.New("not found")
	ErrRoomExists = errors.New("room id in use")
	ErrCodeTaken  = errors.New("join code in use")
)

// Room is a room record.
type Room struct {
	Rev       uint64
	ID        string
	Code      string
	Name      string
	Game      string
	Capacity  int
	Public    bool
	Password  string // stored as a SHA-256 hex digest, never plain
	Host      string
	Metadata  json.RawMessage
	Members   []Member
	CreatedAt time.Time
	// EmptySince is set while the room has no members; the room is removed
	// once it has been empty for the resume grace period.
	EmptySince time.Time
	Deleted    bool
}

// Member is one room member.
type Member struct {
	PeerID   string
	JoinedAt time.Time
}

// HasMember reports whether id is a member.
func (r *Room) HasMember(id string) bool {
	return slices.ContainsFunc(r.Members, func(m Member) bool { return m.PeerID == id })
}

func (r *Room) clone() *Room {
	c := *r
	c.Members = slices.Clone(r.Members)
	return &c
}

// Info is the wire form.
func (r *Room) Info() client.RoomInfo {
	return client.RoomInfo{
		ID: r.ID, Code: r.Code, Name: r.Name, Game: r.Game, Capacity: r.Capacity,
		Members: len(r.Members), Public: r.Public, HasPass: r.Password != "", Host: r.Host,
		Metadata: r.Metadata, CreatedAt: r.CreatedAt.UnixMilli(),
	}
}

// PeerRecord is a peer's presence record.
type PeerRecord struct {
	Rev         uint64
	ID          string
	Name        string
	Game        string
	PublicKey   string
	Candidates  []client.Candidate
	Reflexive   string
	NAT         *client.NATReport
	RTT         time.Duration
	ResumeToken string // secret part only
	PeerToken   string // full token
	Rooms       []string
	// Online is false between a lost connection and resume or expiry.
	Online bool
	// OfflineSince is when the connection was lost.
	OfflineSince time.Time
	// RoomClaim and NameClaim come from the join token that admitted the peer.
	RoomClaim string
	Admin     bool
}

func (p *PeerRecord) clone() *PeerRecord {
	c := *p
	c.Candidates = slices.Clone(p.Candidates)
	c.Rooms = slices.Clone(p.Rooms)
	return &c
}

// Info is what other peers see.
func (p *PeerRecord) Info() client.PeerInfo {
	return client.PeerInfo{
		ID: p.ID, Name: p.Name, PublicKey: p.PublicKey, Candidates: p.Candidates,
		Reflexive: p.Reflexive, NAT: p.NAT, RTTMS: float64(p.RTT.Microseconds()) / 1000,
	}
}

// memStore is the in-memory Store.
type memStore struct {
	mu     sync.RWMutex
	rooms  map[string]*Room
	codes  map[string]string
	seq    uint64
	order  []orderEntry // rooms in creation order, compacted lazily
	peers  map[string]*PeerRecord
	sinkMu sync.RWMutex
	sinks  map[string]*sink
}

type sink struct{ deliver func([]byte) }

type orderEntry struct {
	seq uint64
	id  string
}

// NewMemoryStore returns the in-memory Store used when Options.Store is nil.
func NewMemoryStore() Store {
	return &memStore{
		rooms: map[string]*Room{}, codes: map[string]string{},
		peers: map[string]*PeerRecord{}, sinks: map[string]*sink{},
	}
}

func (s *memStore) CreateRoom(_ context.Context, r *Room) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rooms[r.ID]; ok {
		return ErrRoomExists
	}
	if _, ok := s.codes[r.Code]; ok {
		return ErrCodeTaken
	}
	r = r.clone()
	r.Rev = 1
	s.rooms[r.ID] = r
	s.codes[r.Code] = r.ID
	s.seq++
	s.order = append(s.order, orderEntry{s.seq, r.ID})
	return nil
}

func (s *memStore) Room(_ context.Context, id string) (*Room, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if r, ok := s.rooms[id]; ok {
		return r, nil
	}
	return nil, ErrNotFound
}

func (s *memStore) RoomByCode(_ context.Context, code string) (*Room, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if id, ok := s.codes[code]; ok {
		return s.rooms[id], nil
	}
	return nil, ErrNotFound
}

func (s *memStore) UpdateRoom(_ context.Context, id string, fn func(*Room) error) (*Room, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.rooms[id]
	if !ok {
		return nil, ErrNotFound
	}
	next := cur.clone()
	if err := fn(next); err != nil {
		return nil, err
	}
	next.Rev = cur.Rev + 1
	if next.Deleted {
		delete(s.rooms, id)
		delete(s.codes, cur.Code)
		if len(s.order) > 2*len(s.rooms)+64 {
			s.compactLocked()
		}
		return next, nil
	}
	s.rooms[id] = next
	return next, nil
}

func (s *memStore) compactLocked() {
	live := s.order[:0]
	for _, e := range s.order {
		if _, ok := s.rooms[e.id]; ok {
			live = append(live, e)
		}
	}
	s.order = live
}

func (s *memStore) ListRooms(_ context.Context, game, cursor string, limit int) ([]*Room, string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	start := 0
	if cursor != "" {
		// The cursor is the creation sequence of the last room returned.
		after, err := strconv.ParseUint(cursor, 10, 64)
		if err != nil {
			return nil, "", fmt.Errorf("bad cursor %q", cursor)
		}
		start = sort.Search(len(s.order), func(i int) bool { return s.order[i].seq > after })
	}
	var out []*Room
	last := uint64(0)
	for i := start; i < len(s.order); i++ {
		r, ok := s.rooms[s.order[i].id]
		if !ok || !r.Public || (game != "" && r.Game != game) || len(r.Members) == 0 {
			continue
		}
		if len(out) == limit {
			return out, strconv.FormatUint(last, 10), nil
		}
		out = append(out, r)
		last = s.order[i].seq
	}
	return out, "", nil
}

func (s *memStore) PutPeer(_ context.Context, p *PeerRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p = p.clone()
	p.Rev = 1
	s.peers[p.ID] = p
	return nil
}

func (s *memStore) Peer(_ context.Context, id string) (*PeerRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if p, ok := s.peers[id]; ok {
		return p, nil
	}
	return nil, ErrNotFound
}

func (s *memStore) UpdatePeer(_ context.Context, id string, fn func(*PeerRecord) error) (*PeerRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.peers[id]
	if !ok {
		return nil, ErrNotFound
	}
	next := cur.clone()
	if err := fn(next); err != nil {
		return nil, err
	}
	next.Rev = cur.Rev + 1
	s.peers[id] = next
	return next, nil
}

func (s *memStore) DeletePeer(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.peers, id)
	return nil
}

func (s *memStore) Attach(peerID string, deliver func([]byte)) func() {
	k := &sink{deliver: deliver}
	s.sinkMu.Lock()
	s.sinks[peerID] = k
	s.sinkMu.Unlock()
	return func() {
		s.sinkMu.Lock()
		if s.sinks[peerID] == k {
			delete(s.sinks, peerID)
		}
		s.sinkMu.Unlock()
	}
}

func (s *memStore) Deliver(_ context.Context, peerID string, frame []byte) error {
	s.sinkMu.RLock()
	k := s.sinks[peerID]
	s.sinkMu.RUnlock()
	if k == nil {
		return ErrNotFound
	}
	k.deliver(frame)
	return nil
}

// Package signaling is the rendezvous signaling server: peers register over a
// WebSocket (/v1/ws), meet in rooms, exchange endpoints, keys and opaque
// signals, and are told when to start hole punching. The wire protocol lives in
// signaling/client (types) and docs/signaling.md (specification).
//
// One connection costs one goroutine (the reader) plus small buffers: writes go
// through a bounded per-connection queue drained by a goroutine that exists
// only while the queue is non-empty, and heartbeats are runtime timers, so an
// idle peer parks nothing but its reader.
//
// Shared state (rooms, join codes, presence, delivery) sits behind Store;
// signaling/natsstore shares it between nodes through NATS. Such a store
// also implements MultiDeliverer (room events travel once per node),
// SessionStore (a punch session can be reported on any node) and
// ReplaceNotifier (a resume on another node closes the old connection), and
// the server then checks signals against a per-node copy of room
// membership (roomCache) instead of reading the room for each.
package signaling

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rendezvous-p2p/rendezvous/internal/turncreds"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// Options are the collaborators of a Server.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// ICEServers returns the ICE servers (with fresh TURN credentials) handed
	// to a peer; user is the peer id (or "anon" for HTTP callers). Nil means
	// none. TURNServers builds one from relay URLs and the TURN REST secret.
	ICEServers func(user string) ([]client.ICEServer, error)
	// Store holds rooms, presence and delivery; nil means NewMemoryStore().
	Store Store
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// RoomCacheTTL bounds how long a node trusts the room membership it
	// cached to check signals when Store is shared (not the in-memory
	// store): 0 means DefaultRoomCacheTTL, negative turns the cache off (every
	// signal reads the room from the store).
	RoomCacheTTL time.Duration
}

// TURNServers returns an Options.ICEServers that hands out the given STUN/TURN
// URLs with coturn-style REST credentials (internal/turncreds) valid for ttl.
// STUN-only URLs ("stun:") are listed without credentials.
func TURNServers(urls []string, secret []byte, ttl time.Duration) func(user string) ([]client.ICEServer, error) {
	var stunURLs, turnURLs []string
	for _, u := range urls {
		if strings.HasPrefix(u, "stun:") || strings.HasPrefix(u, "stuns:") {
			stunURLs = append(stunURLs, u)
		} else {
			turnURLs = append(turnURLs, u)
		}
	}
	return func(user string) ([]client.ICEServer, error) {
		var out []client.ICEServer
		if len(stunURLs) > 0 {
			out = append(out, client.ICEServer{URLs: stunURLs})
		}
		if len(turnURLs) > 0 {
			cred, err := turncreds.Mint(secret, strings.ReplaceAll(user, ":", "_"), ttl, time.Now())
			if err != nil {
				return nil, err
			}
			out = append(out, client.ICEServer{URLs: turnURLs, Username: cred.Username, Credential: cred.Password})
		}
		return out, nil
	}
}

// Server is the signaling service.
type Server struct {
	log     *slog.Logger
	opts    Options
	store   Store
	metrics *metrics
	now     func() time.Time

	cfg     atomic.Pointer[runtimeConfig]
	ready   chan struct{}
	closing atomic.Bool

	mu    sync.Mutex
	conns map[*peerConn]struct{}
	perIP map[netip.Addr]int
	local map[string]*peerConn // registered peers on this node

	sessions SessionStore
	// rooms caches membership for signals; nil with the in-memory store.
	rooms *roomCache

	roomTimers sync.Map // room id -> *time.Timer (empty-room expiry)

	// lifecycle serialises going offline and resuming for one peer id.
	lifecycle [64]sync.Mutex
}

func (s *Server) lifecycleLock(id string) *sync.Mutex {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return &s.lifecycle[h%uint32(len(s.lifecycle))]
}

// runtimeConfig is a Config plus what is derived from it, swapped whole on Reload.
type runtimeConfig struct {
	Config
	apiKeys [][]byte
	secrets [][]byte
	gen     uint64
}

var cfgGen atomic.Uint64

func newRuntimeConfig(c Config) *runtimeConfig {
	rc := &runtimeConfig{Config: c, gen: cfgGen.Add(1)}
	for _, k := range c.APIKeys {
		rc.apiKeys = append(rc.apiKeys, []byte(k))
	}
	for _, s := range c.JoinTokenSecrets {
		rc.secrets = append(rc.secrets, []byte(s))
	}
	return rc
}

// New builds a Server; it does no I/O.
func New(cfg Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		log:   opts.Logger,
		opts:  opts,
		store: opts.Store,
		now:   opts.Now,
		ready: make(chan struct{}),
		conns: map[*peerConn]struct{}{},
		perIP: map[netip.Addr]int{},
		local: map[string]*peerConn{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.store == nil {
		s.store = NewMemoryStore()
	}
	if ss, ok := s.store.(SessionStore); ok {
		s.sessions = ss
	} else {
		s.sessions = newLocalSessions()
	}
	if s.now == nil {
		s.now = time.Now
	}
	// The in-memory store is as fast as a cache; a shared one is a network
	// round trip per read.
	if _, mem := s.store.(*memStore); !mem && opts.RoomCacheTTL >= 0 {
		ttl := opts.RoomCacheTTL
		if ttl == 0 {
			ttl = DefaultRoomCacheTTL
		}
		s.rooms = newRoomCache(ttl, s.now)
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.cfg.Store(newRuntimeConfig(cfg))
	return s, nil
}

// Name is the service label.
func (s *Server) Name() string { return "signaling" }

// Ready is closed when Run has started. The signaling server binds no listener
// of its own: its Handler is mounted on the HTTP listener.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Reload applies a new config: keys, secrets, open mode and limits take effect
// for new connections at once and for existing ones at their next frame or
// heartbeat. On error nothing changes.
func (s *Server) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.cfg.Store(newRuntimeConfig(cfg))
	return nil
}

func (s *Server) config() *runtimeConfig { return s.cfg.Load() }

// shutdownGrace bounds how long Run waits for peers to answer the close handshake.
const shutdownGrace = 2 * time.Second

// Run serves until ctx ends, then closes every WebSocket with status 1001
// (going away) and returns.
func (s *Server) Run(ctx context.Context) error {
	close(s.ready)
	<-ctx.Done()
	s.closing.Store(true)
	s.mu.Lock()
	conns := make([]*peerConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Close handshakes run in parallel; peers that do not answer within
	// shutdownGrace are cut so a stop never waits on them.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 1024)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, c := range conns {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c.shutdown()
			}()
		}
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		for _, c := range conns {
			c.ws.CloseNow()
		}
		<-done
	}
	s.roomTimers.Range(func(k, v any) bool {
		v.(*time.Timer).Stop()
		return true
	})
	return nil
}

// ObservePeerToken records that a STUN Binding carrying the PEER-TOKEN token
// arrived from addr: the peer's server-reflexive address. The relay's STUN
// callback calls it. Unknown tokens are ignored.
func (s *Server) ObservePeerToken(token string, from netip.AddrPort) {
	id, _, ok := strings.Cut(token, ".")
	if !ok || !from.IsValid() {
		return
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	addr := from.String()
	ctx := context.Background()
	changed := false
	p, err := s.store.UpdatePeer(ctx, id, func(p *PeerRecord) error {
		if !constantTimeEqual(p.PeerToken, token) {
			return ErrNotFound
		}
		changed = p.Reflexive != addr
		p.Reflexive = addr
		return nil
	})
	if err != nil {
		s.metrics.stunObservations.WithLabelValues("unknown_token").Inc()
		return
	}
	s.metrics.stunObservations.WithLabelValues("matched").Inc()
	if !changed {
		return
	}
	s.deliver(ctx, id, encodeFrame(client.TypeReflexive, 0, client.Reflexive{Addr: addr}))
	s.broadcastPeerUpdated(ctx, p)
}

func (s *Server) broadcastPeerUpdated(ctx context.Context, p *PeerRecord) {
	for _, roomID := range p.Rooms {
		r, err := s.store.Room(ctx, roomID)
		if err != nil || !r.HasMember(p.ID) {
			continue
		}
		s.broadcast(ctx, r, p.ID, encodeFrame(client.TypePeerUpdated, 0, client.PeerUpdated{RoomID: r.ID, Peer: p.Info()}))
	}
}

// updateRoom is Store.UpdateRoom followed by dropping this node's cached
// copy (see roomCache: after the write, so no read can bring back the old one).
func (s *Server) updateRoom(ctx context.Context, id string, fn func(r *Room) error) (*Room, error) {
	r, err := s.store.UpdateRoom(ctx, id, fn)
	s.invalidateRoom(id)
	return r, err
}

func (s *Server) invalidateRoom(id string) {
	if s.rooms != nil {
		s.rooms.invalidate(id)
	}
}

// room returns room id, from this node's cache when it is fresh and lists
// every one of want; otherwise from the store. ok tells whether all of want
// are members of the room returned.
func (s *Server) room(ctx context.Context, id string, want ...string) (r *Room, ok bool, err error) {
	has := func(r *Room) bool {
		for _, w := range want {
			if !r.HasMember(w) {
				return false
			}
		}
		return true
	}
	var ticket uint64
	if s.rooms != nil {
		if r, ticket = s.rooms.get(id); r != nil && has(r) {
			return r, true, nil
		}
	}
	// Not cached, stale, or someone missing: the store decides.
	r, err = s.store.Room(ctx, id)
	if err != nil {
		return nil, false, err
	}
	if s.rooms != nil {
		s.rooms.put(r, ticket)
	}
	return r, has(r), nil
}

// deliver sends a frame to a peer wherever it is attached.
func (s *Server) deliver(ctx context.Context, peerID string, frame []byte) bool {
	return s.store.Deliver(ctx, peerID, frame) == nil
}

// broadcast sends frame to every member of r except skip: through
// MultiDeliverer when the store has it (one message per node), else one
// delivery per member.
func (s *Server) broadcast(ctx context.Context, r *Room, skip string, frame []byte) int {
	if md, ok := s.store.(MultiDeliverer); ok {
		ids := make([]string, 0, len(r.Members))
		for _, m := range r.Members {
			if m.PeerID != skip {
				ids = append(ids, m.PeerID)
			}
		}
		if len(ids) == 0 {
			return 0
		}
		return md.DeliverMany(ctx, ids, frame)
	}
	n := 0
	for _, m := range r.Members {
		if m.PeerID != skip && s.deliver(ctx, m.PeerID, frame) {
			n++
		}
	}
	return n
}

func (s *Server) iceServers(user string) []client.ICEServer {
	if s.opts.ICEServers == nil {
		return nil
	}
	ice, err := s.opts.ICEServers(user)
	if err != nil {
		s.log.Warn("ice servers", "err", err)
		return nil
	}
	return ice
}

func (s *Server) limits() client.Limits {
	c := s.config()
	return client.Limits{
		MaxFrameBytes: c.MaxFrameBytes, MsgRate: c.MsgRate, MsgBurst: c.MsgBurst,
		MaxRoomsPerPeer: c.MaxRoomsPerPeer, MaxRoomCapacity: c.MaxRoomCapacity,
		PingIntervalMS: c.PingInterval.Milliseconds(), MissedPings: c.MissedPings,
		ResumeGraceMS: c.ResumeGrace.Milliseconds(), SendQueue: c.SendQueue,
	}
}

// newID returns prefix + 16 lowercase base32 characters (80 random bits).
func newID(prefix string) string {
	var b [10]byte
	rand.Read(b[:])
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

func newSecret(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// joinCodeAlphabet has no look-alikes: no 0/O, 1/I/L or U/V.
const joinCodeAlphabet = "ABCDEFGHJKMNPQRSTWXYZ23456789"

// JoinCodeLen is the length of a join code.
const JoinCodeLen = 6

func newJoinCode() string {
	var b [JoinCodeLen]byte
	rand.Read(b[:])
	for i := range b {
		// 256 % 29 bias is negligible for a human-entered code.
		b[i] = joinCodeAlphabet[int(b[i])%len(joinCodeAlphabet)]
	}
	return string(b[:])
}

// normalizeJoinCode upper-cases what a human typed.
func normalizeJoinCode(code string) string {
	return strings.ToUpper(strings.TrimSpace(code))
}

var errClosed = errors.New("connection closed")

func wsCloseCode(code string) websocket.StatusCode {
	switch code {
	case client.CodeServerShutdown:
		return websocket.StatusGoingAway
	case client.CodeTooManyConnections:
		return websocket.StatusTryAgainLater
	case client.CodeInternal:
		return websocket.StatusInternalError
	}
	return websocket.StatusPolicyViolation
}

func errorf(code, format string, args ...any) *client.Error {
	return &client.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

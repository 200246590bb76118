// Package natsstore is a signaling.Store shared by several rendezvous nodes
// through NATS: rooms, join codes and peer records live in JetStream
// key-value buckets updated with compare-and-set, frames for a peer travel on
// the subject of the node that holds its WebSocket, and each node's presence
// is a heartbeat key that expires, so the peers of a node that dies are taken
// out of their rooms by the others.
//
// Layout (prefix "rzv" by default):
//
//	bucket rzv-rooms  (history 1, no TTL)
//	  room.<id>          JSON Room + creation sequence       CAS on revision
//	  code.<CODE>        room id                              created before the room
//	bucket rzv-peers  (history 1, no TTL)
//	  p.<id>             JSON PeerRecord + owning node       CAS on revision
//	  n.<node>.<id>      index: peers held by node (empty)
//	  node.<node>        registration of a node that may hold peers
//	bucket rzv-sessions  (history 1, TTL = signaling.SessionTTL)
//	  s.<id>             JSON punch session                   reported set by CAS
//	bucket rzv-nodes  (history 1, TTL = presence-ttl)
//	  alive.<node>       heartbeat, rewritten every presence-ttl/3
//	  reap.<node>        lease of the node reaping a dead one
//	  sweep.<n>          lease of the node sweeping in interval n
//	subject rzv.node.<node>   frames for peers on node; header Rzv-To: id,id,...
//	subject rzv.evict         peer id that attached or detached somewhere;
//	                          header Rzv-Attached: node it attached to
//
// "CAS on revision" is per key, except on replicated buckets before
// nats-server 2.10, where it is stream-wide (see bucket).
//
// Ids that are not plain [A-Za-z0-9_-] are escaped (=XX) in keys. Buckets are
// created without direct get, so reads go to the stream leader and see every
// acknowledged write (read-your-writes across nodes).
package natsstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rendezvous-p2p/rendezvous/signaling"
)

// ErrUnavailable wraps every failure to reach the shared state; it is
// signaling.ErrUnavailable.
var ErrUnavailable = signaling.ErrUnavailable

// Options are the collaborators of a Store.
type Options struct {
	Logger *slog.Logger
	// Registerer receives the rendezvous_nats_* metrics; nil means none.
	Registerer prometheus.Registerer
	// Name is the NATS connection name shown by the server (default "rendezvous <node>").
	Name string
}

// Store is the NATS-backed signaling.Store. Close it after the signaling
// server has stopped.
type Store struct {
	cfg     Config
	log     *slog.Logger
	node    string
	metrics *metrics

	nc           *nats.Conn
	js           jetstream.JetStream
	rooms, peers *bucket
	sessions     *bucket // punch sessions, expiring (sessions.go)
	nodes        jetstream.KeyValue
	sub          *nats.Subscription

	sinkMu sync.RWMutex
	sinks  map[string]*sink

	regMu      sync.Mutex
	registered map[string]bool // nodes with a node.<id> registration

	// fresh holds peers PutPeer just wrote with this node as owner: their
	// Attach needs no claim.
	fresh sync.Map

	locMu     sync.Mutex
	locations map[string]location
	evictSub  *nats.Subscription

	pubMu     sync.RWMutex
	public    map[string]*roomValue // public rooms, mirrored by a watcher
	listReady chan struct{}

	connected atomic.Bool
	// healthySince is when heartbeats last started to go through (unix ns), 0 while failing.
	healthySince atomic.Int64
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	closeOnce    sync.Once
}

type sink struct {
	deliver  func([]byte)
	replaced func() // nil: not asked for
	notified atomic.Bool
}

// roomValue is what the rooms bucket holds for room.<id>.
type roomValue struct {
	signaling.Room
	// Seq is the revision of the room's code entry: creation order for listing.
	Seq uint64 `json:"seq"`
}

// peerValue is what the peers bucket holds for p.<id>.
type peerValue struct {
	signaling.PeerRecord
	Node string `json:"node"`
}

var (
	_ signaling.Store = (*Store)(nil)
	_ io.Closer       = (*Store)(nil)
)

// New connects to NATS, creates or binds the buckets, registers this node
// and starts its heartbeat, reaper and delivery subscription. It fails if
// NATS cannot be reached within cfg.OpTimeout; afterwards the connection
// reconnects forever and operations fail with ErrUnavailable meanwhile.
func New(ctx context.Context, cfg Config, opts Options) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, log: opts.Logger, node: cfg.NodeID, sinks: map[string]*sink{}, locations: map[string]location{}, registered: map[string]bool{}, public: map[string]*roomValue{}, listReady: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
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
	if s.node == "" {
		host, _ := os.Hostname()
		host = strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
				return r
			}
			return '-'
		}, host)
		if len(host) > 40 {
			host = host[:40]
		}
		var b [4]byte
		rand.Read(b[:])
		s.node = strings.Trim(host+"-"+hex.EncodeToString(b[:]), "-")
	}
	name := opts.Name
	if name == "" {
		name = "rendezvous " + s.node
	}
	nopts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.Timeout(cfg.OpTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			s.connected.Store(false)
			if err == nil {
				return // closed by us
			}
			s.log.Error("NATS connection lost: rooms and cross-node delivery are unavailable until it is back; retrying", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			s.connected.Store(true)
			s.log.Info("NATS connection restored", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			s.log.Warn("NATS", "err", err)
		}),
	}
	if cfg.CredsFile != "" {
		nopts = append(nopts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nkey-file: %w", err)
		}
		nopts = append(nopts, o)
	}
	if cfg.TLS.CAFile != "" {
		nopts = append(nopts, nats.RootCAs(cfg.TLS.CAFile))
	}
	if cfg.TLS.CertFile != "" {
		nopts = append(nopts, nats.ClientCert(cfg.TLS.CertFile, cfg.TLS.KeyFile))
	}
	nc, err := nats.Connect(strings.Join(cfg.URLs, ","), nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: connect %s: %v", ErrUnavailable, strings.Join(cfg.URLs, ","), err)
	}
	s.nc = nc
	s.connected.Store(true)
	ok := false
	defer func() {
		if !ok {
			nc.Close()
		}
	}()
	s.js, err = jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	defer cancel()
	replicas := cfg.Replicas
	if replicas == 0 {
		replicas = 1
		if len(nc.Servers()) >= 3 {
			replicas = 3
		}
	}
	// See bucket: per-key compare-and-set is unsafe on replicated buckets
	// before nats-server 2.10.
	serial := replicas > 1 && !serverAtLeast(nc.ConnectedServerVersion(), 2, 10)
	if s.rooms, err = s.bucket(octx, "rooms", replicas, 0, serial); err != nil {
		return nil, err
	}
	if s.peers, err = s.bucket(octx, "peers", replicas, 0, serial); err != nil {
		return nil, err
	}
	if s.sessions, err = s.bucket(octx, "sessions", replicas, signaling.SessionTTL, serial); err != nil {
		return nil, err
	}
	nodes, err := s.bucket(octx, "nodes", replicas, cfg.PresenceTTL, serial)
	if err != nil {
		return nil, err
	}
	s.nodes = nodes.kv
	if err := s.heartbeat(octx); err != nil {
		return nil, err
	}
	s.sub, err = nc.Subscribe(s.nodeSubject(s.node), s.onFrames)
	if err != nil {
		return nil, err
	}
	s.sub.SetPendingLimits(1<<20, 256<<20)
	if s.evictSub, err = nc.Subscribe(cfg.Prefix+evictSubject, s.onEvict); err != nil {
		return nil, err
	}
	s.evictSub.SetPendingLimits(1<<20, 64<<20)
	if err := nc.FlushWithContext(octx); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	// Peers a previous run of this node id left behind get one presence-ttl
	// to resume here before they are reaped.
	leftovers, _ := s.keys(octx, s.peers.kv, "n."+s.node+".*")

	bg, stop := context.WithCancel(context.Background())
	s.cancel = stop
	if err := s.watchPublic(bg); err != nil {
		stop()
		return nil, err
	}
	if err := s.watchNodes(bg); err != nil {
		stop()
		return nil, err
	}
	select {
	case <-s.listReady:
	case <-octx.Done():
		stop()
		return nil, fmt.Errorf("%w: loading public rooms: %v", ErrUnavailable, octx.Err())
	}
	// Reaping waits one presence-ttl after start too: see reapDead.
	s.healthySince.Store(time.Now().UnixNano())
	s.wg.Add(3)
	go s.heartbeatLoop(bg)
	go s.reaperLoop(bg, leftovers)
	go s.sweepLoop(bg)
	ok = true
	s.log.Info("shared state on NATS", "node", s.node, "server", nc.ConnectedUrlRedacted(), "server_version", nc.ConnectedServerVersion(), "replicas", replicas, "serial_writes", serial)
	return s, nil
}

// NodeID is this node's id in the shared state.
func (s *Store) NodeID() string { return s.node }

// Connected reports whether the NATS connection is up.
func (s *Store) Connected() bool { return s.connected.Load() && s.nc.IsConnected() }

// Close stops the background work and the connection. Peers still attached
// stay in their rooms for presence-ttl, so they can resume on another node;
// after that the other nodes reap them.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		if s.sub != nil {
			s.sub.Unsubscribe()
		}
		if s.evictSub != nil {
			s.evictSub.Unsubscribe()
		}
		s.nc.Close()
	})
	return nil
}

// bucket creates (or updates) the KV stream for name without direct get and
// binds it.
func (s *Store) bucket(ctx context.Context, name string, replicas int, ttl time.Duration, serial bool) (*bucket, error) {
	bucketName := s.cfg.Prefix + "-" + name
	dup := 2 * time.Minute
	if ttl > 0 && ttl < dup {
		dup = ttl
	}
	var stream jetstream.Stream
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		stream, err = s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:              "KV_" + bucketName,
			Subjects:          []string{"$KV." + bucketName + ".>"},
			MaxMsgsPerSubject: 1,
			MaxBytes:          -1,
			MaxAge:            ttl,
			MaxMsgSize:        -1,
			MaxMsgs:           -1,
			MaxConsumers:      -1,
			Storage:           jetstream.FileStorage,
			Replicas:          replicas,
			AllowRollup:       true,
			DenyDelete:        true,
			Duplicates:        dup,
			Discard:           jetstream.DiscardNew,
			// Reads from the leader only: a follower may lag behind a write
			// another node just made.
			AllowDirect: false,
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: bucket %s: %v", ErrUnavailable, bucketName, err)
	}
	kv, err := s.js.KeyValue(ctx, bucketName)
	if err != nil {
		return nil, fmt.Errorf("%w: bucket %s: %v", ErrUnavailable, bucketName, err)
	}
	return &bucket{kv: kv, js: s.js, stream: stream, subj: "$KV." + bucketName + ".", serial: serial, conflicts: s.metrics.conflicts}, nil
}

// serverAtLeast compares a "major.minor.patch" server version.
func serverAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func (s *Store) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.OpTimeout)
}

func (s *Store) unavailable(what string, err error) error {
	s.metrics.unavailable.Inc()
	return unavailable(what, err)
}

func unavailable(what string, err error) error {
	return fmt.Errorf("%s: %w: %v", what, ErrUnavailable, err)
}

func isMissing(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

// escape makes an id a single KV key token: [A-Za-z0-9_-] stay, every other
// byte becomes =XX.
func escape(id string) string {
	plain := true
	for i := 0; i < len(id); i++ {
		if !plainByte(id[i]) {
			plain = false
			break
		}
	}
	if plain && id != "" {
		return id
	}
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if plainByte(c) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	if b.Len() == 0 {
		return "="
	}
	return b.String()
}

func plainByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func roomKey(id string) string               { return "room." + escape(id) }
func codeKey(code string) string             { return "code." + escape(code) }
func peerKey(id string) string               { return "p." + escape(id) }
func indexKey(node, id string) string        { return "n." + node + "." + escape(id) }
func (s *Store) nodeSubject(n string) string { return s.cfg.Prefix + ".node." + n }

// ---- rooms ----

func (s *Store) CreateRoom(ctx context.Context, r *signaling.Room) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	// The code first: its revision orders rooms for listing, and a code that
	// is taken costs no room write.
	codeRev, err := s.rooms.cas(ctx, codeKey(r.Code), func(cur *entry) ([]byte, bool, error) {
		if cur != nil {
			return nil, false, signaling.ErrCodeTaken
		}
		return []byte(r.ID), false, nil
	})
	switch {
	case errors.Is(err, signaling.ErrCodeTaken):
		return err
	case err != nil:
		return s.unavailable("create room", err)
	}
	v := roomValue{Room: *r, Seq: codeRev}
	v.Members = slices.Clone(r.Members)
	v.Rev = 0
	data, _ := json.Marshal(&v)
	rev, err := s.rooms.cas(ctx, roomKey(r.ID), func(cur *entry) ([]byte, bool, error) {
		if cur != nil {
			return nil, false, signaling.ErrRoomExists
		}
		return data, false, nil
	})
	if err != nil {
		// Undo the code, but only our own entry.
		uctx, ucancel := s.op(context.Background())
		s.rooms.cas(uctx, codeKey(r.Code), func(cur *entry) ([]byte, bool, error) {
			if cur == nil || cur.Rev != codeRev {
				return nil, false, errAbort
			}
			return nil, true, nil
		})
		ucancel()
		if errors.Is(err, signaling.ErrRoomExists) {
			return err
		}
		return s.unavailable("create room", err)
	}
	v.Rev = rev
	s.notePublic(&v)
	return nil
}

func decodeRoom(e *entry) (*roomValue, error) {
	var v roomValue
	if err := json.Unmarshal(e.Value, &v); err != nil {
		return nil, fmt.Errorf("corrupt room record: %v", err)
	}
	v.Rev = e.Rev
	return &v, nil
}

func (s *Store) getRoom(ctx context.Context, id string) (*roomValue, error) {
	e, err := s.rooms.get(ctx, roomKey(id))
	if isMissing(err) {
		return nil, signaling.ErrNotFound
	}
	if err != nil {
		return nil, s.unavailable("room", err)
	}
	return decodeRoom(&entry{Value: e.Value(), Rev: e.Revision()})
}

func (s *Store) Room(ctx context.Context, id string) (*signaling.Room, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.getRoom(ctx, id)
	if err != nil {
		return nil, err
	}
	return &v.Room, nil
}

func (s *Store) RoomByCode(ctx context.Context, code string) (*signaling.Room, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	e, err := s.rooms.get(ctx, codeKey(code))
	if isMissing(err) {
		return nil, signaling.ErrNotFound
	}
	if err != nil {
		return nil, s.unavailable("room by code", err)
	}
	v, err := s.getRoom(ctx, string(e.Value()))
	if err != nil {
		return nil, err
	}
	if v.Code != code {
		return nil, signaling.ErrNotFound // a code left by a failed create
	}
	return &v.Room, nil
}

// maxAttempts bounds compare-and-set retries.
const maxAttempts = 500

func (s *Store) UpdateRoom(ctx context.Context, id string, fn func(r *signaling.Room) error) (*signaling.Room, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	var next *roomValue
	rev, err := s.rooms.cas(ctx, roomKey(id), func(cur *entry) ([]byte, bool, error) {
		if cur == nil {
			return nil, false, signaling.ErrNotFound
		}
		v, err := decodeRoom(cur)
		if err != nil {
			return nil, false, err
		}
		if err := fn(&v.Room); err != nil {
			return nil, false, err
		}
		next = v
		if v.Deleted {
			return nil, true, nil
		}
		v.Rev = 0
		data, _ := json.Marshal(v)
		return data, false, nil
	})
	if err != nil {
		if errors.Is(err, ErrUnavailable) || transient(err) || errors.Is(err, errContention) {
			return nil, s.unavailable("update room", err)
		}
		return nil, err
	}
	next.Rev = rev
	if next.Deleted {
		s.rooms.cas(ctx, codeKey(next.Code), func(cur *entry) ([]byte, bool, error) {
			if cur == nil || string(cur.Value) != id {
				return nil, false, errAbort
			}
			return nil, true, nil
		})
		s.forgetPublic(id)
	} else {
		s.notePublic(next)
	}
	r := next.Room
	return &r, nil
}

// ListRooms serves public rooms from this node's mirror of the rooms bucket
// (kept by a watcher): a room created on another node appears within the
// watcher's delay, typically under a millisecond.
func (s *Store) ListRooms(_ context.Context, game, cursor string, limit int) ([]*signaling.Room, string, error) {
	var after uint64
	if cursor != "" {
		n, err := strconv.ParseUint(cursor, 10, 64)
		if err != nil {
			return nil, "", fmt.Errorf("bad cursor %q", cursor)
		}
		after = n
	}
	s.pubMu.RLock()
	match := make([]*roomValue, 0, len(s.public))
	for _, v := range s.public {
		if v.Seq > after && len(v.Members) > 0 && (game == "" || v.Game == game) {
			match = append(match, v)
		}
	}
	s.pubMu.RUnlock()
	sort.Slice(match, func(i, j int) bool { return match[i].Seq < match[j].Seq })
	next := ""
	if len(match) > limit {
		match = match[:limit]
		next = strconv.FormatUint(match[limit-1].Seq, 10)
	}
	out := make([]*signaling.Room, len(match))
	for i, v := range match {
		r := v.Room
		out[i] = &r
	}
	return out, next, nil
}

func (s *Store) notePublic(v *roomValue) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	old := s.public[v.ID]
	if old != nil && old.Rev > v.Rev {
		return
	}
	if !v.Public {
		delete(s.public, v.ID)
		return
	}
	c := *v
	s.public[v.ID] = &c
}

func (s *Store) forgetPublic(id string) {
	s.pubMu.Lock()
	delete(s.public, id)
	s.pubMu.Unlock()
}

func (s *Store) watchPublic(ctx context.Context) error {
	w, err := s.rooms.kv.Watch(ctx, "room.*")
	if err != nil {
		return unavailable("watch rooms", err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer w.Stop()
		ready := false
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					if !ready {
						ready = true
						close(s.listReady)
					}
					continue
				}
				if e.Operation() != jetstream.KeyValuePut {
					s.pubMu.Lock()
					for id, v := range s.public {
						if roomKey(id) == e.Key() && v.Rev < e.Revision() {
							delete(s.public, id)
						}
					}
					s.pubMu.Unlock()
					continue
				}
				var v roomValue
				if json.Unmarshal(e.Value(), &v) != nil {
					continue
				}
				v.Rev = e.Revision()
				s.notePublic(&v)
			}
		}
	}()
	return nil
}

// ---- peers ----

func (s *Store) PutPeer(ctx context.Context, p *signaling.PeerRecord) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	// The index first: a record is never without the index that lets the
	// reaper find it.
	if _, err := s.peers.put(ctx, indexKey(s.node, p.ID), nil); err != nil {
		return s.unavailable("put peer", err)
	}
	v := peerValue{PeerRecord: *p, Node: s.node}
	v.Rev = 0
	data, _ := json.Marshal(&v)
	if _, err := s.peers.put(ctx, peerKey(p.ID), data); err != nil {
		return s.unavailable("put peer", err)
	}
	s.fresh.Store(p.ID, struct{}{})
	return nil
}

func decodePeer(e *entry) (*peerValue, error) {
	var v peerValue
	if err := json.Unmarshal(e.Value, &v); err != nil {
		return nil, fmt.Errorf("corrupt peer record: %v", err)
	}
	v.Rev = e.Rev
	return &v, nil
}

func (s *Store) getPeer(ctx context.Context, id string) (*peerValue, error) {
	e, err := s.peers.get(ctx, peerKey(id))
	if isMissing(err) {
		return nil, signaling.ErrNotFound
	}
	if err != nil {
		return nil, s.unavailable("peer", err)
	}
	return decodePeer(&entry{Value: e.Value(), Rev: e.Revision()})
}

func (s *Store) Peer(ctx context.Context, id string) (*signaling.PeerRecord, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.getPeer(ctx, id)
	if err != nil {
		return nil, err
	}
	return &v.PeerRecord, nil
}

func (s *Store) UpdatePeer(ctx context.Context, id string, fn func(p *signaling.PeerRecord) error) (*signaling.PeerRecord, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.updatePeer(ctx, id, func(v *peerValue) error { return fn(&v.PeerRecord) })
	if err != nil {
		return nil, err
	}
	return &v.PeerRecord, nil
}

func (s *Store) updatePeer(ctx context.Context, id string, fn func(v *peerValue) error) (*peerValue, error) {
	var next *peerValue
	rev, err := s.peers.cas(ctx, peerKey(id), func(cur *entry) ([]byte, bool, error) {
		if cur == nil {
			return nil, false, signaling.ErrNotFound
		}
		v, err := decodePeer(cur)
		if err != nil {
			return nil, false, err
		}
		if err := fn(v); err != nil {
			return nil, false, err
		}
		next = v
		v.Rev = 0
		data, _ := json.Marshal(v)
		return data, false, nil
	})
	if err != nil {
		if transient(err) || errors.Is(err, errContention) {
			return nil, s.unavailable("update peer", err)
		}
		return nil, err
	}
	next.Rev = rev
	return next, nil
}

// deletePeer removes the record if its revision is still rev (0: any) and
// returns the node it named.
func (s *Store) deletePeer(ctx context.Context, id string, rev uint64) (*peerValue, error) {
	var gone *peerValue
	_, err := s.peers.cas(ctx, peerKey(id), func(cur *entry) ([]byte, bool, error) {
		if cur == nil || (rev != 0 && cur.Rev != rev) {
			return nil, false, errAbort
		}
		v, err := decodePeer(cur)
		if err != nil {
			return nil, false, err
		}
		gone = v
		return nil, true, nil
	})
	if errors.Is(err, errAbort) {
		return nil, nil
	}
	return gone, err
}

func (s *Store) DeletePeer(ctx context.Context, id string) error {
	s.fresh.Delete(id)
	ctx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.deletePeer(ctx, id, 0)
	if err != nil {
		return s.unavailable("delete peer", err)
	}
	if v != nil {
		if err := retry(ctx, func(ctx context.Context) error { return s.peers.kv.Delete(ctx, indexKey(v.Node, id)) }); err != nil {
			return s.unavailable("delete peer", err)
		}
	}
	return nil
}

// keys lists the keys of kv matching filter (one NATS wildcard pattern).
func (s *Store) keys(ctx context.Context, kv jetstream.KeyValue, filter string) ([]string, error) {
	l, err := kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, err
	}
	defer l.Stop()
	var out []string
	for k := range l.Keys() {
		out = append(out, k)
	}
	return out, nil
}

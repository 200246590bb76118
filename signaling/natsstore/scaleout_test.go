package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
	"github.com/rendezvous-p2p/rendezvous/signaling/natsstore/natstest"
)

// sumMetric adds up, over registries, the counters (or histogram sample
// counts) named name whose labels include want.
func sumMetric(t *testing.T, name string, want map[string]string, regs ...*prometheus.Registry) float64 {
	t.Helper()
	total := 0.0
	for _, reg := range regs {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		metric:
			for _, m := range mf.Metric {
				for k, v := range want {
					found := false
					for _, lp := range m.Label {
						if lp.GetName() == k && lp.GetValue() == v {
							found = true
						}
					}
					if !found {
						continue metric
					}
				}
				if m.Counter != nil {
					total += m.Counter.GetValue()
				}
				if m.Histogram != nil {
					total += float64(m.Histogram.GetSampleCount())
				}
			}
		}
	}
	return total
}

func clientErrCode(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestRoomEventsOncePerNode: a room event for three members on one node
// travels as one NATS message naming all three, not three messages.
func TestRoomEventsOncePerNode(t *testing.T) {
	cluster := natstest.StartCluster(t, 1)
	cfg := testConfig(cluster.URLs(), "fanout")
	a, b := startNode(t, cfg), startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Watch what node a is sent.
	nc, err := nats.Connect(cluster.URLs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	var toA []*nats.Msg
	sub, err := nc.Subscribe(cfg.Prefix+".node."+a.store.NodeID(), func(m *nats.Msg) {
		mu.Lock()
		toA = append(toA, m)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	a1, a2, a3 := dial(t, a, "a1", "a2V5"), dial(t, a, "a2", "a2V5"), dial(t, a, "a3", "a2V5")
	room, err := a1.CreateRoom(ctx, client.CreateRoom{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{a2, a3} {
		if _, err := c.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
			t.Fatal(err)
		}
	}
	bob := dial(t, b, "bob", "a2V5")
	if _, err := bob.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}
	// A room-wide signal from bob: published after the peer_joined, on the
	// same connection, so once the watcher has it, it has everything before.
	if err := bob.Signal(ctx, "", room.Room.ID, "marker"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{a1, a2, a3} {
		waitEvent(t, c, client.TypePeerJoined, func(p client.PeerJoined) bool { return p.Peer.ID == bob.PeerID() })
		waitEvent(t, c, client.TypeSignal, func(s client.Signal) bool { return s.From == bob.PeerID() })
	}
	count := func(typ string) (n int, to []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range toA {
			if strings.HasPrefix(string(m.Data), `{"type":"`+typ+`"`) {
				n++
				to = strings.Split(m.Header.Get(hdrTo), ",")
			}
		}
		return n, to
	}
	waitUntil(t, "watcher sees the marker", func() bool { n, _ := count(client.TypeSignal); return n > 0 })
	want := []string{a1.PeerID(), a2.PeerID(), a3.PeerID()}
	for _, typ := range []string{client.TypePeerJoined, client.TypeSignal} {
		n, to := count(typ)
		if n != 1 || len(to) != 3 {
			t.Fatalf("%s reached node a as %d messages (last for %v); want 1 for %v", typ, n, to, want)
		}
		for _, id := range want {
			if !strings.Contains(strings.Join(to, ","), id) {
				t.Fatalf("%s for %v misses %s", typ, to, id)
			}
		}
	}
}

// TestSessionsAcrossNodes: a punch scheduled on one node is reported on
// another; only the first report of a session counts its outcome, every
// report with probes is observed, and a session is only its two peers'.
// Three NATS servers: the replicated bucket is where compare-and-set needs
// care (see bucket), and the two reports race on different servers.
func TestSessionsAcrossNodes(t *testing.T) {
	cluster := natstest.StartCluster(t, 3)
	urls := cluster.URLs()
	a := startNode(t, testConfig(urls, "sess"))
	urls[0], urls[1] = urls[1], urls[0]
	b := startNode(t, testConfig(urls, "sess"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alice, carol, dave := dial(t, a, "alice", "a2V5"), dial(t, b, "carol", "a2V5"), dial(t, b, "dave", "a2V5")
	room, err := alice.CreateRoom(ctx, client.CreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{carol, dave} {
		if _, err := c.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
			t.Fatal(err)
		}
	}
	// The NAT types registered on each node label the metrics on both.
	if err := alice.UpdatePeer(ctx, client.UpdatePeer{NAT: &client.NATReport{Type: "endpoint-independent"}}); err != nil {
		t.Fatal(err)
	}
	if err := carol.UpdatePeer(ctx, client.UpdatePeer{NAT: &client.NATReport{Type: "address-port-dependent"}}); err != nil {
		t.Fatal(err)
	}
	const connects = 8
	for i := range connects {
		ack, err := alice.Connect(ctx, client.Connect{PeerID: carol.PeerID(), RoomID: room.Room.ID})
		if err != nil || len(ack.Sessions) != 1 {
			t.Fatalf("connect: %v %+v", err, ack)
		}
		sid := ack.Sessions[0]
		waitEvent(t, carol, client.TypePunch, func(p client.Punch) bool { return p.SessionID == sid })
		// Not dave's session, wherever he asks.
		if err := dave.ReportResult(ctx, client.ConnectResult{SessionID: sid, PeerID: alice.PeerID(), Outcome: "direct"}); clientErrCode(err) != client.CodeBadRequest {
			t.Fatalf("dave reporting alice's session: %v", err)
		}
		// Both sides report at once, on different nodes; carol probed.
		errs := make(chan error, 2)
		go func() {
			errs <- alice.ReportResult(ctx, client.ConnectResult{SessionID: sid, PeerID: carol.PeerID(), Outcome: "direct", DurationMS: 30})
		}()
		go func() {
			errs <- carol.ReportResult(ctx, client.ConnectResult{SessionID: sid, PeerID: alice.PeerID(), Outcome: "direct", DurationMS: 31, Probes: 64 + i})
		}()
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("connect_result on connect %d: %v", i, err)
			}
		}
	}
	// A made-up session is refused.
	if err := carol.ReportResult(ctx, client.ConnectResult{SessionID: "s_aaaaaaaaaaaaaaaa", Outcome: "failed"}); clientErrCode(err) != client.CodeBadRequest {
		t.Fatalf("made-up session: %v", err)
	}
	direct := map[string]string{"outcome": "direct", "nat_pair": "address-port-dependent+endpoint-independent"}
	if n := sumMetric(t, "rendezvous_signaling_connect_outcomes_total", direct, a.sreg, b.sreg); n != connects {
		t.Fatalf("connect outcomes counted %v times over both nodes; want %d (first report only)", n, connects)
	}
	if n := sumMetric(t, "rendezvous_signaling_connect_duration_seconds", direct, a.sreg, b.sreg); n != connects {
		t.Fatalf("connect durations observed %v times; want %d", n, connects)
	}
	if n := sumMetric(t, "rendezvous_signaling_connect_probes", direct, b.sreg); n != connects {
		t.Fatalf("carol's probes observed %v times on her node; want %d (also when second)", n, connects)
	}
}

// countingStore counts the reads the signaling server makes.
type countingStore struct {
	*Store
	reads atomic.Int64
}

func (c *countingStore) Room(ctx context.Context, id string) (*signaling.Room, error) {
	c.reads.Add(1)
	return c.Store.Room(ctx, id)
}

func (c *countingStore) Peer(ctx context.Context, id string) (*signaling.PeerRecord, error) {
	c.reads.Add(1)
	return c.Store.Peer(ctx, id)
}

// TestSignalMembershipCache: signals across nodes are checked against the
// node's cached membership (no store read in the common case), yet a peer
// that left a room can never signal into it, a peer that left on another
// node is not signalled once its departure was announced, and a peer that
// just joined on another node can be signalled at once.
func TestSignalMembershipCache(t *testing.T) {
	cluster := natstest.StartCluster(t, 1)
	cfg := testConfig(cluster.URLs(), "mcache")
	var counted *countingStore
	a := startNodeWith(t, cfg, func(s *Store) signaling.Store { counted = &countingStore{Store: s}; return counted })
	b := startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	alice, xavier := dial(t, a, "alice", "a2V5"), dial(t, a, "xavier", "a2V5")
	bob := dial(t, b, "bob", "a2V5")
	room, err := xavier.CreateRoom(ctx, client.CreateRoom{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{alice, bob} {
		if _, err := c.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
			t.Fatal(err)
		}
	}
	roomID := room.Room.ID

	// Bob records every signal he gets.
	var mu sync.Mutex
	got := map[string]int{}
	gotCh := make(chan string, 4096)
	xGot := make(chan struct{}, 1)
	go func() {
		for ev := range bob.Events() {
			if ev.Type != client.TypeSignal {
				continue
			}
			var s client.Signal
			ev.Decode(&s)
			var p string
			json.Unmarshal(s.Payload, &p)
			if p == "x" {
				select {
				case xGot <- struct{}{}:
				default:
				}
				continue
			}
			mu.Lock()
			got[p]++
			mu.Unlock()
			select {
			case gotCh <- p:
			default:
			}
		}
	}()
	waitSignal := func(want string) {
		t.Helper()
		timeout := time.After(waitFor)
		for {
			mu.Lock()
			n := got[want]
			mu.Unlock()
			if n > 0 {
				return
			}
			select {
			case <-gotCh:
			case <-timeout:
				t.Fatalf("bob did not get %q", want)
			}
		}
	}

	// Common case: a burst of signals costs (about) one read on alice's node.
	if err := alice.Signal(ctx, bob.PeerID(), roomID, "warm-up"); err != nil {
		t.Fatal(err)
	}
	before, started := counted.reads.Load(), time.Now()
	const burst = 100
	for i := range burst {
		if err := alice.Signal(ctx, bob.PeerID(), roomID, fmt.Sprintf("burst-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitSignal(fmt.Sprintf("burst-%d", burst-1))
	// One read to fill the copy, one more each time it expires.
	allowed := 2 + int64(time.Since(started)/signaling.DefaultRoomCacheTTL)
	if reads := counted.reads.Load() - before; reads > allowed {
		t.Fatalf("%d signals cost %d store reads (allowed %d); the membership cache should answer them", burst, reads, allowed)
	}

	// The race: xavier keeps signalling bob from the same node (so his reads
	// keep refilling the cache after every invalidation) while alice leaves
	// and at once tries to signal into the room she left, over and over.
	// Xavier waits for each signal to arrive, so bob's send queue never
	// overflows.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if xavier.Signal(ctx, bob.PeerID(), roomID, "x") != nil {
				continue
			}
			select {
			case <-xGot:
			case <-stop:
				return
			}
		}
	}()
	const rounds = 25
	for i := range rounds {
		if err := alice.Signal(ctx, bob.PeerID(), roomID, fmt.Sprintf("member-%d", i)); err != nil {
			t.Fatalf("round %d, signal as member: %v", i, err)
		}
		if err := alice.Leave(ctx, roomID); err != nil {
			t.Fatal(err)
		}
		if err := alice.Signal(ctx, bob.PeerID(), roomID, fmt.Sprintf("after-leave-%d", i)); clientErrCode(err) != client.CodePeerNotFound {
			t.Fatalf("round %d: signal to bob after leaving: %v, want %s", i, err, client.CodePeerNotFound)
		}
		if err := alice.Signal(ctx, "", roomID, fmt.Sprintf("after-leave-room-%d", i)); clientErrCode(err) != client.CodeNotInRoom {
			t.Fatalf("round %d: room signal after leaving: %v, want %s", i, err, client.CodeNotInRoom)
		}
		if _, err := alice.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	// Frames from one node to another keep their order: once bob has the
	// last one, he has everything alice's node sent before it.
	if err := alice.Signal(ctx, bob.PeerID(), roomID, "done"); err != nil {
		t.Fatal(err)
	}
	waitSignal("done")
	mu.Lock()
	for p := range got {
		if strings.HasPrefix(p, "after-leave") {
			mu.Unlock()
			t.Fatalf("bob got %q, sent by alice after she left", p)
		}
	}
	mu.Unlock()

	// Alone on her node in a second room, alice hears no peer_left of her
	// own: her node's write alone must drop what it cached.
	room2, err := bob.CreateRoom(ctx, client.CreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Join(ctx, client.Join{Code: room2.Room.Code}); err != nil {
		t.Fatal(err)
	}
	if err := alice.Signal(ctx, bob.PeerID(), room2.Room.ID, "room2"); err != nil {
		t.Fatal(err)
	}
	if err := alice.Leave(ctx, room2.Room.ID); err != nil {
		t.Fatal(err)
	}
	if err := alice.Signal(ctx, bob.PeerID(), room2.Room.ID, "after-leave-room2"); clientErrCode(err) != client.CodePeerNotFound {
		t.Fatalf("signal into room2 after leaving it: %v, want %s", err, client.CodePeerNotFound)
	}

	// Bob leaves on his node: once alice has seen him go, her node does not
	// take him for a member any more.
	if err := alice.Signal(ctx, bob.PeerID(), roomID, "cached"); err != nil {
		t.Fatal(err)
	}
	if err := bob.Leave(ctx, roomID); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, alice, client.TypePeerLeft, func(p client.PeerLeft) bool { return p.PeerID == bob.PeerID() })
	if err := alice.Signal(ctx, bob.PeerID(), roomID, "after-bob-left"); clientErrCode(err) != client.CodePeerNotFound {
		t.Fatalf("signal to bob after his peer_left: %v, want %s", err, client.CodePeerNotFound)
	}

	// Carol joins on bob's node; alice signals her before any peer_joined
	// can have reached alice's node: the cache's "not a member" is checked.
	carol := dial(t, b, "carol", "a2V5")
	if _, err := carol.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}
	if err := alice.Signal(ctx, carol.PeerID(), roomID, "welcome"); err != nil {
		t.Fatalf("signal to a peer that just joined elsewhere: %v", err)
	}
	waitEvent(t, carol, client.TypeSignal, func(s client.Signal) bool { return s.From == alice.PeerID() })
}

// TestResumeOnAnotherNodeReplacesOldConnection: a peer resumes on node b
// while its old connection to node a still lingers (a network change). Node
// a closes the old connection as replaced — as one node does — and does not
// take the peer offline or out of its rooms when it goes.
func TestResumeOnAnotherNodeReplacesOldConnection(t *testing.T) {
	cluster := natstest.StartCluster(t, 1)
	cfg := testConfig(cluster.URLs(), "moved")
	a, b := startNode(t, cfg), startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	old := dial(t, a, "alice", "a2V5")
	bob := dial(t, b, "bob", "a2V5")
	room, err := old.CreateRoom(ctx, client.CreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}
	// The Go client resumes only after a lost connection: speak the protocol
	// for the new one.
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(b.hs.URL, "http")+client.PathWS, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	frames := make(chan client.Envelope, 64)
	write := func(typ string, rid uint64, body any) {
		t.Helper()
		data, _ := json.Marshal(body)
		frame, _ := json.Marshal(client.Envelope{Type: typ, RID: rid, Data: data})
		if err := ws.Write(ctx, websocket.MessageText, frame); err != nil {
			t.Fatal(err)
		}
	}
	write(client.TypeRegister, 1, client.Register{Protocol: client.ProtocolVersion, Name: "alice", PublicKey: "a2V5", ResumeToken: old.Registered().ResumeToken})
	go func() {
		defer close(frames)
		for {
			_, b, err := ws.Read(ctx)
			if err != nil {
				return
			}
			var env client.Envelope
			if json.Unmarshal(b, &env) == nil {
				frames <- env
			}
		}
	}()
	next := func(typ string) client.Envelope {
		t.Helper()
		for {
			select {
			case env, ok := <-frames:
				if !ok {
					t.Fatalf("resumed connection closed while waiting for %s", typ)
				}
				if env.Type == typ {
					return env
				}
			case <-time.After(waitFor):
				t.Fatalf("no %s on the resumed connection", typ)
			}
		}
	}
	var reg client.Registered
	json.Unmarshal(next(client.TypeRegistered).Data, &reg)
	if !reg.Resumed || reg.PeerID != old.PeerID() || len(reg.Rooms) != 1 {
		t.Fatalf("resume on node b: %+v", reg)
	}
	if gone := waitEvent[client.ErrorBody](t, old, client.EventDisconnected, nil); gone.Code != client.CodeResumeFailed {
		t.Fatalf("old connection ended with %+v, want %s", gone, client.CodeResumeFailed)
	}
	waitUntil(t, "node a drops the old connection", func() bool {
		return sumMetric(t, "rendezvous_signaling_connections", nil, a.sreg) == 0
	})
	if err := bob.Signal(ctx, reg.PeerID, room.Room.ID, "still here?"); err != nil {
		t.Fatalf("signal to alice after her old connection went: %v", err)
	}
	next(client.TypeSignal)
	r, err := b.store.Room(ctx, room.Room.ID)
	if err != nil || !r.HasMember(reg.PeerID) {
		t.Fatalf("room after the old connection went: %+v %v", r, err)
	}
	p, err := b.store.Peer(ctx, reg.PeerID)
	if err != nil || !p.Online {
		t.Fatalf("alice's record after the old connection went: %+v %v", p, err)
	}
}

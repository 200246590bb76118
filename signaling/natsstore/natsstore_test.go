package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
	"github.com/rendezvous-p2p/rendezvous/signaling/natsstore/natstest"
)

const waitFor = 20 * time.Second

// node is one rendezvous signaling node (in-process) with its own store.
type node struct {
	store *Store
	reg   *prometheus.Registry // the store's metrics
	sreg  *prometheus.Registry // the signaling server's metrics
	hs    *httptest.Server
	stop  context.CancelFunc
	done  chan error
}

func testConfig(urls []string, prefix string) Config {
	cfg := DefaultConfig()
	cfg.URLs = urls
	cfg.Prefix = prefix
	cfg.PresenceTTL = 3 * time.Second
	if r := os.Getenv("RZV_TEST_REPLICAS"); r != "" {
		cfg.Replicas, _ = strconv.Atoi(r)
	}
	return cfg
}

func startNode(t *testing.T, cfg Config) *node {
	t.Helper()
	return startNodeWith(t, cfg, nil)
}

// startNodeWith starts a node whose server sees wrap(store) (nil: the store).
func startNodeWith(t *testing.T, cfg Config, wrap func(*Store) signaling.Store) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	st, err := New(context.Background(), cfg, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var store signaling.Store = st
	if wrap != nil {
		store = wrap(st)
	}
	scfg := signaling.DefaultConfig()
	scfg.Open = signaling.OpenAll
	// Tests send signals as fast as the round trip allows.
	scfg.MsgRate, scfg.MsgBurst = 10000, 10000
	sreg := prometheus.NewRegistry()
	srv, err := signaling.New(scfg, signaling.Options{Store: store, Registerer: sreg})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{store: st, reg: reg, sreg: sreg, hs: hs, stop: cancel, done: make(chan error, 1)}
	go func() { n.done <- srv.Run(ctx) }()
	<-srv.Ready()
	t.Cleanup(n.shutdown)
	return n
}

func (n *node) shutdown() {
	n.stop()
	<-n.done
	n.hs.Close()
	n.store.Close()
}

// crash is a node dying: its NATS connection and its sockets go at once and
// it writes nothing more to the shared state.
func (n *node) crash() {
	n.store.Close()
	n.hs.CloseClientConnections()
}

func dial(t *testing.T, n *node, name, key string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URL: n.hs.URL, NoReconnect: true, EventBuffer: 1024, Register: client.Register{
		Name: name, PublicKey: key, Candidates: []client.Candidate{{Type: "host", Addr: "127.0.0.1:4000"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitEvent returns the first event of type typ that ok accepts.
func waitEvent[T any](t *testing.T, c *client.Client, typ string, ok func(T) bool) T {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case ev, open := <-c.Events():
			if !open {
				t.Fatalf("client closed while waiting for %s", typ)
			}
			if ev.Type != typ {
				continue
			}
			var v T
			if err := ev.Decode(&v); err != nil {
				t.Fatal(err)
			}
			if ok == nil || ok(v) {
				return v
			}
		case <-timeout:
			t.Fatalf("no %s within %v", typ, waitFor)
		}
	}
}

// waitUntil polls cond (state in another process or goroutine with no event
// to wait on) until it holds or waitFor passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		<-tick.C
	}
}

// TestCrossNode: peers on three rendezvous nodes over a three-server NATS
// cluster meet by join code, see each other's endpoints and keys, exchange
// signals and get a punch schedule; one NATS server killed changes nothing.
func TestCrossNode(t *testing.T) {
	cluster := natstest.StartCluster(t, 3)
	var nodes []*node
	for i := range 3 {
		// Each node talks to a different NATS server first.
		urls := cluster.URLs()
		urls[0], urls[i] = urls[i], urls[0]
		cfg := testConfig(urls, "xnode")
		// This test kills a NATS server; presence must outlast the stream
		// leader election that follows (4-10 s on 2.9 under load), as
		// docs/scale-out.md asks of a deployment, or live nodes get reaped.
		cfg.PresenceTTL = DefaultConfig().PresenceTTL
		nodes = append(nodes, startNode(t, cfg))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alice := dial(t, nodes[0], "alice", "YWxpY2Uta2V5")
	bob := dial(t, nodes[1], "bob", "Ym9iLWtleQ")
	carol := dial(t, nodes[2], "carol", "Y2Fyb2wta2V5")

	created, err := alice.CreateRoom(ctx, client.CreateRoom{Name: "lobby", Public: true, Capacity: 3})
	if err != nil {
		t.Fatal(err)
	}
	code := created.Room.Code
	joined, err := bob.Join(ctx, client.Join{Code: strings.ToLower(code)})
	if err != nil {
		t.Fatal(err)
	}
	if joined.Room.ID != created.Room.ID || len(joined.Members) != 2 {
		t.Fatalf("bob joined %+v", joined)
	}
	for _, m := range joined.Members {
		if m.ID == alice.PeerID() && (m.PublicKey != "YWxpY2Uta2V5" || len(m.Candidates) != 1 || m.Candidates[0].Addr != "127.0.0.1:4000") {
			t.Fatalf("bob sees alice as %+v", m)
		}
	}
	pj := waitEvent(t, alice, client.TypePeerJoined, func(p client.PeerJoined) bool { return p.Peer.ID == bob.PeerID() })
	if pj.Peer.PublicKey != "Ym9iLWtleQ" || pj.Peer.Name != "bob" {
		t.Fatalf("alice sees bob as %+v", pj.Peer)
	}

	// The room is listed on every node.
	for i, n := range []*client.Client{alice, bob, carol} {
		rooms, err := n.ListRooms(ctx, client.ListRooms{})
		if err != nil {
			t.Fatal(err)
		}
		if len(rooms.Rooms) != 1 || rooms.Rooms[0].ID != created.Room.ID || rooms.Rooms[0].Members != 2 {
			t.Fatalf("node %d lists %+v", i, rooms.Rooms)
		}
	}

	if _, err := carol.Join(ctx, client.Join{Code: code}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, bob, client.TypePeerJoined, func(p client.PeerJoined) bool { return p.Peer.ID == carol.PeerID() })

	// A fourth peer finds the room full.
	dave := dial(t, nodes[0], "dave", "ZGF2ZQ")
	var ce *client.Error
	if _, err := dave.Join(ctx, client.Join{Code: code}); !errors.As(err, &ce) || ce.Code != client.CodeRoomFull {
		t.Fatalf("dave join: %v", err)
	}

	signalRoundTrip := func(from, to *client.Client, body string) {
		t.Helper()
		if err := from.Signal(ctx, to.PeerID(), created.Room.ID, map[string]string{"sdp": body}); err != nil {
			t.Fatal(err)
		}
		s := waitEvent(t, to, client.TypeSignal, func(s client.Signal) bool { return s.From == from.PeerID() })
		var got map[string]string
		json.Unmarshal(s.Payload, &got)
		if got["sdp"] != body {
			t.Fatalf("signal payload %s", s.Payload)
		}
	}
	signalRoundTrip(alice, bob, "offer")
	signalRoundTrip(bob, alice, "answer")
	signalRoundTrip(carol, alice, "hello from node 3")

	// Punch schedule across nodes: both sides get the same session and start.
	ack, err := alice.Connect(ctx, client.Connect{PeerID: carol.PeerID(), RoomID: created.Room.ID})
	if err != nil || len(ack.Sessions) != 1 {
		t.Fatalf("connect: %v %+v", err, ack)
	}
	pa := waitEvent(t, alice, client.TypePunch, func(p client.Punch) bool { return p.SessionID == ack.Sessions[0] })
	pc := waitEvent(t, carol, client.TypePunch, func(p client.Punch) bool { return p.SessionID == ack.Sessions[0] })
	if pa.StartAt != pc.StartAt || pa.Role == pc.Role || pa.Peer.ID != carol.PeerID() || pc.Peer.ID != alice.PeerID() || pc.Peer.PublicKey != "YWxpY2Uta2V5" {
		t.Fatalf("punch alice %+v carol %+v", pa, pc)
	}

	// Kill one NATS server (the one node 0 talks to first): signaling goes on.
	cluster.Servers[0].Kill()
	// Frames in flight on the dead server's sockets are lost (core NATS is
	// at most once); what is sent once the nodes have reconnected arrives.
	for i, n := range nodes {
		waitUntil(t, fmt.Sprintf("node %d reconnected", i), n.store.Connected)
	}
	signalRoundTrip(alice, bob, "after nats server loss")
	signalRoundTrip(carol, alice, "after nats server loss 2")
	erin := dial(t, nodes[0], "erin", "ZXJpbg")
	room2, err := erin.CreateRoom(ctx, client.CreateRoom{Name: "second"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dave.Join(ctx, client.Join{Code: room2.Room.Code}); err != nil {
		t.Fatal(err)
	}
	if err := bob.Leave(ctx, created.Room.ID); err != nil {
		t.Fatal(err)
	}
	left := waitEvent(t, carol, client.TypePeerLeft, func(p client.PeerLeft) bool { return p.PeerID == bob.PeerID() })
	if left.Reason != "left" {
		t.Fatalf("peer_left %+v", left)
	}
}

// TestConcurrentJoinsRespectCapacity: peers on three nodes race to join one
// room; exactly capacity get in.
func TestConcurrentJoinsRespectCapacity(t *testing.T) {
	cluster := natstest.StartCluster(t, 3)
	var nodes []*node
	for i := range 3 {
		urls := cluster.URLs()
		urls[0], urls[i] = urls[i], urls[0]
		nodes = append(nodes, startNode(t, testConfig(urls, "race")))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	host := dial(t, nodes[0], "host", "")
	const capacity = 5
	room, err := host.CreateRoom(ctx, client.CreateRoom{Capacity: capacity})
	if err != nil {
		t.Fatal(err)
	}
	const joiners = 24
	var clients []*client.Client
	for i := range joiners {
		clients = append(clients, dial(t, nodes[i%3], fmt.Sprintf("j%d", i), ""))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	in, full := 0, 0
	start := make(chan struct{})
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := c.Join(ctx, client.Join{Code: room.Room.Code})
			var ce *client.Error
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				in++
			case errors.As(err, &ce) && ce.Code == client.CodeRoomFull:
				full++
			default:
				t.Errorf("join: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if in != capacity-1 || full != joiners-(capacity-1) {
		t.Fatalf("%d joined, %d refused; want %d and %d", in, full, capacity-1, joiners-(capacity-1))
	}
	r, err := nodes[1].store.Room(ctx, room.Room.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Members) != capacity {
		t.Fatalf("room has %d members", len(r.Members))
	}
}

// TestKilledNodePeersLeave: when a rendezvous node dies, its peers leave
// their rooms on the other nodes within presence-ttl + presence-ttl/3 (plus
// the time to process them), with host migration.
func TestKilledNodePeersLeave(t *testing.T) {
	cluster := natstest.StartCluster(t, 3)
	cfg := testConfig(cluster.URLs(), "kill")
	a, b, c := startNode(t, cfg), startNode(t, cfg), startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	doomed := dial(t, a, "doomed", "")
	other := dial(t, c, "other", "")
	doomed2 := dial(t, a, "doomed2", "")
	survivor := dial(t, b, "survivor", "")
	room, err := doomed.CreateRoom(ctx, client.CreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := survivor.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}
	if _, err := doomed2.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, survivor, client.TypePeerJoined, func(p client.PeerJoined) bool { return p.Peer.ID == other.PeerID() })

	killed := time.Now()
	a.crash()
	gone := map[string]bool{}
	newHost := ""
	for len(gone) < 2 {
		pl := waitEvent(t, survivor, client.TypePeerLeft, func(client.PeerLeft) bool { return true })
		if pl.RoomID != room.Room.ID || pl.Reason != "timeout" {
			t.Fatalf("peer_left %+v", pl)
		}
		gone[pl.PeerID] = true
		if pl.NewHost != "" {
			newHost = pl.NewHost
		}
	}
	took := time.Since(killed)
	bound := cfg.PresenceTTL + cfg.PresenceTTL/3 + 2*time.Second
	t.Logf("peers of the killed node left after %v (bound %v)", took.Round(time.Millisecond), bound)
	if took > bound {
		t.Fatalf("took %v, documented bound %v", took, bound)
	}
	if !gone[doomed.PeerID()] || !gone[doomed2.PeerID()] || newHost != survivor.PeerID() {
		t.Fatalf("gone %v new host %q", gone, newHost)
	}
	// The peer on the third node was told as well, and both survivors still
	// talk across nodes.
	waitEvent(t, other, client.TypePeerLeft, func(p client.PeerLeft) bool { return p.PeerID == doomed2.PeerID() })
	if err := other.Signal(ctx, survivor.PeerID(), room.Room.ID, "still here"); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, survivor, client.TypeSignal, func(s client.Signal) bool { return s.From == other.PeerID() })
	if reaped := testutil.ToFloat64(b.store.metrics.reaped) + testutil.ToFloat64(c.store.metrics.reaped); reaped != 2 {
		t.Fatalf("rendezvous_nats_reaped_peers_total over the survivors = %v, want 2", reaped)
	}
	r, err := b.store.Room(ctx, room.Room.ID)
	if err != nil || len(r.Members) != 2 || r.Host != survivor.PeerID() {
		t.Fatalf("room after reap: %+v %v", r, err)
	}
	if _, err := b.store.Peer(ctx, doomed.PeerID()); !errors.Is(err, signaling.ErrNotFound) {
		t.Fatalf("doomed peer record: %v", err)
	}
}

// TestNATSOutage: with NATS gone, requests that need the shared state fail
// with a message that says so; once NATS is back the nodes reconnect by
// themselves, nobody has been reaped, and signaling works again.
func TestNATSOutage(t *testing.T) {
	cluster := natstest.StartCluster(t, 1)
	cfg := testConfig(cluster.URLs(), "outage")
	cfg.OpTimeout = 2 * time.Second
	a, b := startNode(t, cfg), startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	alice := dial(t, a, "alice", "")
	bob := dial(t, b, "bob", "")
	room, err := alice.CreateRoom(ctx, client.CreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}

	cluster.Servers[0].Kill()
	waitUntil(t, "node a sees the outage", func() bool { return !a.store.Connected() })
	// Every request that needs the shared state gets the same stable code.
	unavailable := func(what string, err error) {
		t.Helper()
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != client.CodeUnavailable || !strings.Contains(ce.Message, "shared state (NATS) unreachable") {
			t.Errorf("%s during the outage: %v, want code %q", what, err, client.CodeUnavailable)
		}
	}
	unavailable("update_peer", alice.UpdatePeer(ctx, client.UpdatePeer{Candidates: []client.Candidate{{Type: "host", Addr: "127.0.0.1:5000"}}}))
	_, err = alice.CreateRoom(ctx, client.CreateRoom{})
	unavailable("create_room", err)
	_, err = bob.Join(ctx, client.Join{Code: room.Room.Code})
	unavailable("join", err)
	unavailable("signal", alice.Signal(ctx, "", room.Room.ID, "during"))

	if err := cluster.Servers[0].Restart(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{a, b} {
		waitUntil(t, "reconnected", n.store.Connected)
	}
	// Signals flow again between the two nodes, in the same room.
	waitUntil(t, "signal after the outage", func() bool {
		return alice.Signal(ctx, bob.PeerID(), room.Room.ID, "after") == nil
	})
	waitEvent(t, bob, client.TypeSignal, func(s client.Signal) bool { return string(s.Payload) == `"after"` })
	if _, err := alice.CreateRoom(ctx, client.CreateRoom{}); err != nil {
		t.Fatal(err)
	}
	r, err := b.store.Room(ctx, room.Room.ID)
	if err != nil || len(r.Members) != 2 {
		t.Fatalf("room after the outage: %+v %v", r, err)
	}
}

// TestKeyEscaping: any room id maps to one valid key token and back.
func TestKeyEscaping(t *testing.T) {
	for _, id := range []string{"r_abc", "a.b", "..", "", "=", "x=2Ey", "sp ace/ü", "-_"} {
		k := escape(id)
		if strings.ContainsAny(k, ". *>") || k == "" {
			t.Errorf("escape(%q) = %q: not one key token", id, k)
		}
		if got := unescape(k); got != id {
			t.Errorf("unescape(escape(%q)) = %q", id, got)
		}
	}
}

func FuzzKeyEscaping(f *testing.F) {
	for _, s := range []string{"r_abc", "a.b", "=", "=4", "=zz", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		k := escape(id)
		if strings.ContainsAny(k, ". *>") || k == "" {
			t.Fatalf("escape(%q) = %q", id, k)
		}
		if got := unescape(k); got != id {
			t.Fatalf("unescape(escape(%q)) = %q", id, got)
		}
		unescape(id) // never panics on arbitrary keys
	})
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := DefaultConfig()
	bad.URLs = nil
	bad.Prefix = "a.b"
	bad.PresenceTTL = time.Second
	bad.CredsFile = "/nonexistent/x.creds"
	bad.TLS.CertFile = "/nonexistent/c.pem"
	err := bad.Validate()
	for _, want := range []string{"urls:", "prefix:", "presence-ttl:", "creds-file:", "tls: cert-file and key-file"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to mention %q", err, want)
		}
	}
}

// TestSweep: a room left empty by a node that died before its removal timer
// fired, and a join code whose room was never written, are removed; live
// rooms and their codes stay.
func TestSweep(t *testing.T) {
	cluster := natstest.StartCluster(t, 1)
	st, err := New(context.Background(), testConfig(cluster.URLs(), "sweep"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now()
	live := &signaling.Room{ID: "r_live", Code: "LIVE22", Capacity: 4, Members: []signaling.Member{{PeerID: "p_a", JoinedAt: now}}, CreatedAt: now}
	empty := &signaling.Room{ID: "r_empty", Code: "EMPTY2", Capacity: 4, CreatedAt: now, EmptySince: now.Add(-time.Hour)}
	for _, r := range []*signaling.Room{live, empty} {
		if err := st.CreateRoom(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.rooms.put(ctx, codeKey("DANGL2"), []byte("r_never_written")); err != nil {
		t.Fatal(err)
	}
	rooms, codes := st.sweep(ctx, time.Now().Add(time.Hour))
	if rooms != 1 || codes != 1 {
		t.Fatalf("swept %d rooms, %d codes; want 1 and 1", rooms, codes)
	}
	if _, err := st.Room(ctx, "r_empty"); !errors.Is(err, signaling.ErrNotFound) {
		t.Fatalf("empty room: %v", err)
	}
	if _, err := st.RoomByCode(ctx, "EMPTY2"); !errors.Is(err, signaling.ErrNotFound) {
		t.Fatalf("empty room's code: %v", err)
	}
	if _, err := st.rooms.get(ctx, codeKey("DANGL2")); !isMissing(err) {
		t.Fatalf("dangling code: %v", err)
	}
	if r, err := st.RoomByCode(ctx, "LIVE22"); err != nil || r.ID != "r_live" {
		t.Fatalf("live room: %+v %v", r, err)
	}
}

package signaling

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/rendezvous-p2p/rendezvous/internal/turncreds"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

var testTURNSecret = []byte("turn-secret-for-tests")

func withTURN(o *Options) {
	o.ICEServers = TURNServers([]string{"stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"}, testTURNSecret, time.Hour)
}

func TestRegister(t *testing.T) {
	ts := startServer(t, DefaultConfig(), withTURN)
	r := mustRaw(t, ts.WS)
	before := time.Now()
	reg := r.register("alice")
	if !strings.HasPrefix(reg.PeerID, "p_") || reg.ResumeToken == "" || reg.PeerToken == "" {
		t.Fatalf("registered lacks ids/tokens: %+v", reg)
	}
	if len(reg.PeerToken) > 64 {
		t.Fatalf("peer token %d bytes, over the STUN attribute limit", len(reg.PeerToken))
	}
	if st := time.UnixMilli(reg.ServerTime); st.Before(before.Add(-time.Second)) || st.After(time.Now().Add(time.Second)) {
		t.Fatalf("server_time %v not near now", st)
	}
	if reg.Limits.MaxFrameBytes != DefaultConfig().MaxFrameBytes || reg.Limits.PingIntervalMS != 15000 || reg.Limits.MissedPings != 3 {
		t.Fatalf("limits = %+v", reg.Limits)
	}
	if len(reg.ICEServers) != 2 || reg.ICEServers[1].Username == "" {
		t.Fatalf("ice servers = %+v", reg.ICEServers)
	}
	// The TURN credential must verify with the relay's secret.
	turn := reg.ICEServers[1]
	if turncreds.Password(testTURNSecret, turn.Username) != turn.Credential {
		t.Fatal("TURN credential does not verify with the shared secret")
	}
	if _, user, err := turncreds.ParseUsername(turn.Username, time.Now()); err != nil || user != reg.PeerID {
		t.Fatalf("TURN username %q: user %q err %v", turn.Username, user, err)
	}
	r.wantError(client.TypeRegister, client.Register{Protocol: 1, Name: "again"}, client.CodeAlreadyRegistered)

	r2 := mustRaw(t, ts.WS)
	r2.wantError(client.TypeJoin, client.Join{Code: "ABCDEF"}, client.CodeNotRegistered)
	r2.wantError(client.TypeRegister, client.Register{Protocol: 2, Name: "bob"}, client.CodeUnsupportedProtocol)
	r2.wantError(client.TypeRegister, client.Register{Protocol: 1}, client.CodeBadRequest)
	r2.wantError(client.TypeRegister, client.Register{Protocol: 1, Name: "bob", Candidates: []client.Candidate{{Type: "host", Addr: "nope"}}}, client.CodeBadRequest)
}

func TestICEServersHTTP(t *testing.T) {
	ts := startServer(t, DefaultConfig(), withTURN)
	resp, err := client.FetchICEServers(context.Background(), nil, ts.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.ICEServers) != 2 || resp.ICEServers[1].Credential == "" || resp.ExpiresAt <= time.Now().UnixMilli() {
		t.Fatalf("ice-servers = %+v", resp)
	}
	cfg := DefaultConfig()
	cfg.Open = OpenNone
	ts2 := startServer(t, cfg, withTURN)
	_, err = client.FetchICEServers(context.Background(), nil, ts2.URL, "")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != client.CodeUnauthorized {
		t.Fatalf("without credentials in closed mode: %v", err)
	}
}

// createAndJoin sets up host a with a room and b joined by code.
func createAndJoin(t *testing.T, a, b *raw, capacity int) (client.RoomJoined, client.RoomJoined) {
	t.Helper()
	var created client.RoomJoined
	a.mustCall(client.TypeCreateRoom, client.CreateRoom{Name: "lobby", Capacity: capacity, Public: true,
		Metadata: json.RawMessage(`{"map":"dust"}`)}, &created)
	var joined client.RoomJoined
	b.mustCall(client.TypeJoin, client.Join{Code: strings.ToLower(created.Room.Code)}, &joined)
	return created, joined
}

func TestRoomCreateJoinByCodeMembers(t *testing.T) {
	ts := startServer(t, DefaultConfig(), withTURN)
	a, b := mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	ra, rb := a.register("alice"), b.register("bob")
	created, joined := createAndJoin(t, a, b, 4)

	code := created.Room.Code
	if len(code) != JoinCodeLen || strings.ContainsAny(code, "01ILOUV") {
		t.Fatalf("join code %q has wrong length or look-alike characters", code)
	}
	if created.Room.Host != ra.PeerID || created.Room.Members != 1 || len(created.Members) != 1 {
		t.Fatalf("created = %+v", created)
	}
	if joined.Room.ID != created.Room.ID || joined.Room.Members != 2 || len(joined.Members) != 2 {
		t.Fatalf("joined = %+v", joined)
	}
	if len(joined.ICEServers) == 0 || joined.ICEServers[len(joined.ICEServers)-1].Credential == "" {
		t.Fatal("join carries no TURN credentials")
	}
	byID := map[string]client.PeerInfo{}
	for _, m := range joined.Members {
		byID[m.ID] = m
	}
	if m := byID[ra.PeerID]; m.Name != "alice" || m.PublicKey != "pk-alice" || len(m.Candidates) != 1 || m.Candidates[0].Addr != "192.0.2.1:4000" {
		t.Fatalf("alice as seen by bob = %+v", m)
	}
	if _, ok := byID[rb.PeerID]; !ok {
		t.Fatal("joiner missing from member list")
	}
	ev := decode[client.PeerJoined](t, a.next(client.TypePeerJoined))
	if ev.RoomID != created.Room.ID || ev.Peer.ID != rb.PeerID || ev.Peer.PublicKey != "pk-bob" {
		t.Fatalf("peer_joined = %+v", ev)
	}

	// Public listing, filtered by game and paged.
	var rooms client.Rooms
	b.mustCall(client.TypeListRooms, client.ListRooms{}, &rooms)
	if len(rooms.Rooms) != 1 || rooms.Rooms[0].ID != created.Room.ID || rooms.Rooms[0].Members != 2 {
		t.Fatalf("list = %+v", rooms)
	}
	b.mustCall(client.TypeListRooms, client.ListRooms{Game: "other"}, &rooms)
	if len(rooms.Rooms) != 0 {
		t.Fatalf("game filter ignored: %+v", rooms)
	}

	// Metadata update by the host reaches the other member.
	var upd client.RoomUpdated
	a.mustCall(client.TypeUpdateRoom, client.UpdateRoom{RoomID: created.Room.ID, Metadata: json.RawMessage(`{"map":"nuke"}`)}, &upd)
	ev2 := decode[client.RoomUpdated](t, b.next(client.TypeRoomUpdated))
	if ev2.Reason != "metadata" || string(ev2.Room.Metadata) != `{"map":"nuke"}` {
		t.Fatalf("room_updated = %+v", ev2)
	}
	b.wantError(client.TypeUpdateRoom, client.UpdateRoom{RoomID: created.Room.ID, Metadata: json.RawMessage(`{}`)}, client.CodeNotHost)

	// Errors for joins that cannot work.
	c := mustRaw(t, ts.WS)
	c.register("carol")
	c.wantError(client.TypeJoin, client.Join{Code: "ZZZZZZ"}, client.CodeRoomNotFound)
	c.wantError(client.TypeJoin, client.Join{}, client.CodeBadRequest)
}

func TestListRoomsPaged(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	a := mustRaw(t, ts.WS)
	a.register("alice")
	for range 5 {
		a.mustCall(client.TypeCreateRoom, client.CreateRoom{Public: true}, nil)
	}
	a.mustCall(client.TypeCreateRoom, client.CreateRoom{Public: false}, nil)
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		var rooms client.Rooms
		a.mustCall(client.TypeListRooms, client.ListRooms{Cursor: cursor, Limit: 2}, &rooms)
		for _, r := range rooms.Rooms {
			if seen[r.ID] || !r.Public {
				t.Fatalf("room %s listed twice or private", r.ID)
			}
			seen[r.ID] = true
		}
		if rooms.NextCursor == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		cursor = rooms.NextCursor
	}
	if len(seen) != 5 {
		t.Fatalf("listed %d public rooms, want 5", len(seen))
	}
}

func TestLeaveEventsAndHostMigration(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	a, b, c := mustRaw(t, ts.WS), mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	ra, rb, rc := a.register("alice"), b.register("bob"), c.register("carol")
	created, _ := createAndJoin(t, a, b, 4)
	c.mustCall(client.TypeJoin, client.Join{RoomID: created.Room.ID}, nil)

	// Host leaves: bob (longest-standing member) becomes host.
	a.mustCall(client.TypeLeave, client.Leave{RoomID: created.Room.ID}, nil)
	for _, r := range []*raw{b, c} {
		left := decode[client.PeerLeft](t, r.next(client.TypePeerLeft))
		if left.PeerID != ra.PeerID || left.Reason != "left" || left.NewHost != rb.PeerID {
			t.Fatalf("peer_left = %+v", left)
		}
		upd := decode[client.RoomUpdated](t, r.next(client.TypeRoomUpdated))
		if upd.Reason != "host_migrated" || upd.Room.Host != rb.PeerID || upd.Room.Members != 2 {
			t.Fatalf("room_updated = %+v", upd)
		}
	}
	a.wantError(client.TypeLeave, client.Leave{RoomID: created.Room.ID}, client.CodeNotInRoom)
	// The new host can update the room; carol cannot.
	b.mustCall(client.TypeUpdateRoom, client.UpdateRoom{RoomID: created.Room.ID, Metadata: json.RawMessage(`1`)}, nil)
	c.wantError(client.TypeUpdateRoom, client.UpdateRoom{RoomID: created.Room.ID, Metadata: json.RawMessage(`2`)}, client.CodeNotHost)

	// A non-host leaving: no migration.
	c.mustCall(client.TypeLeave, client.Leave{RoomID: created.Room.ID}, nil)
	left := decode[client.PeerLeft](t, b.next(client.TypePeerLeft))
	if left.PeerID != rc.PeerID || left.NewHost != "" {
		t.Fatalf("peer_left = %+v", left)
	}
}

func TestHeartbeatTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PingInterval = 30 * time.Millisecond
	cfg.MissedPings = 3
	ts := startServer(t, cfg)
	a, b := mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	a.register("alice")
	rb := b.register("bob")
	created, _ := createAndJoin(t, a, b, 4)
	b.setNoPong() // bob stops answering pings
	left := decode[client.PeerLeft](t, a.next(client.TypePeerLeft))
	if left.PeerID != rb.PeerID || left.Reason != "timeout" || left.RoomID != created.Room.ID {
		t.Fatalf("peer_left = %+v", left)
	}
	b.waitClosed()
	if got := testutil.ToFloat64(ts.metrics.disconnects.WithLabelValues("timeout")); got != 1 {
		t.Fatalf("timeout disconnects = %v", got)
	}
	// alice answered every ping and is still served.
	var rooms client.Rooms
	a.mustCall(client.TypeListRooms, client.ListRooms{}, &rooms)
}

func TestSignalDelivery(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	a, b, c, outsider := mustRaw(t, ts.WS), mustRaw(t, ts.WS), mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	ra, rb, rc := a.register("alice"), b.register("bob"), c.register("carol")
	outsider.register("mallory")
	created, _ := createAndJoin(t, a, b, 4)
	c.mustCall(client.TypeJoin, client.Join{RoomID: created.Room.ID}, nil)

	sdp := json.RawMessage(`{"sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1","type":"offer"}`)
	a.mustCall(client.TypeSignal, client.Signal{To: rb.PeerID, Payload: sdp}, nil)
	got := decode[client.Signal](t, b.next(client.TypeSignal))
	if got.From != ra.PeerID || got.RoomID != created.Room.ID || string(got.Payload) != string(sdp) {
		t.Fatalf("signal = %+v", got)
	}
	// Broadcast to the room.
	a.mustCall(client.TypeSignal, client.Signal{RoomID: created.Room.ID, Payload: json.RawMessage(`"hi all"`)}, nil)
	for _, r := range []*raw{b, c} {
		got := decode[client.Signal](t, r.next(client.TypeSignal))
		if got.From != ra.PeerID || string(got.Payload) != `"hi all"` {
			t.Fatalf("broadcast = %+v", got)
		}
	}
	// No signalling outside a shared room.
	outsider.wantError(client.TypeSignal, client.Signal{To: ra.PeerID, Payload: sdp}, client.CodePeerNotFound)
	outsider.wantError(client.TypeSignal, client.Signal{RoomID: created.Room.ID, Payload: sdp}, client.CodeNotInRoom)
	a.wantError(client.TypeSignal, client.Signal{To: rc.PeerID}, client.CodeBadRequest)
}

func TestResumeAfterReconnect(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	a := mustRaw(t, ts.WS)
	a.register("alice")
	b := mustRaw(t, ts.WS)
	rb := b.register("bob")
	created, _ := createAndJoin(t, a, b, 4)

	b.ws.CloseNow() // bob's network drops
	left := decode[client.PeerLeft](t, a.next(client.TypePeerLeft))
	if left.PeerID != rb.PeerID || left.Reason != "disconnected" {
		t.Fatalf("peer_left = %+v", left)
	}
	b2 := mustRaw(t, ts.WS)
	var reg client.Registered
	b2.mustCall(client.TypeRegister, client.Register{Protocol: 1, Name: "bob", ResumeToken: rb.ResumeToken}, &reg)
	if !reg.Resumed || reg.PeerID != rb.PeerID || len(reg.Rooms) != 1 || reg.Rooms[0].ID != created.Room.ID {
		t.Fatalf("resume = %+v", reg)
	}
	back := decode[client.PeerJoined](t, a.next(client.TypePeerJoined))
	if back.Peer.ID != rb.PeerID || !back.Resumed {
		t.Fatalf("peer_joined = %+v", back)
	}
	// Signals reach the resumed session.
	a.mustCall(client.TypeSignal, client.Signal{To: rb.PeerID, Payload: json.RawMessage(`1`)}, nil)
	b2.next(client.TypeSignal)

	// A bad token is refused with resume_failed.
	b3 := mustRaw(t, ts.WS)
	b3.wantError(client.TypeRegister, client.Register{Protocol: 1, Name: "bob", ResumeToken: rb.PeerID + ".wrong"}, client.CodeResumeFailed)
}

func TestResumeGraceOver(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ResumeGrace = time.Millisecond
	ts := startServer(t, cfg)
	b := mustRaw(t, ts.WS)
	rb := b.register("bob")
	b.ws.CloseNow()
	eventually(t, "peer record removed after grace", func() bool {
		_, err := ts.store.Peer(context.Background(), rb.PeerID)
		return errors.Is(err, ErrNotFound)
	})
	b2 := mustRaw(t, ts.WS)
	b2.wantError(client.TypeRegister, client.Register{Protocol: 1, Name: "bob", ResumeToken: rb.ResumeToken}, client.CodeResumeFailed)
}

func TestGoClientReconnectResumes(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	ctx := context.Background()
	a, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "alice"}, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "bob"}, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	room, err := a.CreateRoom(ctx, client.CreateRoom{Name: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
		t.Fatal(err)
	}
	id := b.PeerID()
	// Cut bob's connection from the server side.
	ts.mu.Lock()
	conn := ts.local[id]
	ts.mu.Unlock()
	conn.ws.CloseNow()
	for ev := range b.Events() {
		if ev.Type == client.EventReconnected {
			var reg client.Registered
			ev.Decode(&reg)
			if !reg.Resumed || reg.PeerID != id || len(reg.Rooms) != 1 {
				t.Fatalf("reconnected = %+v", reg)
			}
			break
		}
	}
	if err := a.Signal(ctx, id, "", map[string]string{"hello": "again"}); err != nil {
		t.Fatal(err)
	}
	for ev := range b.Events() {
		if ev.Type == client.TypeSignal {
			var s client.Signal
			ev.Decode(&s)
			if string(s.Payload) != `{"hello":"again"}` {
				t.Fatalf("signal = %s", s.Payload)
			}
			return
		}
	}
	t.Fatal("events closed")
}

// A game that restarts dials with its previous run's resume token and gets its
// peer id and rooms back; a token the server no longer knows registers afresh.
func TestGoClientDialResumes(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	ctx := context.Background()
	a, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "alice"}, NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	room, err := a.CreateRoom(ctx, client.CreateRoom{Name: "r"})
	if err != nil {
		t.Fatal(err)
	}
	first := a.Registered()
	// The game dies: its connection drops without a goodbye.
	ts.mu.Lock()
	conn := ts.local[first.PeerID]
	ts.mu.Unlock()
	conn.ws.CloseNow()
	for range a.Events() { // closed when the client gave up
	}

	again, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "alice", ResumeToken: first.ResumeToken}, NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if reg := again.Registered(); !reg.Resumed || reg.PeerID != first.PeerID || len(reg.Rooms) != 1 || reg.Rooms[0].ID != room.Room.ID {
		t.Fatalf("dial with the resume token: %+v, want peer %s back in room %s", reg, first.PeerID, room.Room.ID)
	}
	fresh, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "bob", ResumeToken: "stale-token"}, NoReconnect: true})
	if err != nil {
		t.Fatalf("a stale resume token: %v, want a fresh registration", err)
	}
	defer fresh.Close()
	if reg := fresh.Registered(); reg.Resumed || reg.PeerID == "" {
		t.Fatalf("stale token: %+v", reg)
	}
}

// turnServersOf keeps the ICE servers with TURN credentials.
func turnServersOf(ice []client.ICEServer) []client.ICEServer {
	var out []client.ICEServer
	for _, s := range ice {
		if s.Username != "" {
			out = append(out, s)
		}
	}
	return out
}

// get_ice_servers hands a registered peer its ICE servers with credentials
// minted now, for renewing its relay allocations.
func TestGetICEServers(t *testing.T) {
	ts := startServer(t, DefaultConfig(), withTURN)
	c, err := client.Dial(context.Background(), client.Config{URL: ts.URL, Register: client.Register{Name: "host"}, NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ice, err := c.ICEServers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	turn := turnServersOf(ice)
	if len(turn) == 0 || !strings.HasSuffix(turn[0].Username, ":"+c.PeerID()) {
		t.Fatalf("ice servers %+v: want TURN credentials for %s", ice, c.PeerID())
	}
	raw := mustRaw(t, ts.WS)
	raw.wantError(client.TypeGetICEServers, client.GetICEServers{}, client.CodeNotRegistered)
}

func TestAuthTokens(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Open = OpenNone
	cfg.APIKeys = []string{"operator-key-0123456789"}
	cfg.JoinTokenSecrets = []string{"backend-secret-0123456789", "old-secret-0123456789abc"}
	ts := startServer(t, cfg)
	now := time.Now()
	mint := func(secret string, c JoinClaims, ttl time.Duration) string {
		tok, err := MintJoinToken([]byte(secret), c, ttl, now)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	rejected := func(token, code string) {
		t.Helper()
		r, err := dialRaw(t, ts.WS, token)
		if err != nil {
			t.Fatal(err)
		}
		r.start()
		env := r.next(client.TypeError)
		if e := decode[client.ErrorBody](t, env); e.Code != code {
			t.Fatalf("token %q: error %+v, want %s", token, e, code)
		}
		if err := r.waitClosed(); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
			t.Fatalf("close = %v", err)
		}
	}
	rejected("", client.CodeUnauthorized)
	rejected("not-a-key", client.CodeUnauthorized)
	rejected(mint("backend-secret-0123456789", JoinClaims{Expires: now.Add(-time.Second).Unix()}, 0), client.CodeTokenExpired)
	rejected(mint("some-other-secret-xxxxxxx", JoinClaims{}, time.Minute), client.CodeUnauthorized)
	tok := mint("backend-secret-0123456789", JoinClaims{}, time.Minute)
	rejected(tok[:len(tok)-2]+"xx", client.CodeUnauthorized)

	// API key: full access.
	op, err := dialRaw(t, ts.WS, "operator-key-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	op.start()
	op.register("operator")
	var other client.RoomJoined
	op.mustCall(client.TypeCreateRoom, client.CreateRoom{ID: "other-room"}, &other)

	// Rotated secret still verifies; claims are enforced.
	tok = mint("old-secret-0123456789abc", JoinClaims{Room: "match-42", Name: "dave"}, time.Minute)
	d, err := dialRaw(t, ts.WS, tok)
	if err != nil {
		t.Fatal(err)
	}
	d.start()
	d.wantError(client.TypeRegister, client.Register{Protocol: 1, Name: "eve"}, client.CodeForbidden)
	var reg client.Registered
	d.mustCall(client.TypeRegister, client.Register{Protocol: 1}, &reg) // name from the claim
	d.wantError(client.TypeJoin, client.Join{Code: other.Room.Code}, client.CodeForbidden)
	d.wantError(client.TypeCreateRoom, client.CreateRoom{ID: "elsewhere"}, client.CodeForbidden)
	var mine client.RoomJoined
	d.mustCall(client.TypeCreateRoom, client.CreateRoom{ID: "match-42"}, &mine)
	if mine.Members[0].Name != "dave" {
		t.Fatalf("member = %+v", mine.Members[0])
	}
	// ?token= works for browsers.
	q, err := dialRaw(t, ts.WS+"?token="+mint("backend-secret-0123456789", JoinClaims{Room: "match-42"}, time.Minute), "")
	if err != nil {
		t.Fatal(err)
	}
	q.start()
	q.register("quinn")
	q.mustCall(client.TypeJoin, client.Join{RoomID: "match-42"}, nil)
}

func TestOpenLoopbackDefault(t *testing.T) {
	s, err := New(DefaultConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		remote string
		ok     bool
	}{{"127.0.0.1:5000", true}, {"[::1]:5000", true}, {"203.0.113.9:5000", false}} {
		ip := netip.MustParseAddrPort(tc.remote).Addr()
		req := httptestRequest(t, "")
		if _, e := s.authenticate(req, ip); (e == nil) != tc.ok {
			t.Errorf("%s: admitted=%v, want %v (%v)", tc.remote, e == nil, tc.ok, e)
		}
	}
}

func TestObservePeerToken(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	a, b := mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	a.register("alice")
	rb := b.register("bob")
	createAndJoin(t, a, b, 4)
	from := netip.MustParseAddrPort("[::ffff:198.51.100.7]:40000")
	ts.ObservePeerToken("unknown.token", from)
	ts.ObservePeerToken(rb.PeerID+".forged", from)
	ts.ObservePeerToken(rb.PeerToken, from)
	refl := decode[client.Reflexive](t, b.next(client.TypeReflexive))
	if refl.Addr != "198.51.100.7:40000" {
		t.Fatalf("reflexive = %q", refl.Addr)
	}
	upd := decode[client.PeerUpdated](t, a.next(client.TypePeerUpdated))
	if upd.Peer.ID != rb.PeerID || upd.Peer.Reflexive != "198.51.100.7:40000" {
		t.Fatalf("peer_updated = %+v", upd)
	}
	if got := testutil.ToFloat64(ts.metrics.stunObservations.WithLabelValues("unknown_token")); got != 2 {
		t.Fatalf("unknown tokens counted %v, want 2", got)
	}
}

func TestConnectPunchSchedule(t *testing.T) {
	ts := startServer(t, DefaultConfig(), withTURN)
	a, b := mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	ra := a.register("alice")
	rb := b.register("bob")
	a.mustCall(client.TypeUpdatePeer, client.UpdatePeer{NAT: &client.NATReport{Type: "endpoint-independent"}}, nil)
	b.mustCall(client.TypeUpdatePeer, client.UpdatePeer{NAT: &client.NATReport{Type: "address-port-dependent"}}, nil)
	created, _ := createAndJoin(t, a, b, 4)
	var ack client.ConnectAck
	a.mustCall(client.TypeConnect, client.Connect{PeerID: rb.PeerID}, &ack)
	if len(ack.Sessions) != 1 {
		t.Fatalf("ack = %+v", ack)
	}
	pa := decode[client.Punch](t, a.next(client.TypePunch))
	pb := decode[client.Punch](t, b.next(client.TypePunch))
	if pa.SessionID != ack.Sessions[0] || pb.SessionID != pa.SessionID || pa.StartAt != pb.StartAt {
		t.Fatalf("punch a=%+v b=%+v", pa, pb)
	}
	if pa.Peer.ID != rb.PeerID || pa.Peer.PublicKey != "pk-bob" || pb.Peer.ID != ra.PeerID || len(pb.Peer.Candidates) != 1 {
		t.Fatalf("punch peers a=%+v b=%+v", pa.Peer, pb.Peer)
	}
	if pa.Role == pb.Role || pa.StartAt <= pa.ServerTime || pa.Attempts < 1 || len(pa.ICEServers) == 0 {
		t.Fatalf("punch schedule a=%+v b=%+v", pa, pb)
	}
	a.mustCall(client.TypeConnectResult, client.ConnectResult{SessionID: pa.SessionID, PeerID: rb.PeerID, Outcome: "direct", DurationMS: 42}, nil)
	// The prober's report counts its probes even when it is not the first.
	b.mustCall(client.TypeConnectResult, client.ConnectResult{SessionID: pa.SessionID, PeerID: ra.PeerID, Outcome: "direct", DurationMS: 40, Probes: 300}, nil)
	pair := "address-port-dependent+endpoint-independent"
	var probes dto.Metric
	ts.metrics.connectProbes.WithLabelValues("direct", pair).(prometheus.Metric).Write(&probes)
	if h := probes.GetHistogram(); h.GetSampleCount() != 1 || h.GetSampleSum() != 300 {
		t.Fatalf("probes histogram for %s: count %d sum %v, want 1 observation of 300", pair, h.GetSampleCount(), h.GetSampleSum())
	}
	if got := testutil.ToFloat64(ts.metrics.connectOutcomes.WithLabelValues("direct", pair)); got != 1 {
		t.Fatalf("direct outcomes for %s = %v, want 1 (one per session)", pair, got)
	}
	if n := testutil.CollectAndCount(ts.metrics.connectSeconds); n != 1 {
		t.Fatalf("histogram series = %d", n)
	}
	a.wantError(client.TypeConnectResult, client.ConnectResult{SessionID: "s_nope", Outcome: "failed"}, client.CodeBadRequest)

	// All pairs of a room.
	c := mustRaw(t, ts.WS)
	c.register("carol")
	c.mustCall(client.TypeJoin, client.Join{RoomID: created.Room.ID}, nil)
	c.mustCall(client.TypeConnect, client.Connect{RoomID: created.Room.ID, All: true}, &ack)
	if len(ack.Sessions) != 3 {
		t.Fatalf("all pairs of 3 members: %d sessions", len(ack.Sessions))
	}
	for _, r := range []*raw{a, b, c} {
		r.next(client.TypePunch)
		r.next(client.TypePunch)
	}
}

func TestPunchLead(t *testing.T) {
	if l := punchLead(10*time.Millisecond, 40*time.Millisecond); l != 60*time.Millisecond {
		t.Fatalf("lead = %v", l)
	}
	if l := punchLead(time.Millisecond, time.Millisecond); l != 40*time.Millisecond {
		t.Fatalf("lead on a fast LAN = %v, want the 40 ms floor", l)
	}
	if l := punchLead(0, 0); l < 150*time.Millisecond {
		t.Fatalf("lead without RTT = %v", l)
	}
	if l := punchLead(time.Minute, 0); l != 3*time.Second {
		t.Fatalf("lead is not capped: %v", l)
	}
}

func TestShutdownGoingAway(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	a := mustRaw(t, ts.WS)
	a.register("alice")
	ts.stop()
	if err := a.waitClosed(); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("close = %v, want 1001", err)
	}
	if err := <-ts.done; err != nil {
		t.Fatal(err)
	}
	ts.done <- nil
}

func TestReloadLimits(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	a := mustRaw(t, ts.WS)
	a.register("alice")
	cfg := DefaultConfig()
	cfg.MaxRoomsPerPeer = 1
	if err := ts.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	a.mustCall(client.TypeCreateRoom, client.CreateRoom{}, nil)
	a.wantError(client.TypeCreateRoom, client.CreateRoom{}, client.CodeTooManyRooms)
	bad := DefaultConfig()
	bad.MsgRate = -1
	if err := ts.Reload(bad); err == nil || !strings.Contains(err.Error(), "msg-rate") {
		t.Fatalf("bad reload: %v", err)
	}
	if ts.config().MaxRoomsPerPeer != 1 {
		t.Fatal("failed reload changed the config")
	}
}

func TestRunReadyAndStop(t *testing.T) {
	// The server binds nothing itself: Ready closes once Run starts.
	s, err := New(DefaultConfig(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case <-time.After(waitFor):
		t.Fatal("not ready")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestUnregisteredConnectionClosed(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PingInterval = 20 * time.Millisecond
	ts := startServer(t, cfg)
	idle := mustRaw(t, ts.WS) // answers pings, never registers
	err := idle.waitClosed()
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != client.CodeNotRegistered {
		t.Fatalf("close = %v, want 1008 not_registered", err)
	}
}

// The server measures a peer's round trip right after register, so a connect
// made at once is scheduled from a measured RTT, not the 150 ms guess.
func TestRTTMeasuredAtRegister(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PingInterval = time.Hour // the heartbeat cannot be what measures it
	ts := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "alice"}, NoReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(waitFor)
	for histogramCount(t, ts.Reg) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no round trip measured after register")
		}
		time.Sleep(5 * time.Millisecond) // polling a metric: there is no event to wait on
	}
}

func histogramCount(t *testing.T, reg *prometheus.Registry) uint64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "rendezvous_signaling_heartbeat_rtt_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

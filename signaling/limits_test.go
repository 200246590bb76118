package signaling

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// healthy proves a peer is still served: a signal from one member reaches the other.
func healthy(t *testing.T, from, to *raw, toID string) {
	t.Helper()
	from.mustCall(client.TypeSignal, client.Signal{To: toID, Payload: json.RawMessage(`"still here"`)}, nil)
	got := decode[client.Signal](t, to.next(client.TypeSignal))
	if string(got.Payload) != `"still here"` {
		t.Fatalf("signal = %s", got.Payload)
	}
}

func errorFrame(t *testing.T, r *raw) client.ErrorBody {
	t.Helper()
	return decode[client.ErrorBody](t, r.next(client.TypeError))
}

func TestBadFramesLeaveOthersHealthy(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxFrameBytes = 4096
	ts := startServer(t, cfg)
	a, b, bad := mustRaw(t, ts.WS), mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	a.register("alice")
	rb := b.register("bob")
	createAndJoin(t, a, b, 4)
	bad.register("mallory")

	cases := []struct {
		name  string
		frame []byte
		code  string
	}{
		{"malformed JSON", []byte(`{"type":"join",`), client.CodeBadRequest},
		{"not an object", []byte(`[1,2,3]`), client.CodeBadRequest},
		{"invalid UTF-8", []byte("{\"type\":\"\xff\"}"), client.CodeBadRequest},
		{"no type", []byte(`{"data":{}}`), client.CodeBadRequest},
		{"unknown type", []byte(`{"type":"teleport","rid":9}`), client.CodeUnknownType},
		{"wrong data type", []byte(`{"type":"join","data":{"code":7}}`), client.CodeBadRequest},
		{"oversized", []byte(`{"type":"signal","data":{"payload":"` + strings.Repeat("x", 5000) + `"}}`), client.CodeFrameTooLarge},
	}
	for _, tc := range cases {
		bad.sendBytes(tc.frame)
		if e := errorFrame(t, bad); e.Code != tc.code {
			t.Errorf("%s: error %+v, want %s", tc.name, e, tc.code)
		}
	}
	// rid is echoed even for a frame we could not handle.
	bad.sendBytes([]byte(`{"type":"teleport","rid":77}`))
	if env := bad.next(client.TypeError); env.RID != 77 {
		t.Fatalf("rid = %d, want 77", env.RID)
	}
	// Binary frames are refused.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	bad.ws.Write(ctx, websocket.MessageBinary, []byte{1, 2, 3})
	if e := errorFrame(t, bad); e.Code != client.CodeBadRequest {
		t.Fatalf("binary: %+v", e)
	}
	healthy(t, a, b, rb.PeerID)
	// The bad peer itself is still served too.
	var rooms client.Rooms
	bad.mustCall(client.TypeListRooms, client.ListRooms{}, &rooms)

	// Far over the hard cap: the connection is closed with 1009, others unaffected.
	huge := make([]byte, cfg.MaxFrameBytes*8)
	bad.ws.Write(ctx, websocket.MessageText, huge)
	if err := bad.waitClosed(); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("close = %v, want 1009", err)
	}
	healthy(t, a, b, rb.PeerID)
}

func TestFloodRateLimited(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MsgRate = 5
	cfg.MsgBurst = 10
	ts := startServer(t, cfg)
	a, b, flood := mustRaw(t, ts.WS), mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	a.register("alice")
	rb := b.register("bob")
	createAndJoin(t, a, b, 4)
	flood.register("flood")
	// The register used one token; 9 more pass, then rate_limited.
	for range 50 {
		flood.sendBytes([]byte(`{"type":"ping","data":{"seq":1}}`))
	}
	pongs, limited := 0, 0
	for pongs+limited < 50 {
		env := flood.next(client.TypePong, client.TypeError)
		if env.Type == client.TypePong {
			pongs++
			continue
		}
		if e := decode[client.ErrorBody](t, env); e.Code != client.CodeRateLimited || e.RetryAfterMS <= 0 {
			t.Fatalf("flood: %+v", e)
		}
		limited++
	}
	if pongs > 10 || limited < 39 {
		t.Fatalf("pongs=%d limited=%d, want at most the burst answered", pongs, limited)
	}
	healthy(t, a, b, rb.PeerID)
}

func TestConnectionCapPerIP(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxConnsPerIP = 2
	ts := startServer(t, cfg)
	a := mustRaw(t, ts.WS)
	a.register("a")
	mustRaw(t, ts.WS).register("b")
	r, err := dialRaw(t, ts.WS, "")
	if err != nil {
		t.Fatal(err)
	}
	r.start()
	if e := errorFrame(t, r); e.Code != client.CodeTooManyConnections {
		t.Fatalf("third connection: %+v", e)
	}
	if err := r.waitClosed(); websocket.CloseStatus(err) != websocket.StatusTryAgainLater {
		t.Fatalf("close = %v", err)
	}
	// Closing one frees a slot.
	a.ws.Close(websocket.StatusNormalClosure, "")
	eventually(t, "slot freed", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.conns) == 1
	})
	mustRaw(t, ts.WS).register("c")
}

func TestRoomLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxRoomsPerPeer = 2
	cfg.MaxRoomCapacity = 3
	ts := startServer(t, cfg)
	a, b, c, d := mustRaw(t, ts.WS), mustRaw(t, ts.WS), mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	for i, r := range []*raw{a, b, c, d} {
		r.register(string(rune('a' + i)))
	}
	a.wantError(client.TypeCreateRoom, client.CreateRoom{Capacity: 4}, client.CodeBadRequest)
	var room client.RoomJoined
	a.mustCall(client.TypeCreateRoom, client.CreateRoom{Capacity: 3, Password: "pw"}, &room)
	b.wantError(client.TypeJoin, client.Join{Code: room.Room.Code}, client.CodeWrongPassword)
	b.mustCall(client.TypeJoin, client.Join{Code: room.Room.Code, Password: "pw"}, nil)
	c.mustCall(client.TypeJoin, client.Join{Code: room.Room.Code, Password: "pw"}, nil)
	d.wantError(client.TypeJoin, client.Join{Code: room.Room.Code, Password: "pw"}, client.CodeRoomFull)
	a.mustCall(client.TypeCreateRoom, client.CreateRoom{}, nil)
	a.wantError(client.TypeCreateRoom, client.CreateRoom{}, client.CodeTooManyRooms)
	a.wantError(client.TypeCreateRoom, client.CreateRoom{ID: "bad id!"}, client.CodeBadRequest)
	d.mustCall(client.TypeCreateRoom, client.CreateRoom{ID: "fixed"}, nil)
	b.wantError(client.TypeCreateRoom, client.CreateRoom{ID: "fixed"}, client.CodeRoomExists)
}

func TestSlowConsumerDropped(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SendQueue = 4
	cfg.MsgRate = 1e6
	cfg.MsgBurst = 1e6
	cfg.MaxFrameBytes = 1 << 20
	ts := startServer(t, cfg)
	a, b := mustRaw(t, ts.WS), mustRaw(t, ts.WS)
	a.register("alice")
	rb := b.register("bob")
	room, _ := createAndJoin(t, a, b, 4)
	// slow registers and joins, reading only those answers, then never reads again.
	slow, err := dialRaw(t, ts.WS, "")
	if err != nil {
		t.Fatal(err)
	}
	readReply := func(want string) client.Envelope {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		for {
			_, b, err := slow.ws.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var env client.Envelope
			json.Unmarshal(b, &env)
			if env.Type == want {
				return env
			}
		}
	}
	slow.send(client.TypeRegister, client.Register{Protocol: 1, Name: "slow"})
	sid := decode[client.Registered](t, readReply(client.TypeRegistered)).PeerID
	slow.send(client.TypeJoin, client.Join{RoomID: room.Room.ID})
	readReply(client.TypeRoomJoined)

	// Big signals fill the kernel buffers, then the 4-frame queue.
	payload := json.RawMessage(`"` + strings.Repeat("z", 512<<10) + `"`)
	for i := 0; ; i++ {
		ts.mu.Lock()
		_, still := ts.local[sid]
		ts.mu.Unlock()
		if !still {
			break
		}
		if i > 2000 {
			t.Fatal("slow consumer never dropped")
		}
		a.send(client.TypeSignal, client.Signal{To: sid, Payload: payload})
	}
	left := decode[client.PeerLeft](t, a.next(client.TypePeerLeft))
	if left.PeerID != sid {
		t.Fatalf("peer_left = %+v", left)
	}
	eventually(t, "slow_consumer counted", func() bool {
		return counter(ts, "slow_consumer") == 1
	})
	healthy(t, a, b, rb.PeerID)
}

func TestReflexiveFromSTUNBinding(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	stunAddrs := stunservertest.Start(t, stunserver.Options{OnPeerToken: ts.ObservePeerToken})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, err := listenUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got, err := client.BindPeerToken(ctx, pc, netUDPAddr(stunAddrs.Primary), c.Registered().PeerToken)
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort(pc.LocalAddr().String())
	if got != local {
		t.Fatalf("STUN answer %v, want %v", got, local)
	}
	for ev := range c.Events() {
		if ev.Type == client.TypeReflexive {
			var r client.Reflexive
			ev.Decode(&r)
			if r.Addr != local.String() {
				t.Fatalf("reflexive event %q, want %v", r.Addr, local)
			}
			p, _ := ts.store.Peer(ctx, c.PeerID())
			if p.Reflexive != local.String() {
				t.Fatalf("stored reflexive %q", p.Reflexive)
			}
			return
		}
	}
	t.Fatal("no reflexive event")
}

package signaling

import (
	"sync"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func room(rev uint64, id string, members ...string) *Room {
	r := &Room{Rev: rev, ID: id}
	for _, m := range members {
		r.Members = append(r.Members, Member{PeerID: m})
	}
	return r
}

// TestRoomCacheStaleReadAfterLeave is the race a leave must win: a read of
// the room that began before the leave was committed finishes after it; what
// it read (the leaver still a member) must not be cached.
func TestRoomCacheStaleReadAfterLeave(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	c := newRoomCache(2*time.Second, clock.now)

	_, ticket := c.get("r1")              // signal by x: miss, reads the store...
	before := room(7, "r1", "alice", "x") // ...and sees alice still in
	c.invalidate("r1")                    // alice's leave commits and invalidates
	c.put(before, ticket)                 // the slow read comes back
	if r, _ := c.get("r1"); r != nil {
		t.Fatalf("a read from before the leave was cached: %+v", r.Members)
	}

	// A read that began after the leave is cached, and answers until the TTL.
	_, ticket = c.get("r1")
	c.put(room(8, "r1", "x"), ticket)
	if r, _ := c.get("r1"); r == nil || r.HasMember("alice") || !r.HasMember("x") {
		t.Fatalf("cached %+v", r)
	}
	clock.add(2 * time.Second)
	if r, _ := c.get("r1"); r != nil {
		t.Fatal("an entry older than the TTL was used")
	}

	// An older revision never replaces a newer one.
	_, ticket = c.get("r2")
	c.put(room(5, "r2", "a", "b"), ticket)
	c.put(room(4, "r2", "a", "b", "c"), ticket)
	if r, _ := c.get("r2"); r == nil || r.Rev != 5 {
		t.Fatalf("r2 is %+v, want rev 5", r)
	}

	// Invalidations of other rooms do not block a read.
	_, ticket = c.get("r3")
	c.invalidate("r4")
	c.put(room(1, "r3", "a"), ticket)
	if r, _ := c.get("r3"); r == nil {
		t.Fatal("r3 not cached")
	}
}

// TestRoomCacheNoteFrame: the room events a node delivers invalidate their
// room; other frames do not.
func TestRoomCacheNoteFrame(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	c := newRoomCache(time.Minute, clock.now)
	fill := func(id string) {
		_, ticket := c.get(id)
		c.put(room(1, id, "a", "b"), ticket)
	}
	for _, tc := range []struct {
		frame []byte
		gone  bool
	}{
		{encodeFrame(client.TypePeerLeft, 0, client.PeerLeft{RoomID: "r1", PeerID: "b", Reason: "left"}), true},
		{encodeFrame(client.TypePeerJoined, 0, client.PeerJoined{RoomID: "r1", Peer: client.PeerInfo{ID: "c"}}), true},
		{encodeFrame(client.TypeRoomUpdated, 0, client.RoomUpdated{Room: client.RoomInfo{ID: "r1"}, Reason: "host_migrated"}), true},
		{encodeSignal("a", "b", "r1", []byte(`{"type":"peer_left"}`)), false},
		{encodeFrame(client.TypePeerUpdated, 0, client.PeerUpdated{RoomID: "r1"}), false},
		{encodeFrame(client.TypePeerLeft, 0, client.PeerLeft{RoomID: "r2", PeerID: "b"}), false},
	} {
		fill("r1")
		c.noteFrame(tc.frame)
		if r, _ := c.get("r1"); (r == nil) != tc.gone {
			t.Errorf("%s: room dropped %v, want %v", tc.frame, r == nil, tc.gone)
		}
	}
}

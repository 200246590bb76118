package signaling

import (
	"bytes"
	"encoding/json"
	"sync"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// DefaultRoomCacheTTL is how long a node trusts a cached room for signals
// when Options.RoomCacheTTL is 0.
const DefaultRoomCacheTTL = 2 * time.Second

// maxCachedRooms bounds the cache; past it, it starts over.
const maxCachedRooms = 1 << 16

// roomCache is a node's copy of the rooms its peers signal into, so that a
// signal through a shared Store costs no read in the common case.
//
// Only a positive answer ("both are members") is taken from the cache; a
// peer missing from a cached room is looked up in the store before the
// signal is refused, so a fresh join is never refused. What keeps a positive
// answer true:
//
//   - the sender's own membership changes only through this node (join,
//     leave, resume and going offline happen where its connection is), and
//     every room write this node makes invalidates the room after the store
//     has committed it; the connection's frames are handled one at a time,
//     so a signal after a leave always finds the room invalidated;
//   - every room event this node delivers to a local peer (peer_joined,
//     peer_left, room_updated, from any node) invalidates the room before the
//     peer sees the event;
//   - a read that began before an invalidation is not stored (tickets below),
//     so a slow read cannot put back what a leave just removed;
//   - what this node hears of neither way (the other nodes' reaper taking
//     its peers out while it was cut off from NATS) lasts at most the TTL.
//
// Tickets: invalidate stamps the room with a new number from gen; a read
// takes the current number first and may only store its result if no stamp
// on that room (and no reset of the whole cache) is newer.
type roomCache struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	gen     uint64
	cleared uint64 // gen at the last reset
	rooms   map[string]*cachedRoom
}

type cachedRoom struct {
	room    *Room // nil after an invalidation
	fetched time.Time
	stamp   uint64 // gen of the last invalidation
}

func newRoomCache(ttl time.Duration, now func() time.Time) *roomCache {
	return &roomCache{ttl: ttl, now: now, rooms: map[string]*cachedRoom{}}
}

// get returns the cached room if it is fresh (else nil), and a ticket for
// putting what the caller then reads from the store.
func (c *roomCache) get(id string) (*Room, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.rooms[id]; e != nil && e.room != nil && c.now().Sub(e.fetched) < c.ttl {
		return e.room, c.gen
	}
	return nil, c.gen
}

// put stores r, read from the store after get handed out ticket, unless the
// room was invalidated since.
func (c *roomCache) put(r *Room, ticket uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ticket < c.cleared {
		return
	}
	e := c.rooms[r.ID]
	if e != nil && (e.stamp > ticket || e.room != nil && e.room.Rev > r.Rev) {
		return
	}
	if e == nil {
		if len(c.rooms) >= maxCachedRooms {
			c.gen++
			c.cleared = c.gen
			clear(c.rooms)
			return
		}
		e = &cachedRoom{}
		c.rooms[r.ID] = e
	}
	e.room, e.fetched = r, c.now()
}

// invalidate drops room id; reads in flight do not store it again.
func (c *roomCache) invalidate(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	e := c.rooms[id]
	if e == nil {
		if len(c.rooms) >= maxCachedRooms {
			c.cleared = c.gen
			clear(c.rooms)
		}
		e = &cachedRoom{}
		c.rooms[id] = e
	}
	e.room, e.stamp = nil, c.gen
}

// Prefixes of the frames that change a room's membership or host; the
// server and natsstore both put "type" first.
var (
	peerJoinedPrefix  = []byte(`{"type":"` + client.TypePeerJoined + `"`)
	peerLeftPrefix    = []byte(`{"type":"` + client.TypePeerLeft + `"`)
	roomUpdatedPrefix = []byte(`{"type":"` + client.TypeRoomUpdated + `"`)
)

// noteFrame invalidates the room a room event is about. It runs for every
// frame delivered to a local peer, so anything but a room event costs a
// prefix comparison.
func (c *roomCache) noteFrame(frame []byte) {
	var ev struct {
		Data struct {
			RoomID string `json:"room_id"`
			Room   struct {
				ID string `json:"id"`
			} `json:"room"`
		} `json:"data"`
	}
	switch {
	case bytes.HasPrefix(frame, peerJoinedPrefix), bytes.HasPrefix(frame, peerLeftPrefix), bytes.HasPrefix(frame, roomUpdatedPrefix):
		if json.Unmarshal(frame, &ev) != nil {
			return
		}
	default:
		return
	}
	if id := ev.Data.RoomID; id != "" {
		c.invalidate(id)
	}
	if id := ev.Data.Room.ID; id != "" {
		c.invalidate(id)
	}
}

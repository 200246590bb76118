package signaling

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

func parseAddrPort(s string) (netip.AddrPort, error) { return netip.ParseAddrPort(s) }

func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func hashPassword(p string) string {
	if p == "" {
		return ""
	}
	h := sha256.Sum256([]byte(p))
	return hex.EncodeToString(h[:])
}

// handle dispatches one valid request.
func (s *Server) handle(c *peerConn, req request) {
	s.metrics.requests.WithLabelValues(req.Type).Inc()
	ctx := context.Background()
	switch b := req.Body.(type) {
	case *client.Ping:
		c.reply(req.RID, client.TypePong, client.Pong{Seq: b.Seq, ServerTime: s.now().UnixMilli()})
		return
	case *client.Pong:
		c.onPong(*b)
		return
	case *client.Register:
		if e := s.handleRegister(ctx, c, req.RID, b); e != nil {
			c.sendError(req.RID, e)
		}
		return
	}
	id := c.id()
	if id == "" {
		c.sendError(req.RID, errorf(client.CodeNotRegistered, "send register first"))
		return
	}
	var e *client.Error
	switch b := req.Body.(type) {
	case *client.CreateRoom:
		e = s.handleCreateRoom(ctx, c, id, req.RID, b)
	case *client.Join:
		e = s.handleJoin(ctx, c, id, req.RID, b)
	case *client.Leave:
		e = s.handleLeave(ctx, c, id, req.RID, b)
	case *client.UpdateRoom:
		e = s.handleUpdateRoom(ctx, c, id, req.RID, b)
	case *client.ListRooms:
		if b.Game == "" {
			if p, err := s.store.Peer(ctx, id); err == nil {
				b.Game = p.Game
			}
		}
		var out client.Rooms
		out, e = s.listRooms(ctx, *b)
		if e == nil {
			c.reply(req.RID, client.TypeRooms, out)
		}
	case *client.GetICEServers:
		c.reply(req.RID, client.TypeICEServers, client.ICEServerList{ICEServers: s.iceServers(id)})
	case *client.Connect:
		e = s.handleConnect(ctx, c, id, req.RID, b)
	case *client.ConnectResult:
		e = s.handleConnectResult(ctx, c, id, req.RID, b)
	case *client.Signal:
		e = s.handleSignal(ctx, id, req.RID, b)
		if e == nil && req.RID != 0 {
			c.reply(req.RID, client.TypeAck, client.Ack{OK: true})
		}
	case *client.UpdatePeer:
		p, err := s.store.UpdatePeer(ctx, id, func(p *PeerRecord) error {
			if b.Candidates != nil {
				p.Candidates = b.Candidates
			}
			if b.NAT != nil {
				p.NAT = b.NAT
			}
			return nil
		})
		if err != nil {
			e = storeErr(err, errorf(client.CodeInternal, "update peer: %v", err))
			break
		}
		c.reply(req.RID, client.TypeAck, client.Ack{OK: true})
		s.broadcastPeerUpdated(ctx, p)
	}
	if e != nil {
		c.sendError(req.RID, e)
	}
}

func (s *Server) handleRegister(ctx context.Context, c *peerConn, rid uint64, b *client.Register) *client.Error {
	if b.Protocol != client.ProtocolVersion {
		return errorf(client.CodeUnsupportedProtocol, "protocol %d not supported; this server speaks %d", b.Protocol, client.ProtocolVersion)
	}
	if c.id() != "" {
		return errorf(client.CodeAlreadyRegistered, "this connection is already registered")
	}
	claims := c.auth.claims
	if claims != nil && claims.Name != "" {
		if b.Name == "" {
			b.Name = claims.Name
		} else if b.Name != claims.Name {
			return errorf(client.CodeForbidden, "name %q differs from the join token's name claim", b.Name)
		}
	}
	if b.Name == "" {
		return errorf(client.CodeBadRequest, "name is required")
	}
	if b.ResumeToken != "" {
		return s.resume(ctx, c, rid, b)
	}
	p := &PeerRecord{
		ID: newID("p_"), Name: b.Name, Game: b.Game, PublicKey: b.PublicKey,
		Candidates: b.Candidates, NAT: b.NAT, ResumeToken: newSecret(24), Online: true,
		Admin: c.auth.admin,
	}
	p.PeerToken = p.ID + "." + newSecret(16)
	if claims != nil {
		p.RoomClaim = claims.Room
	}
	if err := s.store.PutPeer(ctx, p); err != nil {
		return errorf(client.CodeInternal, "store: %v", err)
	}
	if !s.attach(c, p.ID) {
		s.store.DeletePeer(ctx, p.ID)
		return nil
	}
	c.reply(rid, client.TypeRegistered, s.registered(p, false, nil))
	c.measureRTT()
	return nil
}

func (s *Server) registered(p *PeerRecord, resumed bool, rooms []client.RoomInfo) client.Registered {
	return client.Registered{
		Protocol: client.ProtocolVersion, PeerID: p.ID, ResumeToken: p.ID + "." + p.ResumeToken,
		PeerToken: p.PeerToken, ICEServers: s.iceServers(p.ID), ServerTime: s.now().UnixMilli(),
		Limits: s.limits(), Resumed: resumed, Rooms: rooms, Reflexive: p.Reflexive,
	}
}

// attach binds a registered peer id to c on this node.
func (s *Server) attach(c *peerConn, id string) bool {
	s.mu.Lock()
	if _, ok := s.conns[c]; !ok {
		s.mu.Unlock()
		return false // closed meanwhile
	}
	old := s.local[id]
	s.local[id] = c
	s.mu.Unlock()
	deliver := c.enqueue
	if s.rooms != nil {
		deliver = func(frame []byte) {
			s.rooms.noteFrame(frame)
			c.enqueue(frame)
		}
	}
	c.mu.Lock()
	c.peerID = id
	if rn, ok := s.store.(ReplaceNotifier); ok {
		c.detach = rn.AttachReplaceable(id, deliver, func() { s.replacedElsewhere(c, id) })
	} else {
		c.detach = s.store.Attach(id, deliver)
	}
	c.mu.Unlock()
	if old != nil && old != c {
		old.failAsync(client.CodeResumeFailed, "resumed on another connection", "replaced")
	} else {
		s.metrics.peers.Inc()
	}
	return true
}

// replacedElsewhere closes c, whose peer resumed on another node: like a
// resume on this node, the old connection goes without the peer going
// offline.
func (s *Server) replacedElsewhere(c *peerConn, id string) {
	s.mu.Lock()
	owner := s.local[id] == c
	if owner {
		delete(s.local, id)
	}
	s.mu.Unlock()
	if !owner {
		return
	}
	s.metrics.peers.Dec()
	c.mu.Lock()
	detach := c.detach
	c.mu.Unlock()
	if detach != nil {
		detach()
	}
	c.failAsync(client.CodeResumeFailed, "resumed on another connection", "replaced")
}

func (s *Server) resume(ctx context.Context, c *peerConn, rid uint64, b *client.Register) *client.Error {
	id, secret, _ := strings.Cut(b.ResumeToken, ".")
	mu := s.lifecycleLock(id)
	mu.Lock()
	defer mu.Unlock()
	grace := s.config().ResumeGrace
	now := s.now()
	wasOnline := false
	p, err := s.store.UpdatePeer(ctx, id, func(p *PeerRecord) error {
		if !constantTimeEqual(p.ResumeToken, secret) {
			return ErrNotFound
		}
		if !p.Online && now.Sub(p.OfflineSince) > grace {
			return ErrNotFound
		}
		wasOnline = p.Online
		p.Online = true
		p.OfflineSince = time.Time{}
		p.Name = b.Name
		if b.PublicKey != "" {
			p.PublicKey = b.PublicKey
		}
		if b.Candidates != nil {
			p.Candidates = b.Candidates
		}
		if b.NAT != nil {
			p.NAT = b.NAT
		}
		if b.Game != "" {
			p.Game = b.Game
		}
		return nil
	})
	if err != nil {
		return errorf(client.CodeResumeFailed, "resume token unknown or its grace period (%v) is over; register without it", grace)
	}
	if !s.attach(c, p.ID) {
		return nil
	}
	// Give the rooms back.
	var rooms []client.RoomInfo
	var kept []string
	for _, roomID := range p.Rooms {
		already := false
		r, err := s.updateRoom(ctx, roomID, func(r *Room) error {
			if r.HasMember(p.ID) {
				already = true
				return nil
			}
			if len(r.Members) >= r.Capacity {
				return errRoomFull
			}
			r.Members = append(r.Members, Member{PeerID: p.ID, JoinedAt: now})
			r.EmptySince = time.Time{}
			if r.Host == "" {
				r.Host = p.ID
			}
			return nil
		})
		if err != nil {
			continue
		}
		kept = append(kept, roomID)
		rooms = append(rooms, r.Info())
		if !already || !wasOnline {
			s.broadcast(ctx, r, p.ID, encodeFrame(client.TypePeerJoined, 0, client.PeerJoined{RoomID: r.ID, Peer: p.Info(), Resumed: true}))
		}
	}
	if len(kept) != len(p.Rooms) {
		p, _ = s.store.UpdatePeer(ctx, p.ID, func(p *PeerRecord) error { p.Rooms = kept; return nil })
	}
	s.metrics.resumes.Inc()
	c.reply(rid, client.TypeRegistered, s.registered(p, true, rooms))
	c.measureRTT()
	return nil
}

var (
	errRoomFull   = errors.New("room full")
	errNotMember  = errors.New("not a member")
	errNotHost    = errors.New("not host")
	errBadRequest = errors.New("bad request")
)

// storeErr tells a peer plainly that the shared state is unreachable (the
// NATS store during an outage: retrying later works) and returns otherwise
// the handler's own error.
func storeErr(err error, otherwise *client.Error) *client.Error {
	if errors.Is(err, ErrUnavailable) {
		return errorf(client.CodeUnavailable, "%v; retry in a moment", ErrUnavailable)
	}
	return otherwise
}

func (s *Server) handleCreateRoom(ctx context.Context, c *peerConn, id string, rid uint64, b *client.CreateRoom) *client.Error {
	cfg := s.config()
	p, err := s.store.Peer(ctx, id)
	if err != nil {
		return storeErr(err, errorf(client.CodeInternal, "peer record missing"))
	}
	if p.RoomClaim != "" && b.ID != p.RoomClaim {
		return errorf(client.CodeForbidden, "the join token only allows room %q; create it with id %q", p.RoomClaim, p.RoomClaim)
	}
	if len(p.Rooms) >= cfg.MaxRoomsPerPeer {
		return errorf(client.CodeTooManyRooms, "already in %d rooms (limits.max_rooms_per_peer)", len(p.Rooms))
	}
	capacity := b.Capacity
	if capacity == 0 {
		capacity = min(8, cfg.MaxRoomCapacity)
	}
	if capacity < 1 || capacity > cfg.MaxRoomCapacity {
		return errorf(client.CodeBadRequest, "capacity %d out of range 1..%d (limits.max_room_capacity)", capacity, cfg.MaxRoomCapacity)
	}
	name := b.Name
	if name == "" {
		name = p.Name + "'s room"
	}
	now := s.now()
	r := &Room{
		ID: b.ID, Name: name, Game: p.Game, Capacity: capacity, Public: b.Public,
		Password: hashPassword(b.Password), Host: id, Metadata: b.Metadata,
		Members: []Member{{PeerID: id, JoinedAt: now}}, CreatedAt: now,
	}
	if r.ID == "" {
		r.ID = newID("r_")
	}
	for range 8 {
		r.Code = newJoinCode()
		err = s.store.CreateRoom(ctx, r)
		s.invalidateRoom(r.ID) // a room of that id this node remembers is gone
		if !errors.Is(err, ErrCodeTaken) {
			break
		}
	}
	switch {
	case errors.Is(err, ErrRoomExists):
		return errorf(client.CodeRoomExists, "room %q exists; join it instead", r.ID)
	case err != nil:
		return storeErr(err, errorf(client.CodeInternal, "create room: %v", err))
	}
	s.metrics.rooms.Inc()
	p, _ = s.store.UpdatePeer(ctx, id, func(p *PeerRecord) error {
		p.Rooms = append(p.Rooms, r.ID)
		return nil
	})
	c.reply(rid, client.TypeRoomJoined, client.RoomJoined{Room: r.Info(), Members: []client.PeerInfo{p.Info()}, ICEServers: s.iceServers(id)})
	return nil
}

func (s *Server) handleJoin(ctx context.Context, c *peerConn, id string, rid uint64, b *client.Join) *client.Error {
	cfg := s.config()
	var r *Room
	var err error
	if b.Code != "" {
		r, err = s.store.RoomByCode(ctx, normalizeJoinCode(b.Code))
	} else {
		r, err = s.store.Room(ctx, b.RoomID)
	}
	if err != nil {
		return storeErr(err, errorf(client.CodeRoomNotFound, "no room with that id or code"))
	}
	p, err := s.store.Peer(ctx, id)
	if err != nil {
		return storeErr(err, errorf(client.CodeInternal, "peer record missing"))
	}
	if p.RoomClaim != "" && r.ID != p.RoomClaim {
		return errorf(client.CodeForbidden, "the join token only allows room %q", p.RoomClaim)
	}
	if r.Password != "" && !constantTimeEqual(r.Password, hashPassword(b.Password)) && !p.Admin {
		return errorf(client.CodeWrongPassword, "wrong room password")
	}
	if !slices.Contains(p.Rooms, r.ID) && len(p.Rooms) >= cfg.MaxRoomsPerPeer {
		return errorf(client.CodeTooManyRooms, "already in %d rooms (limits.max_rooms_per_peer)", len(p.Rooms))
	}
	now := s.now()
	already := false
	capacity := r.Capacity
	r, err = s.updateRoom(ctx, r.ID, func(r *Room) error {
		if r.HasMember(id) {
			already = true
			return nil
		}
		if len(r.Members) >= r.Capacity {
			return errRoomFull
		}
		r.Members = append(r.Members, Member{PeerID: id, JoinedAt: now})
		r.EmptySince = time.Time{}
		if r.Host == "" {
			r.Host = id
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrUnavailable):
		return storeErr(err, nil)
	case errors.Is(err, errRoomFull):
		return errorf(client.CodeRoomFull, "room is full (capacity %d)", capacity)
	case errors.Is(err, ErrNotFound):
		return errorf(client.CodeRoomNotFound, "room closed")
	case err != nil:
		return errorf(client.CodeInternal, "join: %v", err)
	}
	s.cancelRoomExpiry(r.ID)
	if !already {
		p, _ = s.store.UpdatePeer(ctx, id, func(p *PeerRecord) error {
			if !slices.Contains(p.Rooms, r.ID) {
				p.Rooms = append(p.Rooms, r.ID)
			}
			return nil
		})
	}
	members := make([]client.PeerInfo, 0, len(r.Members))
	for _, m := range r.Members {
		if m.PeerID == id {
			members = append(members, p.Info())
			continue
		}
		if mp, err := s.store.Peer(ctx, m.PeerID); err == nil {
			members = append(members, s.withRTT(mp))
		}
	}
	c.reply(rid, client.TypeRoomJoined, client.RoomJoined{Room: r.Info(), Members: members, ICEServers: s.iceServers(id)})
	if !already {
		s.broadcast(ctx, r, id, encodeFrame(client.TypePeerJoined, 0, client.PeerJoined{RoomID: r.ID, Peer: s.withRTT(p)}))
	}
	return nil
}

// withRTT fills the RTT this node measured for a locally connected peer.
func (s *Server) withRTT(p *PeerRecord) client.PeerInfo {
	info := p.Info()
	s.mu.Lock()
	c := s.local[p.ID]
	s.mu.Unlock()
	if c != nil {
		info.RTTMS = float64(c.RTT().Microseconds()) / 1000
	}
	return info
}

func (s *Server) handleLeave(ctx context.Context, c *peerConn, id string, rid uint64, b *client.Leave) *client.Error {
	if e := s.leaveRoom(ctx, id, b.RoomID, "left"); e != nil {
		return e
	}
	s.store.UpdatePeer(ctx, id, func(p *PeerRecord) error {
		p.Rooms = slices.DeleteFunc(p.Rooms, func(r string) bool { return r == b.RoomID })
		return nil
	})
	c.reply(rid, client.TypeLeft, client.Left{RoomID: b.RoomID})
	return nil
}

// leaveRoom removes id from the room, migrates the host and tells the others.
func (s *Server) leaveRoom(ctx context.Context, id, roomID, reason string) *client.Error {
	now := s.now()
	var newHost string
	r, err := s.updateRoom(ctx, roomID, func(r *Room) error {
		i := slices.IndexFunc(r.Members, func(m Member) bool { return m.PeerID == id })
		if i < 0 {
			return errNotMember
		}
		r.Members = slices.Delete(r.Members, i, i+1)
		newHost = ""
		if r.Host == id {
			r.Host = ""
			if len(r.Members) > 0 {
				// The longest-standing member takes over.
				r.Host = r.Members[0].PeerID
				newHost = r.Host
			}
		}
		if len(r.Members) == 0 {
			r.EmptySince = now
		}
		return nil
	})
	switch {
	case errors.Is(err, errNotMember), errors.Is(err, ErrNotFound):
		return errorf(client.CodeNotInRoom, "not a member of room %q", roomID)
	case err != nil:
		return errorf(client.CodeInternal, "leave: %v", err)
	}
	s.broadcast(ctx, r, id, encodeFrame(client.TypePeerLeft, 0, client.PeerLeft{RoomID: roomID, PeerID: id, Reason: reason, NewHost: newHost}))
	if newHost != "" {
		s.metrics.hostMigrations.Inc()
		s.broadcast(ctx, r, "", encodeFrame(client.TypeRoomUpdated, 0, client.RoomUpdated{Room: r.Info(), Reason: "host_migrated"}))
	}
	if len(r.Members) == 0 {
		s.scheduleRoomExpiry(roomID)
	}
	return nil
}

// scheduleRoomExpiry removes an empty room after the resume grace period, so
// members that lost their connection can still come back to it.
func (s *Server) scheduleRoomExpiry(roomID string) {
	grace := s.config().ResumeGrace
	expire := func() {
		s.roomTimers.Delete(roomID)
		_, err := s.updateRoom(context.Background(), roomID, func(r *Room) error {
			if len(r.Members) > 0 {
				return errBadRequest
			}
			r.Deleted = true
			return nil
		})
		if err == nil {
			s.metrics.rooms.Dec()
		}
	}
	if grace == 0 {
		expire()
		return
	}
	t := time.AfterFunc(grace, expire)
	if old, loaded := s.roomTimers.Swap(roomID, t); loaded {
		old.(*time.Timer).Stop()
	}
}

func (s *Server) cancelRoomExpiry(roomID string) {
	if t, ok := s.roomTimers.LoadAndDelete(roomID); ok {
		t.(*time.Timer).Stop()
	}
}

func (s *Server) handleUpdateRoom(ctx context.Context, c *peerConn, id string, rid uint64, b *client.UpdateRoom) *client.Error {
	cfg := s.config()
	reason := "settings"
	if b.Name == nil && b.Public == nil && b.Capacity == nil && b.Metadata != nil {
		reason = "metadata"
	}
	r, err := s.updateRoom(ctx, b.RoomID, func(r *Room) error {
		if !r.HasMember(id) {
			return errNotMember
		}
		if r.Host != id {
			return errNotHost
		}
		if b.Capacity != nil {
			if *b.Capacity < len(r.Members) || *b.Capacity < 1 || *b.Capacity > cfg.MaxRoomCapacity {
				return errBadRequest
			}
			r.Capacity = *b.Capacity
		}
		if b.Name != nil {
			r.Name = *b.Name
		}
		if b.Public != nil {
			r.Public = *b.Public
		}
		if b.Metadata != nil {
			r.Metadata = b.Metadata
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, errNotMember):
		return errorf(client.CodeNotInRoom, "not a member of room %q", b.RoomID)
	case errors.Is(err, errNotHost):
		return errorf(client.CodeNotHost, "only the room host may update it")
	case errors.Is(err, errBadRequest):
		return errorf(client.CodeBadRequest, "capacity must be between the member count and %d", cfg.MaxRoomCapacity)
	case err != nil:
		return errorf(client.CodeInternal, "update room: %v", err)
	}
	ev := encodeFrame(client.TypeRoomUpdated, 0, client.RoomUpdated{Room: r.Info(), Reason: reason})
	s.broadcast(ctx, r, id, ev)
	c.reply(rid, client.TypeRoomUpdated, client.RoomUpdated{Room: r.Info(), Reason: reason})
	return nil
}

func (s *Server) listRooms(ctx context.Context, req client.ListRooms) (client.Rooms, *client.Error) {
	limit := req.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 200)
	rooms, next, err := s.store.ListRooms(ctx, req.Game, req.Cursor, limit)
	if err != nil {
		return client.Rooms{}, errorf(client.CodeBadRequest, "list rooms: %v", err)
	}
	out := client.Rooms{Rooms: make([]client.RoomInfo, 0, len(rooms)), NextCursor: next}
	for _, r := range rooms {
		out.Rooms = append(out.Rooms, r.Info())
	}
	return out, nil
}

// sharedRoom returns a room both peers are in (roomID if given).
func (s *Server) sharedRoom(ctx context.Context, a *PeerRecord, b, roomID string) (*Room, bool) {
	for _, id := range a.Rooms {
		if roomID != "" && id != roomID {
			continue
		}
		if r, ok, _ := s.room(ctx, id, a.ID, b); ok {
			return r, true
		}
	}
	return nil, false
}

func (s *Server) handleSignal(ctx context.Context, id string, rid uint64, b *client.Signal) *client.Error {
	if len(b.Payload) > 0 && b.Payload[0] == 'n' && string(b.Payload) == "null" {
		return errorf(client.CodeBadRequest, "signal: payload is required")
	}
	if b.To == "" {
		r, ok, err := s.room(ctx, b.RoomID, id)
		if err != nil || !ok {
			return storeErr(err, errorf(client.CodeNotInRoom, "not a member of room %q", b.RoomID))
		}
		frame := encodeSignal(id, "", r.ID, b.Payload)
		n := s.broadcast(ctx, r, id, frame)
		s.metrics.signals.Add(float64(n))
		return nil
	}
	var r *Room
	if b.RoomID != "" {
		// The common case needs no read of the sender's record.
		var ok bool
		var err error
		r, ok, err = s.room(ctx, b.RoomID, id, b.To)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return storeErr(err, errorf(client.CodeInternal, "signal: %v", err))
		}
		if !ok {
			return errorf(client.CodePeerNotFound, "peer %q is not in a room with you", truncate(b.To, 40))
		}
	} else {
		p, err := s.store.Peer(ctx, id)
		if err != nil {
			return storeErr(err, errorf(client.CodeInternal, "peer record missing"))
		}
		var ok bool
		if r, ok = s.sharedRoom(ctx, p, b.To, ""); !ok {
			return errorf(client.CodePeerNotFound, "peer %q is not in a room with you", truncate(b.To, 40))
		}
	}
	frame := encodeSignal(id, b.To, r.ID, b.Payload)
	if !s.deliver(ctx, b.To, frame) {
		return errorf(client.CodePeerNotFound, "peer %q is offline", truncate(b.To, 40))
	}
	s.metrics.signals.Inc()
	return nil
}

// punchLead is how far ahead of now a punch starts. The punch frame reaches
// each side in about half its RTT, and each side's estimate of the server
// clock may be off by up to half its RTT, so one RTT of the slower side plus a
// margin has both sides start together; a larger lead only adds to every
// connect's time.
func punchLead(rttA, rttB time.Duration) time.Duration {
	const unknown = 150 * time.Millisecond
	if rttA == 0 {
		rttA = unknown
	}
	if rttB == 0 {
		rttB = unknown
	}
	lead := max(rttA, rttB) + 20*time.Millisecond
	return min(max(lead, 40*time.Millisecond), 3*time.Second)
}

func (s *Server) handleConnect(ctx context.Context, c *peerConn, id string, rid uint64, b *client.Connect) *client.Error {
	p, err := s.store.Peer(ctx, id)
	if err != nil {
		return storeErr(err, errorf(client.CodeInternal, "peer record missing"))
	}
	var pairs [][2]string
	if b.PeerID != "" {
		if b.PeerID == id {
			return errorf(client.CodeBadRequest, "connect: cannot connect to yourself")
		}
		if _, ok := s.sharedRoom(ctx, p, b.PeerID, b.RoomID); !ok {
			return errorf(client.CodePeerNotFound, "peer %q is not in a room with you", truncate(b.PeerID, 40))
		}
		pairs = append(pairs, [2]string{id, b.PeerID})
	} else {
		r, err := s.store.Room(ctx, b.RoomID)
		if err != nil || !r.HasMember(id) {
			return storeErr(err, errorf(client.CodeNotInRoom, "not a member of room %q", b.RoomID))
		}
		for i := range r.Members {
			for j := i + 1; j < len(r.Members); j++ {
				pairs = append(pairs, [2]string{r.Members[i].PeerID, r.Members[j].PeerID})
			}
		}
	}
	// Collect the sessions first so the caller gets connect_ack before any punch.
	type planned struct {
		ss           *Session
		infoA, infoB client.PeerInfo
		start        int64
	}
	var plan []planned
	var sessions []*Session
	for _, pair := range pairs {
		pa, errA := s.store.Peer(ctx, pair[0])
		pb, errB := s.store.Peer(ctx, pair[1])
		if errA != nil || errB != nil || !pa.Online || !pb.Online {
			if b.PeerID != "" {
				return errorf(client.CodePeerNotFound, "peer %q is offline", truncate(b.PeerID, 40))
			}
			continue
		}
		infoA, infoB := s.withRTT(pa), s.withRTT(pb)
		rttA := time.Duration(infoA.RTTMS * float64(time.Millisecond))
		rttB := time.Duration(infoB.RTTMS * float64(time.Millisecond))
		ss := &Session{ID: newID("s_"), A: pa.ID, B: pb.ID, NATA: natType(pa.NAT), NATB: natType(pb.NAT), Created: s.now()}
		sessions = append(sessions, ss)
		plan = append(plan, planned{ss, infoA, infoB, s.now().Add(punchLead(rttA, rttB)).UnixMilli()})
	}
	// Stored before anyone hears of them: a connect_result may come to
	// another node (a shared SessionStore) as soon as the punch is out.
	if len(sessions) > 0 {
		if err := s.sessions.PutSessions(ctx, sessions); err != nil {
			return storeErr(err, errorf(client.CodeInternal, "store sessions: %v", err))
		}
	}
	ack := client.ConnectAck{Sessions: make([]string, 0, len(plan))}
	for _, p := range plan {
		ack.Sessions = append(ack.Sessions, p.ss.ID)
	}
	c.reply(rid, client.TypeConnectAck, ack)
	cfg := s.config()
	for _, p := range plan {
		now := s.now().UnixMilli()
		punch := func(to string, peer client.PeerInfo, role string) {
			s.deliver(ctx, to, encodeFrame(client.TypePunch, 0, client.Punch{
				SessionID: p.ss.ID, Peer: peer, Role: role, StartAt: p.start,
				IntervalMS: cfg.PunchInterval.Milliseconds(), Attempts: cfg.PunchAttempts,
				ICEServers: s.iceServers(to), ServerTime: now,
			}))
		}
		punch(p.ss.A, p.infoB, "initiator")
		punch(p.ss.B, p.infoA, "responder")
		s.metrics.connectRequests.Inc()
	}
	return nil
}

func natType(n *client.NATReport) string {
	if n == nil {
		return "unknown"
	}
	return n.Type
}

func (s *Server) handleConnectResult(ctx context.Context, c *peerConn, id string, rid uint64, b *client.ConnectResult) *client.Error {
	ss, first, err := s.sessions.ReportSession(ctx, b.SessionID, id)
	if err != nil {
		return storeErr(err, errorf(client.CodeBadRequest, "unknown session %q", truncate(b.SessionID, 40)))
	}
	// The reporter's own view of NAT types wins over what it registered.
	local, remote := ss.NATA, ss.NATB
	if ss.B == id {
		local, remote = ss.NATB, ss.NATA
	}
	if slices.Contains(client.NATTypes, b.LocalNAT) {
		local = b.LocalNAT
	}
	if slices.Contains(client.NATTypes, b.RemoteNAT) {
		remote = b.RemoteNAT
	}
	pair := natPair(local, remote)
	// Only the prober knows its probe count: it counts whichever side reports first.
	if b.Probes > 0 {
		s.metrics.connectProbes.WithLabelValues(b.Outcome, pair).Observe(float64(b.Probes))
	}
	if first {
		s.metrics.connectOutcomes.WithLabelValues(b.Outcome, pair).Inc()
		if b.Outcome != "failed" {
			s.metrics.connectSeconds.WithLabelValues(b.Outcome, pair).Observe(b.DurationMS / 1000)
		}
	}
	c.reply(rid, client.TypeAck, client.Ack{OK: true})
	return nil
}

// natPair is an order-independent label for two NAT types.
func natPair(a, b string) string {
	if !slices.Contains(client.NATTypes, a) {
		a = "unknown"
	}
	if !slices.Contains(client.NATTypes, b) {
		b = "unknown"
	}
	if a > b {
		a, b = b, a
	}
	return a + "+" + b
}

// peerOffline runs when a registered peer's connection is gone: its rooms are
// told (reason timeout/disconnected), and its record is kept for the resume
// grace period with the room list, so a resume gives the rooms back.
func (s *Server) peerOffline(id, reason string) {
	mu := s.lifecycleLock(id)
	mu.Lock()
	defer mu.Unlock()
	s.mu.Lock()
	_, back := s.local[id]
	s.mu.Unlock()
	if back {
		return // resumed on another connection meanwhile
	}
	ctx := context.Background()
	now := s.now()
	p, err := s.store.UpdatePeer(ctx, id, func(p *PeerRecord) error {
		p.Online = false
		p.OfflineSince = now
		return nil
	})
	if err != nil {
		return
	}
	evReason := "disconnected"
	if reason == "timeout" {
		evReason = "timeout"
	}
	for _, roomID := range p.Rooms {
		s.leaveRoom(ctx, id, roomID, evReason)
	}
	expire := func() {
		s.mu.Lock()
		_, back := s.local[id]
		s.mu.Unlock()
		if back {
			return
		}
		cur, err := s.store.Peer(ctx, id)
		if err != nil || cur.Online || !cur.OfflineSince.Equal(now) {
			return
		}
		s.store.DeletePeer(ctx, id)
	}
	if grace := s.config().ResumeGrace; grace > 0 {
		time.AfterFunc(grace, expire)
	} else {
		expire()
	}
}

package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// heartbeat renews alive.<node> and makes sure node.<node> (the
// registration the reaper looks for) exists.
func (s *Store) heartbeat(ctx context.Context) error {
	now := []byte(strconv.FormatInt(time.Now().UnixMilli(), 10))
	if _, err := s.nodes.Put(ctx, "alive."+s.node, now); err != nil {
		return unavailable("heartbeat", err)
	}
	_, err := s.peers.cas(ctx, "node."+s.node, func(cur *entry) ([]byte, bool, error) {
		if cur != nil {
			return nil, false, errAbort
		}
		return now, false, nil
	})
	if err != nil && !errors.Is(err, errAbort) {
		return unavailable("register node", err)
	}
	return nil
}

func (s *Store) period() time.Duration { return s.cfg.PresenceTTL / 3 }

func (s *Store) heartbeatLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.period())
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		octx, cancel := s.op(ctx)
		err := s.heartbeat(octx)
		cancel()
		switch {
		case err != nil && !failing:
			failing = true
			s.healthySince.Store(0)
			s.log.Error("heartbeat to NATS failed: if this lasts longer than presence-ttl, other nodes take this node's peers out of their rooms", "err", err, "presence_ttl", s.cfg.PresenceTTL)
		case err == nil && failing:
			failing = false
			s.healthySince.Store(time.Now().UnixNano())
			s.log.Info("heartbeat to NATS restored")
		}
	}
}

// reaperLoop looks for dead nodes every presence-ttl/3 and reaps their peers.
// leftovers are peers a previous run of this node id left in the index: those
// that have not resumed here after one presence-ttl are reaped.
func (s *Store) reaperLoop(ctx context.Context, leftovers []string) {
	defer s.wg.Done()
	t := time.NewTicker(s.period())
	defer t.Stop()
	leftoverAt := time.Now().Add(s.cfg.PresenceTTL)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if leftovers != nil && time.Now().After(leftoverAt) {
			for _, k := range leftovers {
				id := unescape(strings.TrimPrefix(k, "n."+s.node+"."))
				if s.localSink(id) == nil {
					s.reapPeer(ctx, s.node, id)
				}
			}
			leftovers = nil
		}
		s.reapDead(ctx)
	}
}

// reapDead reaps every registered node whose heartbeat has expired. It
// does nothing until this node's own heartbeats have gone through for one
// presence-ttl: after a NATS outage every node's heartbeat may have expired,
// and live nodes need that long to renew theirs.
func (s *Store) reapDead(ctx context.Context) {
	since := s.healthySince.Load()
	if since == 0 || time.Since(time.Unix(0, since)) < s.cfg.PresenceTTL {
		return
	}
	for _, node := range s.registeredNodes() {
		if node == s.node || ctx.Err() != nil {
			continue
		}
		octx, cancel := s.op(ctx)
		_, err := s.nodes.Get(octx, "alive."+node)
		if !isMissing(err) {
			cancel()
			continue // alive, or NATS trouble: do nothing on doubt
		}
		// The lease expires with the bucket's TTL, so a reaper that dies
		// mid-way is replaced.
		_, err = s.nodes.Create(octx, "reap."+node, []byte(s.node))
		cancel()
		if err != nil {
			continue
		}
		s.log.Warn("node stopped heartbeating: taking its peers out of their rooms", "node", node)
		s.metrics.deadNodes.Inc()
		if s.reapNode(ctx, node) {
			octx, cancel := s.op(ctx)
			s.peers.del(octx, "node."+node)
			cancel()
		}
	}
}

// watchNodes keeps the set of registered nodes (node.* in the peers bucket)
// with one long-lived watcher, so the reaper's pass is a read per node.
func (s *Store) watchNodes(ctx context.Context) error {
	w, err := s.peers.kv.Watch(ctx, "node.*")
	if err != nil {
		return unavailable("watch nodes", err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				node := strings.TrimPrefix(e.Key(), "node.")
				s.regMu.Lock()
				if e.Operation() == jetstream.KeyValuePut {
					s.registered[node] = true
				} else {
					delete(s.registered, node)
				}
				s.regMu.Unlock()
			}
		}
	}()
	return nil
}

func (s *Store) registeredNodes() []string {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	out := make([]string, 0, len(s.registered))
	for n := range s.registered {
		out = append(out, n)
	}
	return out
}

// reapNode reaps every peer indexed under node; it reports whether all were done.
func (s *Store) reapNode(ctx context.Context, node string) bool {
	octx, cancel := s.op(ctx)
	keys, err := s.keys(octx, s.peers.kv, "n."+node+".*")
	cancel()
	if err != nil {
		return false
	}
	all := true
	for _, k := range keys {
		if ctx.Err() != nil {
			return false
		}
		if !s.reapPeer(ctx, node, unescape(strings.TrimPrefix(k, "n."+node+"."))) {
			all = false
		}
	}
	return all
}

// reapPeer removes a peer of a dead node: its record first (compare-and-set,
// so a peer that resumed elsewhere meanwhile is kept), then its memberships,
// telling the remaining members. It reports whether it got to the end.
func (s *Store) reapPeer(ctx context.Context, node, id string) bool {
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.getPeer(octx, id)
	switch {
	case errors.Is(err, signaling.ErrNotFound):
	case err != nil:
		return false
	case v.Node != node:
		// Moved to another node: only the stale index entry goes.
	default:
		if gone, err := s.deletePeer(octx, id, v.Rev); err != nil || gone == nil {
			return false // changed meanwhile: the next pass looks again
		}
		s.metrics.reaped.Inc()
		for _, roomID := range v.Rooms {
			s.leave(ctx, id, roomID)
		}
	}
	return s.peers.del(octx, indexKey(node, id)) == nil
}

// leave takes id out of a room the way the signaling server does when a
// peer times out: host migration, peer_left and room_updated to the rest;
// a room left empty is removed at once (its members' node is gone, so no one
// resumes into it).
func (s *Store) leave(ctx context.Context, id, roomID string) {
	newHost := ""
	r, err := s.UpdateRoom(ctx, roomID, func(r *signaling.Room) error {
		i := slices.IndexFunc(r.Members, func(m signaling.Member) bool { return m.PeerID == id })
		if i < 0 {
			return signaling.ErrNotFound
		}
		r.Members = slices.Delete(r.Members, i, i+1)
		newHost = ""
		if r.Host == id {
			r.Host = ""
			if len(r.Members) > 0 {
				r.Host = r.Members[0].PeerID
				newHost = r.Host
			}
		}
		if len(r.Members) == 0 {
			r.Deleted = true
		}
		return nil
	})
	if err != nil || len(r.Members) == 0 {
		return
	}
	ids := make([]string, len(r.Members))
	for i, m := range r.Members {
		ids[i] = m.PeerID
	}
	s.DeliverMany(ctx, ids, frame(client.TypePeerLeft, client.PeerLeft{RoomID: roomID, PeerID: id, Reason: "timeout", NewHost: newHost}))
	if newHost != "" {
		s.DeliverMany(ctx, ids, frame(client.TypeRoomUpdated, client.RoomUpdated{Room: r.Info(), Reason: "host_migrated"}))
	}
}

// frame encodes a server event the way the signaling server does.
func frame(typ string, body any) []byte {
	b, _ := json.Marshal(struct {
		Type string `json:"type"`
		Data any    `json:"data"`
	}{typ, body})
	return b
}

// unescape reverses escape.
func unescape(k string) string {
	if k == "=" {
		return ""
	}
	if !strings.Contains(k, "=") {
		return k
	}
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] == '=' && i+2 < len(k) {
			if n, err := strconv.ParseUint(k[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(n))
				i += 2
				continue
			}
		}
		b.WriteByte(k[i])
	}
	return b.String()
}

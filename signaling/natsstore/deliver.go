package natsstore

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/rendezvous-p2p/rendezvous/signaling"
)

// Headers of a delivery message on <prefix>.node.<node>, and of an evict.
const (
	hdrTo         = "Rzv-To"       // comma-separated peer ids
	hdrHop        = "Rzv-Hop"      // set on a message forwarded once after the peer moved
	hdrAttachedTo = "Rzv-Attached" // evict: the peer attached to this node
)

var _ signaling.ReplaceNotifier = (*Store)(nil)

// Attach makes this node the receiver of frames for peerID. When the peer's
// record names another node (it resumed here after its node went away or its
// connection moved), the record and the node index are moved to this node
// first, so other nodes route to it from now on.
func (s *Store) Attach(peerID string, deliver func(frame []byte)) (detach func()) {
	return s.AttachReplaceable(peerID, deliver, nil)
}

// AttachReplaceable is Attach; replaced (if not nil) is called when the
// peer attaches on another node while still attached here
// (signaling.ReplaceNotifier).
func (s *Store) AttachReplaceable(peerID string, deliver func(frame []byte), replaced func()) (detach func()) {
	k := &sink{deliver: deliver, replaced: replaced}
	s.sinkMu.Lock()
	s.sinks[peerID] = k
	s.sinkMu.Unlock()
	if _, fresh := s.fresh.LoadAndDelete(peerID); !fresh {
		s.claim(peerID)
	}
	// After the claim: a node that hears of this attach finds the record
	// naming this node.
	s.evict(peerID, true)
	return func() {
		s.sinkMu.Lock()
		gone := s.sinks[peerID] == k
		if gone {
			delete(s.sinks, peerID)
		}
		s.sinkMu.Unlock()
		if gone {
			s.evict(peerID, false)
		}
	}
}

// Where remote peers are: Deliver caches the node a peer's record names for
// locationTTL, so a burst of frames to one peer costs one KV read. A node
// announces on <prefix>.evict every peer that attaches to it or detaches
// from it, and every node drops that peer's entry; a frame that still goes
// to the old node is forwarded once (onFrames).
const (
	locationTTL  = 5 * time.Second
	maxLocations = 1 << 18
	evictSubject = ".evict"
)

type location struct {
	node string
	at   time.Time
}

func (s *Store) cachedNode(id string) (string, bool) {
	s.locMu.Lock()
	defer s.locMu.Unlock()
	l, ok := s.locations[id]
	if !ok || time.Since(l.at) > locationTTL {
		return "", false
	}
	return l.node, true
}

func (s *Store) cacheNode(id, node string) {
	s.locMu.Lock()
	defer s.locMu.Unlock()
	if len(s.locations) >= maxLocations {
		clear(s.locations)
	}
	s.locations[id] = location{node, time.Now()}
}

// evict announces that id attached to this node (attached) or detached
// from it.
func (s *Store) evict(id string, attached bool) {
	s.dropLocation(id)
	m := &nats.Msg{Subject: s.cfg.Prefix + evictSubject, Data: []byte(id)}
	if attached {
		m.Header = nats.Header{hdrAttachedTo: []string{s.node}}
	}
	s.nc.PublishMsg(m)
}

func (s *Store) dropLocation(id string) {
	s.locMu.Lock()
	delete(s.locations, id)
	s.locMu.Unlock()
}

// onEvict forgets where a peer is. When the peer attached to another node
// while its sink here wants to know (AttachReplaceable), the record is read
// off this goroutine and, if it names the other node, replaced is called.
func (s *Store) onEvict(m *nats.Msg) {
	id := string(m.Data)
	s.dropLocation(id)
	node := m.Header.Get(hdrAttachedTo)
	if node == "" || node == s.node {
		return
	}
	k := s.localSink(id)
	if k == nil || k.replaced == nil || !k.notified.CompareAndSwap(false, true) {
		return
	}
	go func() {
		ctx, cancel := s.op(context.Background())
		v, err := s.getPeer(ctx, id)
		cancel()
		if err == nil && v.Node != s.node && s.localSink(id) == k {
			k.replaced()
			return
		}
		k.notified.Store(false)
	}()
}

// locate returns the node holding a remote peer, or ErrNotFound when it is
// offline, here without a connection, or unknown.
func (s *Store) locate(ctx context.Context, id string) (string, error) {
	if node, ok := s.cachedNode(id); ok {
		return node, nil
	}
	v, err := s.getPeer(ctx, id)
	if err != nil {
		return "", err
	}
	if !v.Online || v.Node == s.node {
		return "", signaling.ErrNotFound
	}
	s.cacheNode(id, v.Node)
	return v.Node, nil
}

// claim moves a peer's record to this node if it names another one.
func (s *Store) claim(peerID string) {
	ctx, cancel := s.op(context.Background())
	defer cancel()
	v, err := s.getPeer(ctx, peerID)
	if err != nil || v.Node == s.node {
		return
	}
	if _, err := s.peers.put(ctx, indexKey(s.node, peerID), nil); err != nil {
		s.log.Warn("claim peer", "peer", peerID, "err", err)
		return
	}
	old := ""
	if _, err := s.updatePeer(ctx, peerID, func(v *peerValue) error {
		old = v.Node
		v.Node = s.node
		return nil
	}); err != nil {
		s.log.Warn("claim peer", "peer", peerID, "err", err)
		return
	}
	if old != "" && old != s.node {
		s.peers.del(ctx, indexKey(old, peerID))
	}
}

func (s *Store) localSink(id string) *sink {
	s.sinkMu.RLock()
	defer s.sinkMu.RUnlock()
	return s.sinks[id]
}

// Deliver hands frame to peerID: directly when it is attached here, else as
// one message on the subject of the node its record names. ErrNotFound when
// the peer has no record or is offline.
func (s *Store) Deliver(ctx context.Context, peerID string, frame []byte) error {
	if k := s.localSink(peerID); k != nil {
		k.deliver(frame)
		return nil
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	node, err := s.locate(ctx, peerID)
	if err != nil {
		return err
	}
	return s.publish(node, peerID, frame, false)
}

// DeliverMany hands one frame to several peers with one message per node
// that holds some of them (signaling.MultiDeliverer). It returns how many
// peers it was handed to.
func (s *Store) DeliverMany(ctx context.Context, peerIDs []string, frame []byte) int {
	n := 0
	byNode := map[string][]string{}
	ctx, cancel := s.op(ctx)
	defer cancel()
	for _, id := range peerIDs {
		if k := s.localSink(id); k != nil {
			k.deliver(frame)
			n++
			continue
		}
		node, err := s.locate(ctx, id)
		if err != nil {
			continue
		}
		byNode[node] = append(byNode[node], id)
	}
	for node, ids := range byNode {
		if s.publish(node, strings.Join(ids, ","), frame, false) == nil {
			n += len(ids)
		}
	}
	return n
}

func (s *Store) publish(node, to string, frame []byte, hop bool) error {
	m := &nats.Msg{Subject: s.nodeSubject(node), Header: nats.Header{hdrTo: []string{to}}, Data: frame}
	if hop {
		m.Header.Set(hdrHop, "1")
	}
	if err := s.nc.PublishMsg(m); err != nil {
		return unavailable("deliver", err)
	}
	return nil
}

// onFrames receives frames for peers on this node. A peer that is no longer
// here but whose record names another node (it moved) gets the frame
// forwarded once.
func (s *Store) onFrames(m *nats.Msg) {
	hop := m.Header.Get(hdrHop) != ""
	for id := range strings.SplitSeq(m.Header.Get(hdrTo), ",") {
		if k := s.localSink(id); k != nil {
			k.deliver(m.Data)
			continue
		}
		if hop || !s.Connected() {
			continue
		}
		// Short: this runs on the delivery subscription, in front of frames
		// for other peers.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		v, err := s.getPeer(ctx, id)
		cancel()
		if err == nil && v.Online && v.Node != s.node {
			s.publish(v.Node, id, m.Data, true)
		} else if err != nil && !errors.Is(err, signaling.ErrNotFound) {
			s.log.Warn("forward frame", "peer", id, "err", err)
		}
	}
}

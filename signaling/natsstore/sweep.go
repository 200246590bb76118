package natsstore

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rendezvous-p2p/rendezvous/signaling"
)

// sweepLoop removes, once per sweep-interval and on one node per interval,
// what no node's timer will remove any more: rooms empty for longer than the
// interval (their removal timer died with its node), join codes whose room
// is gone (a create interrupted by an outage), and delete markers older than
// the interval.
func (s *Store) sweepLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		window := time.Now().UnixNano() / int64(s.cfg.SweepInterval)
		octx, cancel := s.op(ctx)
		_, err := s.nodes.Create(octx, "sweep."+strconv.FormatInt(window, 10), []byte(s.node))
		cancel()
		if err != nil {
			continue // another node has this interval, or NATS is away
		}
		s.sweep(ctx, time.Now().Add(-s.cfg.SweepInterval))
	}
}

// sweep does one pass over what is older than cutoff; it returns how many
// rooms and codes it removed.
func (s *Store) sweep(ctx context.Context, cutoff time.Time) (rooms, codes int) {
	entries := func(filter string) []jetstream.KeyValueEntry {
		octx, cancel := context.WithTimeout(ctx, 10*s.cfg.OpTimeout)
		defer cancel()
		w, err := s.rooms.kv.Watch(octx, filter, jetstream.IgnoreDeletes())
		if err != nil {
			return nil
		}
		defer w.Stop()
		var out []jetstream.KeyValueEntry
		for e := range w.Updates() {
			if e == nil {
				break
			}
			out = append(out, e)
		}
		return out
	}
	for _, e := range entries("room.*") {
		var v roomValue
		if json.Unmarshal(e.Value(), &v) != nil || len(v.Members) > 0 || v.EmptySince.IsZero() || v.EmptySince.After(cutoff) {
			continue
		}
		_, err := s.UpdateRoom(ctx, v.ID, func(r *signaling.Room) error {
			if len(r.Members) > 0 || !r.EmptySince.Equal(v.EmptySince) {
				return errAbort
			}
			r.Deleted = true
			return nil
		})
		if err == nil {
			rooms++
		}
	}
	for _, e := range entries("code.*") {
		if e.Created().After(cutoff) {
			continue
		}
		code := unescape(strings.TrimPrefix(e.Key(), "code."))
		octx, cancel := s.op(ctx)
		r, err := s.getRoom(octx, string(e.Value()))
		if err == nil && r.Code == code {
			cancel()
			continue
		}
		if err != nil && err != signaling.ErrNotFound {
			cancel()
			continue
		}
		rev := e.Revision()
		_, err = s.rooms.cas(octx, e.Key(), func(cur *entry) ([]byte, bool, error) {
			if cur == nil || cur.Rev != rev {
				return nil, false, errAbort
			}
			return nil, true, nil
		})
		cancel()
		if err == nil {
			codes++
		}
	}
	for _, b := range []*bucket{s.rooms, s.peers} {
		octx, cancel := context.WithTimeout(ctx, 10*s.cfg.OpTimeout)
		b.kv.PurgeDeletes(octx, jetstream.DeleteMarkersOlderThan(s.cfg.SweepInterval))
		cancel()
	}
	if rooms+codes > 0 {
		s.log.Info("swept abandoned rooms and codes", "rooms", rooms, "codes", codes)
	}
	return rooms, codes
}

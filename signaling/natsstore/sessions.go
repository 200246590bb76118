package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"sync"

	"github.com/rendezvous-p2p/rendezvous/signaling"
)

// Punch sessions (signaling.SessionStore) live in <prefix>-sessions, a bucket
// whose entries expire signaling.SessionTTL after their last write:
//
//	s.<id>   JSON signaling.Session    put by connect; reported set by CAS
//
// so the connect_result of either peer is accepted on any node, and the
// first report (the one that flips Reported) is counted once in the whole
// deployment.

var _ signaling.SessionStore = (*Store)(nil)

func sessionKey(id string) string { return "s." + escape(id) }

// maxSessionID bounds the ids looked up: the server's are 18 characters.
const maxSessionID = 64

// PutSessions writes the sessions of one connect, all at once.
func (s *Store) PutSessions(ctx context.Context, ss []*signaling.Session) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	errs := make([]error, len(ss))
	var wg sync.WaitGroup
	for i, sess := range ss {
		v := *sess
		v.Reported = false
		data, _ := json.Marshal(&v)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.sessions.put(ctx, sessionKey(v.ID), data)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return s.unavailable("put sessions", err)
	}
	return nil
}

// ReportSession flips Reported with compare-and-set: of two reports racing
// on two nodes exactly one is first.
func (s *Store) ReportSession(ctx context.Context, id, by string) (*signaling.Session, bool, error) {
	if id == "" || len(id) > maxSessionID {
		return nil, false, signaling.ErrNotFound
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	var got signaling.Session
	first := false
	_, err := s.sessions.cas(ctx, sessionKey(id), func(cur *entry) ([]byte, bool, error) {
		if cur == nil {
			return nil, false, signaling.ErrNotFound
		}
		var v signaling.Session
		if err := json.Unmarshal(cur.Value, &v); err != nil || (v.A != by && v.B != by) {
			return nil, false, signaling.ErrNotFound
		}
		got = v
		if v.Reported {
			first = false
			return nil, false, errAbort
		}
		first = true
		v.Reported = true
		data, _ := json.Marshal(&v)
		return data, false, nil
	})
	switch {
	case err == nil, errors.Is(err, errAbort):
		return &got, first, nil
	case errors.Is(err, signaling.ErrNotFound):
		return nil, false, err
	default:
		return nil, false, s.unavailable("report session", err)
	}
}

package natsstore

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// bucket is a KV bucket with the compare-and-set this package relies on.
//
// On a replicated bucket, nats-server before 2.10 accepts concurrent writes
// that expect the same last revision of a key (nats-server issue #4320:
// measured here with 2.9.10, 30 of 30 racing writes accepted), so per-key
// compare-and-set cannot keep a room's capacity. The stream-wide expectation
// (Nats-Expected-Last-Sequence) is checked against in-flight writes and is
// correct there, so such buckets run in "serial" mode: a write expects the
// whole bucket to be unchanged since the state it read. That serialises the
// bucket's conditional writes (one per round trip, see docs/scale-out.md);
// on 2.10+ or with one replica each key is checked on its own.
type bucket struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	stream jetstream.Stream
	subj   string // "$KV.<bucket>."
	serial bool
	// last is a stream sequence known to be applied on the leader: the
	// expectation of the next serial write.
	last atomic.Uint64
	// conflicts counts retried writes.
	conflicts interface{ Inc() }
}

// errAbort stops a cas without writing and without error.
var errAbort = errors.New("abort")

// attemptTimeout bounds one request, so a request lost while a stream
// leader moves is retried within the operation's deadline.
const attemptTimeout = 1500 * time.Millisecond

// retry runs f until it succeeds, fails for good, or ctx ends. Errors that a
// NATS server failover or reconnect explains are retried.
func retry(ctx context.Context, f func(ctx context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := f(actx)
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil {
			if err != nil && ctx.Err() != nil && transient(err) {
				return err
			}
			return err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

func transient(err error) bool {
	switch {
	case isMissing(err), isConflict(err), errors.Is(err, errAbort),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, jetstream.ErrInvalidKey):
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
		return true
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		// 503 / "JetStream system temporarily unavailable" / no leader yet.
		// 5xx: the server could not serve it now (no leader yet, catching
		// up); 10005: no suitable peers while a cluster forms; 10059: stream
		// not found, answered by a server that has not learnt of it yet (the
		// buckets are never deleted while nodes run).
		return api.Code >= 500 || api.ErrorCode == 10008 || api.ErrorCode == 10005 || api.ErrorCode == 10059 || strings.Contains(api.Description, "unavailable")
	}
	return false
}

// get reads key at the stream leader.
func (b *bucket) get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	var e jetstream.KeyValueEntry
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		e, err = b.kv.Get(ctx, key)
		return err
	})
	return e, err
}

func (b *bucket) put(ctx context.Context, key string, value []byte) (uint64, error) {
	var rev uint64
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		rev, err = b.kv.Put(ctx, key, value)
		return err
	})
	return rev, err
}

// entry is the current value of a key for cas.
type entry struct {
	Value []byte
	Rev   uint64
}

// last reads the newest message of key at the stream leader: the value
// (nil when the key is missing or deleted) and the revision a per-key
// expectation must name (that of a delete marker too).
func (b *bucket) lastMsg(ctx context.Context, key string) (*entry, uint64, error) {
	var m *jetstream.RawStreamMsg
	err := retry(ctx, func(ctx context.Context) error {
		var err error
		m, err = b.stream.GetLastMsgForSubject(ctx, b.subj+key)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			m = nil
			return nil
		}
		return err
	})
	if err != nil || m == nil {
		return nil, 0, err
	}
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return nil, m.Sequence, nil
	}
	return &entry{Value: m.Data, Rev: m.Sequence}, m.Sequence, nil
}

// cas reads key and writes what fn makes of it, only if nothing changed in
// between, retrying on conflicts. fn gets nil when the key does not exist;
// it returns the new value, or del to delete the key, or an error to stop
// (errAbort: stop quietly). fn may run several times.
func (b *bucket) cas(ctx context.Context, key string, fn func(cur *entry) (value []byte, del bool, err error)) (uint64, error) {
	for attempt := 0; ; attempt++ {
		expect := uint64(0)
		if b.serial {
			expect = b.last.Load()
			if expect == 0 {
				if err := b.refresh(ctx); err != nil {
					return 0, err
				}
				expect = b.last.Load()
			}
		}
		cur, subjRev, err := b.lastMsg(ctx, key)
		if err != nil {
			return 0, err
		}
		value, del, err := fn(cur)
		if err != nil {
			return 0, err
		}
		m := &nats.Msg{Subject: b.subj + key, Header: nats.Header{}, Data: value}
		if del {
			m.Header.Set("KV-Operation", "DEL")
			m.Data = nil
		}
		opt := jetstream.WithExpectLastSequencePerSubject(subjRev)
		if b.serial {
			opt = jetstream.WithExpectLastSequence(expect)
		}
		var ack *jetstream.PubAck
		err = retry(ctx, func(ctx context.Context) error {
			var err error
			ack, err = b.js.PublishMsg(ctx, m, opt)
			return err
		})
		if err == nil {
			b.advance(ack.Sequence)
			return ack.Sequence, nil
		}
		if !wrongSequence(err) {
			return 0, err
		}
		b.conflicts.Inc()
		if b.serial {
			if err := b.refresh(ctx); err != nil {
				return 0, err
			}
		}
		if attempt >= maxAttempts {
			return 0, errContention
		}
		backoff(ctx, attempt)
	}
}

var errContention = errors.New("too much contention")

func wrongSequence(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (b *bucket) advance(seq uint64) {
	for {
		cur := b.last.Load()
		if seq <= cur || b.last.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// refresh learns the stream's last applied sequence from the leader.
func (b *bucket) refresh(ctx context.Context) error {
	return retry(ctx, func(ctx context.Context) error {
		info, err := b.stream.Info(ctx)
		if err != nil {
			return err
		}
		b.last.Store(info.State.LastSeq)
		return nil
	})
}

// del deletes key unconditionally.
func (b *bucket) del(ctx context.Context, key string) error {
	return retry(ctx, func(ctx context.Context) error { return b.kv.Delete(ctx, key) })
}

// backoff waits a little, growing with attempt, with jitter so that
// competing nodes do not retry in lockstep.
func backoff(ctx context.Context, attempt int) {
	if attempt < 2 {
		return
	}
	var b [1]byte
	rand.Read(b[:])
	d := time.Duration(min(attempt, 20)) * time.Duration(100+int(b[0])*4) * time.Microsecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

package signaling

import (
	"context"
	"errors"
)

// MultiDeliverer is implemented by a Store that can hand one frame to many
// peers at once, for room broadcasts: the NATS store (signaling/natsstore)
// sends one message per node holding some of them instead of one per peer.
// It returns how many peers the frame was handed to.
type MultiDeliverer interface {
	DeliverMany(ctx context.Context, peerIDs []string, frame []byte) int
}

// ErrUnavailable is wrapped by Store errors that mean the shared state could
// not be reached (the NATS store returns it while NATS is down); handlers
// can tell peers so instead of "not found".
var ErrUnavailable = errors.New("shared state (NATS) unreachable")

package app

import (
	"context"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
	"github.com/rendezvous-p2p/rendezvous/signaling/natsstore/natstest"
)

// Two `serve` nodes with `state: nats` share rooms: a room created through
// one node is joined by code through the other, and each sees the other peer.
func TestTwoNodesShareRoomsThroughNATS(t *testing.T) {
	cluster := natstest.StartCluster(t, 1)
	node := func(id string) *running {
		cfg := testConfig(t)
		cfg.State = "nats"
		cfg.NATS.URLs = cluster.URLs()
		cfg.NATS.NodeID = id
		cfg.NATS.Prefix = "rzvapptest"
		return start(t, cfg, Options{})
	}
	a, b := node("node-a"), node("node-b")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(r *running, name string) *client.Client {
		c, err := client.Dial(ctx, client.Config{URL: r.base, NoReconnect: true, Register: client.Register{Name: name, PublicKey: name + "-key"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	alice, bob := dial(a, "alice"), dial(b, "bob")
	room, err := alice.CreateRoom(ctx, client.CreateRoom{Name: "cross-node", Capacity: 4})
	if err != nil {
		t.Fatal(err)
	}
	joined, err := bob.Join(ctx, client.Join{Code: room.Room.Code})
	if err != nil {
		t.Fatalf("joining through the other node by code: %v", err)
	}
	var sawAlice bool
	for _, m := range joined.Members {
		sawAlice = sawAlice || m.Name == "alice" && m.PublicKey == "alice-key"
	}
	if !sawAlice {
		t.Fatalf("bob's member list %+v lacks alice's key", joined.Members)
	}
}

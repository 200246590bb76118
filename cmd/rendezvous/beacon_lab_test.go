package main

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
)

// `beacon announce` on one LAN host is found by `beacon listen --json` on
// another, and its goodbye on Ctrl-C removes it. Everything runs inside the
// lab's namespaces: nothing is broadcast from the host's own network.
func TestBeaconCommandsOnALAN(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{LANs: []natlab.LAN{{Name: "party", Hosts: 2}}})
	a, b := lab.Host("party", 0), lab.Host("party", 1)

	listen := b.Command(context.Background(), binary, "beacon", "listen", "--json", "--app", "mygame")
	lp := watchStdout(t, listen)
	t.Cleanup(func() { killGroup(listen) })

	ann := a.Command(context.Background(), binary, "beacon", "announce", "--app", "mygame", "--name", "Alice's server", "--room", "K7QX2M", "--port", "udp/7777", "--interval", "500ms")
	ap := watch(t, ann)
	t.Cleanup(func() { killGroup(ann) })

	found := lp.waitEvent(t, "found", 10*time.Second)
	peer, _ := found["peer"].(map[string]any)
	if peer["name"] != "Alice's server" || peer["room"] != "K7QX2M" || peer["app"] != "mygame" {
		t.Fatalf("found event does not carry the announcement: %v", found)
	}
	if peer["authenticated"] != false {
		t.Errorf("an unkeyed beacon is shown as authenticated: %v", peer)
	}
	// Ctrl-C: the announcer says goodbye and the listener drops it at once.
	ann.Process.Signal(syscall.SIGINT)
	if err := ap.waitExit(t, 10*time.Second); err != nil {
		t.Fatalf("announce did not exit cleanly on SIGINT: %v\n%s", err, ap.dump())
	}
	lp.waitEvent(t, "gone", 5*time.Second)
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
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

// `connect --lan`: two players on one LAN find each other with no server and
// exchange data directly; a player on another LAN behind a router is not found.
func TestConnectOverLANWithoutServer(t *testing.T) {
	natlab.Require(t)
	lab := natlab.New(t, natlab.Topology{LANs: []natlab.LAN{{Name: "party", Hosts: 2}}})
	a, b := lab.Host("party", 0), lab.Host("party", 1)
	payload := randomPayload(32 << 10)

	pa, outA := labConnect(t, a, nil, "--lan", "--create", "--interval", "500ms")
	room := pa.waitEvent(t, "room", 10*time.Second)
	pb, _ := labConnect(t, b, payload, "--lan", "--room", room["code"].(string), "--interval", "500ms")
	ev := pa.waitLine(t, "connected or failed", func(l map[string]any) bool { return l["event"] == "connected" || l["event"] == "failed" }, 15*time.Second)
	if ev["event"] != "connected" {
		t.Fatalf("no LAN session: %v", ev)
	}
	// Direct over the LAN: b's IPv4 address, or its IPv6 link-local one when
	// the beacon came by IPv6 multicast first.
	path := ev["path"].(map[string]any)
	remote := fmt.Sprint(path["remote"])
	if path["kind"] != "direct" || !strings.HasPrefix(remote, b.Addr().String()+":") && !strings.HasPrefix(remote, "[fe80:") {
		t.Errorf("want a direct path to b on the LAN (%v or link-local), got %v", b.Addr(), path)
	}
	if err := pb.waitExit(t, 15*time.Second); err != nil {
		t.Fatalf("joiner: %v\n%s", err, pb.dump())
	}
	if err := pa.waitExit(t, 15*time.Second); err != nil {
		t.Fatalf("creator: %v\n%s", err, pa.dump())
	}
	if !bytes.Equal(outA.Bytes(), payload) {
		t.Fatalf("payload: %d bytes arrived, want %d intact", outA.Len(), len(payload))
	}
}

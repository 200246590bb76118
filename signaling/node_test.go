package signaling

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// needNode finds node and npm; without them the test skips, except under CI
// where a skip would hide a broken environment.
func needNode(t *testing.T) (node, npm string) {
	t.Helper()
	node, errNode := exec.LookPath("node")
	npm, errNpm := exec.LookPath("npm")
	if errNode != nil || errNpm != nil {
		msg := "node and npm are needed for the Node client interop test (install Node.js >= 18)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return node, npm
}

// TestNodeClientInterop proves docs/signaling.md is enough for another
// language: a Node client (signaling/testclient/node, written from the doc)
// joins a Go client's room by code and they exchange signals.
func TestNodeClientInterop(t *testing.T) {
	node, npm := needNode(t)
	dir, err := filepath.Abs("testclient/node")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ws")); err != nil {
		cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci: %v\n%s", err, out)
		}
	}
	ts := startServer(t, DefaultConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := client.Dial(ctx, client.Config{URL: ts.URL, Register: client.Register{Name: "go-peer", PublicKey: "Z28ta2V5"}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	room, err := g.CreateRoom(ctx, client.CreateRoom{Name: "interop"})
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "client.js"), ts.WS, room.Room.Code)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan map[string]any, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m
			}
		}
		close(lines)
	}()

	// The Go side sees the Node peer join with its key, then signals it.
	var nodeID string
	for nodeID == "" {
		select {
		case ev, ok := <-g.Events():
			if !ok {
				t.Fatal("go client closed")
			}
			if ev.Type == client.TypePeerJoined {
				var pj client.PeerJoined
				ev.Decode(&pj)
				if pj.Peer.Name != "node-peer" || pj.Peer.PublicKey != "bm9kZS1wdWJsaWMta2V5" || len(pj.Peer.Candidates) != 1 {
					t.Fatalf("node peer = %+v", pj.Peer)
				}
				nodeID = pj.Peer.ID
			}
		case <-ctx.Done():
			t.Fatalf("node never joined; stderr: %s", stderr.String())
		}
	}
	offer := map[string]string{"type": "offer", "sdp": "v=0 from go"}
	if err := g.Signal(ctx, nodeID, room.Room.ID, offer); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-g.Events():
			if ev.Type != client.TypeSignal {
				continue
			}
			var s client.Signal
			ev.Decode(&s)
			if s.From != nodeID {
				t.Fatalf("signal from %q", s.From)
			}
			var body struct {
				Echo map[string]string `json:"echo"`
				From string            `json:"from"`
			}
			json.Unmarshal(s.Payload, &body)
			if body.From != "node" || body.Echo["sdp"] != "v=0 from go" {
				t.Fatalf("node answered %s", s.Payload)
			}
			// Node's view: it saw the Go peer in the member list.
			sawMembers := false
			for m := range lines {
				if m["event"] == "room_joined" {
					members, _ := m["members"].([]any)
					sawMembers = len(members) == 2
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("node: %v; stderr: %s", err, stderr.String())
			}
			if !sawMembers {
				t.Fatal("node did not get both members on join")
			}
			return
		case <-ctx.Done():
			t.Fatalf("no answer from node; stderr: %s", stderr.String())
		}
	}
}

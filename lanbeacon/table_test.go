package lanbeacon

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestWriteTable(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	peers := []Peer{
		{Announcement: Announcement{App: "minetest", Name: "Alice", Room: "ABCD", Ports: []Port{{UDP, 30000}}},
			Sources: []Source{{Addr: netip.MustParseAddr("10.0.1.3")}}, LastSeen: now.Add(-1500 * time.Millisecond), Authenticated: true},
		{Announcement: Announcement{App: "quake", Name: "Bob"},
			Sources: []Source{{Addr: netip.MustParseAddr("fe80::1").WithZone("eth0")}}, LastSeen: now},
	}
	var b strings.Builder
	if err := WriteTable(&b, peers, now); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"NAME   ADDRESS         GAME      ROOM  AGE   AUTH\n" +
		"Alice  10.0.1.3:30000  minetest  ABCD  1.5s  yes\n" +
		"Bob    fe80::1%eth0    quake     -     0s    no\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestEventJSON(t *testing.T) {
	ev := Event{Kind: Found, Time: time.Unix(0, 0).UTC(), Peer: Peer{Instance: InstanceID{0xAB, 1},
		Announcement: Announcement{App: "g", Name: "n", Ports: []Port{{UDP, 7777}}, Fingerprint: Fingerprint{0xCD}},
		Sources:      []Source{{Addr: netip.MustParseAddr("10.0.0.2"), Interface: "eth0"}}, Interval: 2 * time.Second}}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	peer, _ := got["peer"].(map[string]any)
	if got["event"] != "found" || peer["instance"] != "ab01000000000000" || peer["app"] != "g" || peer["name"] != "n" ||
		peer["interval"] != "2s" || peer["fingerprint"] != "cd" || peer["authenticated"] != false {
		t.Fatalf("%s", b)
	}
	if ports, _ := peer["ports"].([]any); len(ports) != 1 || ports[0] != "udp/7777" {
		t.Fatalf("ports in %s", b)
	}
	if src, _ := peer["sources"].([]any); len(src) != 1 || src[0].(map[string]any)["addr"] != "10.0.0.2" {
		t.Fatalf("sources in %s", b)
	}
}

func TestListenerAppFilter(t *testing.T) {
	l := startListener(t, DefaultConfig(), Options{App: "mine"})
	sendRaw(t, l.addr,
		beacon(InstanceID{1}, nil, time.Time{}, func(p *packet) { p.App = "other" }),
		beacon(InstanceID{2}, nil, time.Time{}, func(p *packet) { p.App = "mine" }))
	if ev := nextEvent(t, l.events, 5*time.Second); ev.Kind != Found || ev.Peer.Instance != (InstanceID{2}) {
		t.Fatalf("%+v", ev)
	}
	waitFor(t, "both datagrams", 5*time.Second, func() bool { return l.Stats().Received == 2 })
	if st := l.Stats(); st.OtherApp != 1 || len(l.Table()) != 1 {
		t.Fatalf("stats %+v table %+v", st, l.Table())
	}
}

package punch

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/turncreds"
	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// An agent renews its relay allocations before the TURN credentials they
// were made with expire, and a session that runs on the relay moves to the
// new allocations on both sides (get_ice_servers, RenewRelays, update_peer,
// peer_updated) and keeps carrying data.
func TestAgentRenewsRelayBeforeCredentialsExpire(t *testing.T) {
	old := relayRetireAfter
	relayRetireAfter = time.Second
	t.Cleanup(func() { relayRetireAfter = old })
	r := startTestRelay(t)
	turnURL := r.servers[0].URL
	const ttl = 6 * time.Second // renewed after 4.5 s
	sig, err := signaling.New(signaling.DefaultConfig(), signaling.Options{
		ICEServers: func(user string) ([]client.ICEServer, error) {
			c, err := turncreds.Mint([]byte(testRelaySecret), user, ttl, time.Now())
			return []client.ICEServer{{URLs: []string{turnURL}, Username: c.Username, Credential: c.Password}}, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sig.Run(ctx); close(done) }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: sig.Handler()}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close(); cancel(); <-done })
	url := "http://" + ln.Addr().String()

	agent := func(name string) *Agent {
		ep := newEndpoint(t)
		actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a, err := StartAgent(actx, ep, AgentConfig{
			Signaling: client.Config{URL: url, Register: client.Register{Name: name}},
			HostAddrs: []netip.Addr{}, // relayed only
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	host, guest := agent("host"), agent("guest")
	room, err := host.CreateRoom(ctx, client.CreateRoom{Name: "long game"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := guest.Join(ctx, room.Room.Code); err != nil {
		t.Fatal(err)
	}
	sh, sg := nextSession(t, host), nextSession(t, guest)
	if sh.Path().Kind != RelayUDP {
		t.Fatalf("path %+v, want relay-udp", sh.Path())
	}
	first := sh.Path().Local

	// Both renew; the host's session moves to its new allocation.
	for _, a := range []*Agent{host, guest} {
		waitEvent(t, a, func(e AgentEvent) bool { return e.Event == "relay" && e.Reason == "renewed" }, 3*ttl)
	}
	waitPathEvent(t, sh.Session, func(ev PathEvent) bool { return ev.Path.Kind == RelayUDP && ev.Path.Local != first }, 3*ttl)
	// Past the first credentials' expiry, the session still carries data.
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	st, err := sh.OpenStream(rctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	in, err := sg.AcceptStream(rctx)
	if err != nil {
		t.Fatalf("stream after the renewal: %v (paths: host %+v, guest %+v)", err, sh.Path(), sg.Path())
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(in, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("stream after the renewal: %q, %v", buf, err)
	}
	t.Logf("host path %+v, guest path %+v", sh.Path(), sg.Path())
}

// waitEvent reads a's events until match.
func waitEvent(t *testing.T, a *Agent, match func(AgentEvent) bool, within time.Duration) AgentEvent {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-a.Events():
			if match(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no matching event within %v", within)
		}
	}
}

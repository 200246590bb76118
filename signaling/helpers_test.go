package signaling

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

const waitFor = 10 * time.Second

type testServer struct {
	*Server
	URL  string // http base
	WS   string // ws url
	Reg  *prometheus.Registry
	stop context.CancelFunc
	done chan error
}

// startServer runs a Server behind httptest on 127.0.0.1:0.
func startServer(t testing.TB, cfg Config, mod ...func(*Options)) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := Options{Registerer: reg}
	for _, m := range mod {
		m(&opts)
	}
	s, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.Ready()
	ts := &testServer{Server: s, URL: hs.URL, WS: "ws" + strings.TrimPrefix(hs.URL, "http") + client.PathWS, Reg: reg, stop: cancel, done: done}
	t.Cleanup(func() {
		cancel()
		<-done
		hs.Close()
	})
	return ts
}

// raw is a protocol-level test client: it sees every frame.
type raw struct {
	t      testing.TB
	ws     *websocket.Conn
	frames chan client.Envelope
	closed chan error
	rid    uint64
	noPong bool
	mu     sync.Mutex
	stash  []client.Envelope // frames call() skipped, for next()
}

func dialRaw(t testing.TB, url, token string) (*raw, error) {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(32 << 20)
	r := &raw{t: t, ws: ws, frames: make(chan client.Envelope, 1024), closed: make(chan error, 1)}
	t.Cleanup(func() { ws.CloseNow() })
	return r, nil
}

func mustRaw(t testing.TB, url string) *raw {
	t.Helper()
	r, err := dialRaw(t, url, "")
	if err != nil {
		t.Fatal(err)
	}
	r.start()
	return r
}

// start runs the reader; pings are answered unless noPong.
func (r *raw) start() {
	go func() {
		for {
			_, b, err := r.ws.Read(context.Background())
			if err != nil {
				r.closed <- err
				close(r.frames)
				return
			}
			var env client.Envelope
			if err := json.Unmarshal(b, &env); err != nil {
				r.t.Errorf("server sent bad JSON: %q", b)
				continue
			}
			r.mu.Lock()
			noPong := r.noPong
			r.mu.Unlock()
			if env.Type == client.TypePing && !noPong {
				var p client.Ping
				json.Unmarshal(env.Data, &p)
				r.ws.Write(context.Background(), websocket.MessageText, mustFrame(client.TypePong, 0, client.Pong{Seq: p.Seq}))
				continue
			}
			if env.Type == client.TypePing {
				continue
			}
			r.frames <- env
		}
	}()
}

func (r *raw) setNoPong() {
	r.mu.Lock()
	r.noPong = true
	r.mu.Unlock()
}

func mustFrame(typ string, rid uint64, body any) []byte { return encodeFrame(typ, rid, body) }

func (r *raw) sendBytes(b []byte) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := r.ws.Write(ctx, websocket.MessageText, b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// send writes a request and returns its rid.
func (r *raw) send(typ string, body any) uint64 {
	r.t.Helper()
	r.rid++
	r.sendBytes(mustFrame(typ, r.rid, body))
	return r.rid
}

// next returns the next frame of one of types (other frames are skipped).
func (r *raw) next(types ...string) client.Envelope {
	r.t.Helper()
	for i, env := range r.stash {
		for _, typ := range types {
			if env.Type == typ {
				r.stash = append(r.stash[:i:i], r.stash[i+1:]...)
				return env
			}
		}
	}
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	for {
		select {
		case env, ok := <-r.frames:
			if !ok {
				r.t.Fatalf("connection closed while waiting for %v", types)
			}
			for _, typ := range types {
				if env.Type == typ {
					return env
				}
			}
		case <-timer.C:
			r.t.Fatalf("no %v frame within %v", types, waitFor)
		}
	}
}

// call sends a request and returns the reply (or error) with its rid.
func (r *raw) call(typ string, body, reply any) *client.ErrorBody {
	r.t.Helper()
	rid := r.send(typ, body)
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	for {
		select {
		case env, ok := <-r.frames:
			if !ok {
				r.t.Fatalf("connection closed while waiting for the answer to %s", typ)
			}
			if env.RID != rid {
				if env.RID == 0 {
					r.stash = append(r.stash, env)
				}
				continue
			}
			if env.Type == client.TypeError {
				var e client.ErrorBody
				json.Unmarshal(env.Data, &e)
				return &e
			}
			if reply != nil {
				if err := json.Unmarshal(env.Data, reply); err != nil {
					r.t.Fatal(err)
				}
			}
			return nil
		case <-timer.C:
			r.t.Fatalf("no answer to %s within %v", typ, waitFor)
		}
	}
}

func (r *raw) mustCall(typ string, body, reply any) {
	r.t.Helper()
	if e := r.call(typ, body, reply); e != nil {
		r.t.Fatalf("%s: error %s: %s", typ, e.Code, e.Message)
	}
}

func (r *raw) wantError(typ string, body any, code string) client.ErrorBody {
	r.t.Helper()
	e := r.call(typ, body, nil)
	if e == nil {
		r.t.Fatalf("%s: succeeded, want error %s", typ, code)
	}
	if e.Code != code {
		r.t.Fatalf("%s: error %s (%s), want %s", typ, e.Code, e.Message, code)
	}
	if e.Message == "" {
		r.t.Fatalf("%s: error %s without a message", typ, code)
	}
	return *e
}

func (r *raw) register(name string) client.Registered {
	r.t.Helper()
	var reg client.Registered
	r.mustCall(client.TypeRegister, client.Register{Protocol: client.ProtocolVersion, Name: name,
		PublicKey: "pk-" + name, Candidates: []client.Candidate{{Type: "host", Addr: "192.0.2.1:4000"}}}, &reg)
	return reg
}

// waitClosed waits for the server to close the connection and returns the close error.
func (r *raw) waitClosed() error {
	r.t.Helper()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	for {
		select {
		case <-r.frames:
		case err := <-r.closed:
			return err
		case <-timer.C:
			r.t.Fatalf("connection not closed within %v", waitFor)
		}
	}
}

func decode[T any](t testing.TB, env client.Envelope) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(env.Data, &v); err != nil {
		t.Fatalf("%s: %v (%s)", env.Type, err, env.Data)
	}
	return v
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not synchronisation
	}
}

func httptestRequest(t testing.TB, token string) *http.Request {
	req := httptest.NewRequest(http.MethodGet, client.PathWS, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req
}

func counter(ts *testServer, reason string) float64 {
	return testutilToFloat(ts.metrics.disconnects.WithLabelValues(reason))
}

func listenUDP() (net.PacketConn, error) { return net.ListenPacket("udp4", "127.0.0.1:0") }

func netUDPAddr(ap netip.AddrPort) net.Addr { return net.UDPAddrFromAddrPort(ap) }

func testutilToFloat(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

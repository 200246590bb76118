package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Config configures a Client.
type Config struct {
	// URL is the server: "ws(s)://host:port/v1/ws" or an "http(s)://host:port"
	// base to which /v1/ws is appended.
	URL string
	// Token is an API key or join token; TokenSource, when set, is asked for a
	// fresh one on every (re)connect instead.
	Token       string
	TokenSource func(ctx context.Context) (string, error)
	// Register is sent on connect; Protocol is filled in.
	Register Register
	// HTTPClient dials the WebSocket; nil = http.DefaultClient.
	HTTPClient *http.Client
	Logger     *slog.Logger
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 100ms, 10s).
	MinBackoff, MaxBackoff time.Duration
	// NoReconnect turns reconnection off: the client is closed when the
	// connection ends.
	NoReconnect bool
	// EventBuffer is the size of the Events channel (default 256). When it is
	// full the client stops reading until there is room.
	EventBuffer int
}

// Event is a frame the server sent on its own (peer_joined, signal, punch,
// ...) or one of the client's own events: "disconnected" (Data is an
// ErrorBody) and "reconnected" (Data is the new Registered).
type Event struct {
	Type string
	Data json.RawMessage
}

// Client-side event types.
const (
	EventDisconnected = "disconnected"
	EventReconnected  = "reconnected"
)

// Decode unmarshals the event data into v.
func (e Event) Decode(v any) error { return json.Unmarshal(e.Data, v) }

// ErrClosed is returned by calls on a closed client.
var ErrClosed = errors.New("signaling client closed")

// ErrDisconnected is returned for requests in flight when the connection drops.
var ErrDisconnected = errors.New("signaling connection lost")

// Client is a connection to a signaling server that reconnects with backoff
// and resumes its session (same peer id and rooms) when it can.
type Client struct {
	cfg    Config
	log    *slog.Logger
	events chan Event

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	rid atomic.Uint64

	mu      sync.Mutex
	ws      *websocket.Conn
	reg     Registered
	pending map[uint64]chan Envelope
	offset  time.Duration // server clock - local clock
}

// Dial connects, registers and starts the background reader. With
// cfg.Register.ResumeToken (from a previous run's Registered), it takes back
// that session's peer id and rooms when the server still holds them
// (Registered().Resumed), and registers afresh when it does not.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.EventBuffer <= 0 {
		cfg.EventBuffer = 256
	}
	cfg.Register.Protocol = ProtocolVersion
	c := &Client{cfg: cfg, log: cfg.Logger, events: make(chan Event, cfg.EventBuffer), done: make(chan struct{}), pending: map[uint64]chan Envelope{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	ws, reg, err := c.connect(ctx, cfg.Register.ResumeToken)
	if se := (*Error)(nil); errors.As(err, &se) && se.Code == CodeResumeFailed {
		ws, reg, err = c.connect(ctx, "")
	}
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.mu.Lock()
	c.ws, c.reg = ws, reg
	c.mu.Unlock()
	go c.run(ws)
	return c, nil
}

func wsURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	case "ws", "wss":
	default:
		return "", fmt.Errorf("signaling: URL scheme %q is not ws, wss, http or https", u.Scheme)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = PathWS
	}
	return u.String(), nil
}

// connect dials and registers (resuming when resume is set). The register
// exchange happens before the reader starts, so it reads the reply itself.
func (c *Client) connect(ctx context.Context, resume string) (*websocket.Conn, Registered, error) {
	u, err := wsURL(c.cfg.URL)
	if err != nil {
		return nil, Registered{}, err
	}
	tok := c.cfg.Token
	if c.cfg.TokenSource != nil {
		if tok, err = c.cfg.TokenSource(ctx); err != nil {
			return nil, Registered{}, fmt.Errorf("signaling: token: %w", err)
		}
	}
	h := http.Header{}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: c.cfg.HTTPClient, HTTPHeader: h})
	if err != nil {
		return nil, Registered{}, err
	}
	ws.SetReadLimit(16 << 20)
	reg := c.cfg.Register
	reg.ResumeToken = resume
	rid := c.rid.Add(1)
	sent := time.Now()
	if err := ws.Write(ctx, websocket.MessageText, mustFrame(TypeRegister, rid, reg)); err != nil {
		ws.CloseNow()
		return nil, Registered{}, err
	}
	for {
		env, err := readEnvelope(ctx, ws)
		if err != nil {
			ws.CloseNow()
			return nil, Registered{}, err
		}
		switch {
		case env.Type == TypePing:
			var p Ping
			json.Unmarshal(env.Data, &p)
			ws.Write(ctx, websocket.MessageText, mustFrame(TypePong, 0, Pong{Seq: p.Seq}))
		case env.Type == TypeError:
			ws.CloseNow()
			return nil, Registered{}, decodeError(env)
		case env.Type == TypeRegistered && env.RID == rid:
			var r Registered
			if err := json.Unmarshal(env.Data, &r); err != nil {
				ws.CloseNow()
				return nil, Registered{}, fmt.Errorf("signaling: registered: %w", err)
			}
			rtt := time.Since(sent)
			c.mu.Lock()
			c.offset = time.UnixMilli(r.ServerTime).Add(rtt / 2).Sub(time.Now())
			c.mu.Unlock()
			return ws, r, nil
		}
	}
}

func readEnvelope(ctx context.Context, ws *websocket.Conn) (Envelope, error) {
	_, b, err := ws.Read(ctx)
	if err != nil {
		return Envelope{}, err
	}
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return Envelope{}, fmt.Errorf("signaling: bad frame from server: %w", err)
	}
	return env, nil
}

func decodeError(env Envelope) *Error {
	var b ErrorBody
	json.Unmarshal(env.Data, &b)
	return &Error{Code: b.Code, Message: b.Message}
}

func mustFrame(typ string, rid uint64, body any) []byte {
	b, err := json.Marshal(struct {
		Type string `json:"type"`
		RID  uint64 `json:"rid,omitempty"`
		Data any    `json:"data,omitempty"`
	}{typ, rid, body})
	if err != nil {
		panic(err) // our own types always marshal
	}
	return b
}

// run reads frames, answers pings, routes replies and reconnects.
func (c *Client) run(ws *websocket.Conn) {
	defer close(c.done)
	defer close(c.events)
	for {
		err := c.readLoop(ws)
		c.failPending()
		if c.ctx.Err() != nil {
			return
		}
		c.emit(Event{Type: EventDisconnected, Data: mustJSON(ErrorBody{Code: closeCode(err), Message: errString(err)})})
		if c.cfg.NoReconnect || websocket.CloseStatus(err) == websocket.StatusPolicyViolation && closeCode(err) == CodeResumeFailed {
			c.cancel()
			return
		}
		ws = c.reconnect()
		if ws == nil {
			return
		}
	}
}

func closeCode(err error) string {
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Reason != "" {
		return ce.Reason
	}
	return "disconnected"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func (c *Client) reconnect() *websocket.Conn {
	delay := c.cfg.MinBackoff
	for {
		jitter := time.Duration(rand.Int64N(int64(delay)/2 + 1))
		select {
		case <-c.ctx.Done():
			return nil
		case <-time.After(delay/2 + jitter):
		}
		c.mu.Lock()
		resume := c.reg.ResumeToken
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		ws, reg, err := c.connect(ctx, resume)
		var se *Error
		if errors.As(err, &se) && se.Code == CodeResumeFailed {
			ws, reg, err = c.connect(ctx, "")
		}
		cancel()
		if err == nil {
			c.mu.Lock()
			c.ws, c.reg = ws, reg
			c.mu.Unlock()
			c.emit(Event{Type: EventReconnected, Data: mustJSON(reg)})
			return ws
		}
		c.log.Debug("signaling reconnect failed", "err", err, "retry_in", delay)
		delay = min(delay*2, c.cfg.MaxBackoff)
	}
}

func (c *Client) readLoop(ws *websocket.Conn) error {
	for {
		env, err := readEnvelope(c.ctx, ws)
		if err != nil {
			ws.CloseNow()
			return err
		}
		if env.Type == TypePing {
			var p Ping
			json.Unmarshal(env.Data, &p)
			if p.ServerTime != 0 {
				c.mu.Lock()
				c.offset = time.UnixMilli(p.ServerTime).Add(time.Duration(p.RTTMS*float64(time.Millisecond)) / 2).Sub(time.Now())
				c.mu.Unlock()
			}
			ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
			ws.Write(ctx, websocket.MessageText, mustFrame(TypePong, 0, Pong{Seq: p.Seq}))
			cancel()
			continue
		}
		if env.RID != 0 {
			c.mu.Lock()
			ch := c.pending[env.RID]
			delete(c.pending, env.RID)
			c.mu.Unlock()
			if ch != nil {
				ch <- env
				continue
			}
		}
		c.emit(Event{Type: env.Type, Data: env.Data})
	}
}

func (c *Client) emit(e Event) {
	select {
	case c.events <- e:
	case <-c.ctx.Done():
	}
}

func (c *Client) failPending() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for rid, ch := range c.pending {
		close(ch)
		delete(c.pending, rid)
	}
}

// Events delivers server events; it is closed when the client is closed.
func (c *Client) Events() <-chan Event { return c.events }

// Registered is the last registered answer (updated on reconnect).
func (c *Client) Registered() Registered {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reg
}

// PeerID is this client's peer id.
func (c *Client) PeerID() string { return c.Registered().PeerID }

// ServerNow estimates the server's clock (for punch StartAt).
func (c *Client) ServerNow() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// LocalTime converts a server timestamp (unix ms) to the local clock.
func (c *Client) LocalTime(serverMS int64) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.UnixMilli(serverMS).Add(-c.offset)
}

// Send writes a frame without waiting for an answer.
func (c *Client) Send(ctx context.Context, typ string, body any) error {
	return c.write(ctx, mustFrame(typ, 0, body))
}

func (c *Client) write(ctx context.Context, frame []byte) error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	c.mu.Lock()
	ws := c.ws
	c.mu.Unlock()
	return ws.Write(ctx, websocket.MessageText, frame)
}

// Request sends a frame and waits for the answer with the same rid, decoding
// its data into reply (which may be nil). An error frame becomes *Error.
func (c *Client) Request(ctx context.Context, typ string, body, reply any) error {
	rid := c.rid.Add(1)
	ch := make(chan Envelope, 1)
	c.mu.Lock()
	c.pending[rid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, rid)
		c.mu.Unlock()
	}()
	if err := c.write(ctx, mustFrame(typ, rid, body)); err != nil {
		return err
	}
	select {
	case env, ok := <-ch:
		if !ok {
			return ErrDisconnected
		}
		if env.Type == TypeError {
			return decodeError(env)
		}
		if reply != nil {
			return json.Unmarshal(env.Data, reply)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}

// CreateRoom creates a room and joins it as host.
func (c *Client) CreateRoom(ctx context.Context, r CreateRoom) (RoomJoined, error) {
	var out RoomJoined
	return out, c.Request(ctx, TypeCreateRoom, r, &out)
}

// Join joins a room by id or code.
func (c *Client) Join(ctx context.Context, j Join) (RoomJoined, error) {
	var out RoomJoined
	return out, c.Request(ctx, TypeJoin, j, &out)
}

// Leave leaves a room.
func (c *Client) Leave(ctx context.Context, roomID string) error {
	return c.Request(ctx, TypeLeave, Leave{RoomID: roomID}, nil)
}

// UpdateRoom changes a room (host only).
func (c *Client) UpdateRoom(ctx context.Context, u UpdateRoom) (RoomInfo, error) {
	var out RoomUpdated
	err := c.Request(ctx, TypeUpdateRoom, u, &out)
	return out.Room, err
}

// ListRooms lists public rooms.
func (c *Client) ListRooms(ctx context.Context, l ListRooms) (Rooms, error) {
	var out Rooms
	return out, c.Request(ctx, TypeListRooms, l, &out)
}

// Connect asks the server to schedule a punch; punch events follow.
func (c *Client) Connect(ctx context.Context, req Connect) (ConnectAck, error) {
	var out ConnectAck
	return out, c.Request(ctx, TypeConnect, req, &out)
}

// ReportResult reports how a punch session ended.
func (c *Client) ReportResult(ctx context.Context, r ConnectResult) error {
	return c.Request(ctx, TypeConnectResult, r, nil)
}

// UpdatePeer replaces this peer's candidates and/or NAT report.
func (c *Client) UpdatePeer(ctx context.Context, u UpdatePeer) error {
	return c.Request(ctx, TypeUpdatePeer, u, nil)
}

// Signal sends payload (marshalled to JSON) to peer `to` (or to every other
// member of roomID when to is empty) and waits for the server's ack.
func (c *Client) Signal(ctx context.Context, to, roomID string, payload any) error {
	raw, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	return c.Request(ctx, TypeSignal, Signal{To: to, RoomID: roomID, Payload: raw}, nil)
}

// ICEServers asks the server for its ICE servers with fresh TURN credentials.
func (c *Client) ICEServers(ctx context.Context) ([]ICEServer, error) {
	var out ICEServerList
	err := c.Request(ctx, TypeGetICEServers, GetICEServers{}, &out)
	return out.ICEServers, err
}

// Close ends the session without waiting for the resume grace: the server
// tells rooms the peer disconnected.
func (c *Client) Close() error {
	c.cancel()
	c.mu.Lock()
	ws := c.ws
	c.mu.Unlock()
	err := ws.Close(websocket.StatusNormalClosure, "bye")
	<-c.done
	return err
}

// FetchICEServers calls GET /v1/ice-servers on an http(s) base URL.
func FetchICEServers(ctx context.Context, hc *http.Client, baseURL, token string) (ICEServersResponse, error) {
	var out ICEServersResponse
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(baseURL, "/")+PathICEServers, nil)
	if err != nil {
		return out, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return out, err
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorBody
		json.Unmarshal(body, &e)
		return out, &Error{Code: e.Code, Message: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, e.Message)}
	}
	return out, json.Unmarshal(body, &out)
}

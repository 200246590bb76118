package signaling

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// Handler serves /v1/ws (WebSocket), /v1/ice-servers and /v1/rooms.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+client.PathWS, s.serveWS)
	mux.HandleFunc("GET "+client.PathICEServers, s.serveICEServers)
	mux.HandleFunc("GET "+client.PathRooms, s.serveRooms)
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeHTTPError(w, http.StatusNotFound, client.CodeUnknownType, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// authInfo is who a connection is, decided at upgrade.
type authInfo struct {
	admin  bool
	claims *JoinClaims
}

// authenticate checks the credentials of an HTTP request: an API key or join
// token in "Authorization: Bearer" or ?token=, or open mode.
func (s *Server) authenticate(r *http.Request, ip netip.Addr) (authInfo, *client.Error) {
	cfg := s.config()
	tok := r.URL.Query().Get("token")
	if h := r.Header.Get("Authorization"); tok == "" && h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return authInfo{}, errorf(client.CodeUnauthorized, "Authorization must be \"Bearer <api key or join token>\"")
		}
		tok = strings.TrimSpace(rest)
	}
	if tok == "" {
		if cfg.Open == OpenAll || (cfg.Open == OpenLoopback && ip.IsLoopback()) {
			return authInfo{}, nil
		}
		return authInfo{}, errorf(client.CodeUnauthorized, "credentials required: send \"Authorization: Bearer <api key or join token>\" or ?token=")
	}
	for _, k := range cfg.apiKeys {
		if subtle.ConstantTimeCompare(k, []byte(tok)) == 1 {
			return authInfo{admin: true}, nil
		}
	}
	if strings.HasPrefix(tok, joinTokenPrefix) {
		c, err := VerifyJoinToken(cfg.secrets, tok, s.now())
		switch err {
		case nil:
			return authInfo{claims: &c}, nil
		case errTokenExpired:
			return authInfo{}, errorf(client.CodeTokenExpired, "join token expired at %s", time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
		default:
			return authInfo{}, errorf(client.CodeUnauthorized, "%v", err)
		}
	}
	return authInfo{}, errorf(client.CodeUnauthorized, "token is neither an API key nor a join token")
}

func remoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func writeHTTPError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(client.ErrorBody{Code: code, Message: msg})
}

func httpStatus(code string) int {
	switch code {
	case client.CodeUnauthorized, client.CodeTokenExpired:
		return http.StatusUnauthorized
	case client.CodeForbidden:
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

func (s *Server) serveICEServers(w http.ResponseWriter, r *http.Request) {
	ai, e := s.authenticate(r, remoteIP(r))
	if e != nil {
		writeHTTPError(w, httpStatus(e.Code), e.Code, e.Message)
		return
	}
	user := "anon"
	if ai.claims != nil && ai.claims.Subject != "" {
		user = ai.claims.Subject
	}
	resp := client.ICEServersResponse{ICEServers: s.iceServers(user)}
	if resp.ICEServers == nil {
		resp.ICEServers = []client.ICEServer{}
	}
	for _, ice := range resp.ICEServers {
		if ice.Username != "" {
			resp.ExpiresAt = s.now().Add(s.config().TURNCredentialTTL).UnixMilli()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(resp)
}

func (s *Server) serveRooms(w http.ResponseWriter, r *http.Request) {
	if _, e := s.authenticate(r, remoteIP(r)); e != nil {
		writeHTTPError(w, httpStatus(e.Code), e.Code, e.Message)
		return
	}
	q := r.URL.Query()
	req := client.ListRooms{Game: q.Get("game"), Cursor: q.Get("cursor")}
	if l := q.Get("limit"); l != "" {
		if n, err := strconv.Atoi(l); err != nil {
			writeHTTPError(w, http.StatusBadRequest, client.CodeBadRequest, "limit: not a number")
			return
		} else {
			req.Limit = n
		}
	}
	out, e := s.listRooms(r.Context(), req)
	if e != nil {
		writeHTTPError(w, http.StatusBadRequest, e.Code, e.Message)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// smallBuffers replaces net/http's 4 KiB read and write buffers of a hijacked
// connection with small ones: an idle peer then costs far less, and frames
// larger than the buffer are read and written straight through.
type smallBuffers struct {
	http.ResponseWriter
	size int
	out  *batchWriter // set by Hijack
}

const connBufferSize = 512

func (h *smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Bytes the client sent right after its handshake may already sit in
	// net/http's reader: move them into ours and keep them buffered (not just
	// queued in an io.Reader), because websocket.Accept re-wraps the reader
	// around the raw conn and only keeps what is buffered.
	br := bufio.NewReaderSize(nc, h.size)
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), nc), max(h.size, n))
		if _, err := br.Peek(n); err != nil {
			nc.Close()
			return nil, nil, err
		}
	}
	h.out = &batchWriter{nc: nc}
	return nc, bufio.NewReadWriter(br, bufio.NewWriterSize(h.out, h.size)), nil
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	cfg := s.config()
	ip := remoteIP(r)
	ai, authErr := s.authenticate(r, ip)
	opts := &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled}
	for _, o := range cfg.AllowedOrigins {
		if o == "*" {
			opts.InsecureSkipVerify = true
		}
	}
	if !opts.InsecureSkipVerify {
		opts.OriginPatterns = cfg.AllowedOrigins
	}
	sb := &smallBuffers{ResponseWriter: w, size: connBufferSize}
	ws, err := websocket.Accept(sb, r, opts)
	if err != nil {
		return // Accept wrote the HTTP error
	}
	// Hard cap well above the frame limit: a frame up to it is read and
	// answered with frame_too_large; beyond it the socket is closed (1009).
	ws.SetReadLimit(int64(cfg.MaxFrameBytes)*4 + 4096)
	s.metrics.upgrades.Inc()

	reject := func(e *client.Error) {
		s.metrics.errors.WithLabelValues(e.Code).Inc()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ws.Write(ctx, websocket.MessageText, encodeFrame(client.TypeError, 0, client.ErrorBody{Code: e.Code, Message: e.Message}))
		cancel()
		ws.Close(wsCloseCode(e.Code), e.Code)
	}
	if authErr != nil {
		reject(authErr)
		return
	}
	c := &peerConn{
		s:       s,
		ws:      ws,
		out:     sb.out,
		ip:      ip,
		auth:    ai,
		limiter: rate.NewLimiter(rate.Limit(cfg.MsgRate), cfg.MsgBurst),
		cfgGen:  cfg.gen,
	}
	s.mu.Lock()
	// Checked under s.mu: Run sets closing before it snapshots s.conns, so a
	// connection is either refused here or closed by Run.
	if s.closing.Load() {
		s.mu.Unlock()
		reject(errorf(client.CodeServerShutdown, "server is shutting down"))
		return
	}
	if s.perIP[ip] >= cfg.MaxConnsPerIP {
		s.mu.Unlock()
		reject(errorf(client.CodeTooManyConnections, "this address already has %d connections (max-conns-per-ip)", cfg.MaxConnsPerIP))
		return
	}
	if len(s.conns) >= cfg.MaxPeers {
		s.mu.Unlock()
		reject(errorf(client.CodeTooManyConnections, "server is at its peer limit (%d)", cfg.MaxPeers))
		return
	}
	s.perIP[ip]++
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.metrics.connections.Inc()

	c.mu.Lock()
	c.timer = time.AfterFunc(cfg.PingInterval, c.heartbeat)
	c.mu.Unlock()
	// Read on a fresh goroutine and return, so that net/http's per-connection
	// goroutine (and its larger stack) is released.
	go c.readLoop()
}

// peerConn is one WebSocket connection.
type peerConn struct {
	s       *Server
	ws      *websocket.Conn
	out     *batchWriter
	ip      netip.Addr
	auth    authInfo
	limiter *rate.Limiter
	cfgGen  uint64

	mu      sync.Mutex
	queue   [][]byte
	writing bool
	closed  bool
	peerID  string
	detach  func()
	timer   *time.Timer

	// heartbeat state, under mu
	pingSeq  uint64
	pingSent time.Time
	pongSeq  uint64
	missed   int
	rtt      time.Duration
}

// enqueue queues a frame for the writer. A full queue means the peer is not
// reading: it is dropped rather than allowed to hold up its rooms.
func (c *peerConn) enqueue(frame []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if len(c.queue) >= c.s.config().SendQueue {
		c.mu.Unlock()
		c.failAsync(client.CodeSlowConsumer, "send queue full", "slow_consumer")
		return
	}
	c.queue = append(c.queue, frame)
	if !c.writing {
		c.writing = true
		go c.writeLoop()
	}
	c.mu.Unlock()
}

func (c *peerConn) writeLoop() {
	var batch [][]byte
	// Let the goroutine that woke us finish its fan-out first: frames queued
	// meanwhile share one write system call.
	runtime.Gosched()
	for {
		c.mu.Lock()
		if c.closed || len(c.queue) == 0 {
			c.writing = false
			c.queue = nil
			c.mu.Unlock()
			return
		}
		// Take everything queued: under load several frames go out in one
		// write system call instead of one each.
		batch = append(batch[:0], c.queue...)
		clear(c.queue)
		c.queue = c.queue[:0]
		c.mu.Unlock()
		if err := c.writeBatch(batch); err != nil {
			c.fail("", "write: "+err.Error(), "write_error")
			return
		}
		c.s.metrics.framesSent.Add(float64(len(batch)))
		clear(batch)
	}
}

func (c *peerConn) writeBatch(batch [][]byte) error {
	deadline := time.Now().Add(c.s.config().WriteTimeout)
	if c.out == nil || len(batch) == 1 {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		for _, f := range batch {
			if err := c.ws.Write(ctx, websocket.MessageText, f); err != nil {
				return err
			}
		}
		return nil
	}
	c.out.hold()
	for _, f := range batch {
		// Held writes only append to memory: they cannot block.
		if err := c.ws.Write(context.Background(), websocket.MessageText, f); err != nil {
			c.out.release(deadline)
			return err
		}
	}
	return c.out.release(deadline)
}

// batchWriter sits under the WebSocket's bufio.Writer. While held, flushed
// frames collect in memory; release writes them with one system call.
type batchWriter struct {
	mu   sync.Mutex
	nc   net.Conn
	held bool
	buf  []byte
}

func (w *batchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	return w.nc.Write(p)
}

func (w *batchWriter) hold() {
	w.mu.Lock()
	w.held = true
	w.mu.Unlock()
}

func (w *batchWriter) release(deadline time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.held = false
	if len(w.buf) == 0 {
		return nil
	}
	w.nc.SetWriteDeadline(deadline)
	_, err := w.nc.Write(w.buf)
	w.nc.SetWriteDeadline(time.Time{})
	w.buf = nil // an idle peer keeps no buffer
	return err
}

// heartbeat runs every ping interval on a runtime timer.
func (c *peerConn) heartbeat() {
	cfg := c.s.config()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.pingSeq > c.pongSeq {
		c.missed++
	}
	if c.missed >= cfg.MissedPings {
		c.mu.Unlock()
		c.fail("", "missed heartbeats", "timeout")
		return
	}
	if c.peerID == "" && c.pingSeq >= uint64(cfg.MissedPings) {
		// A connection that answers pings but never registers only holds a slot.
		c.mu.Unlock()
		c.fail(client.CodeNotRegistered, "no register in time", "unregistered")
		return
	}
	ping := c.nextPingLocked()
	c.timer.Reset(cfg.PingInterval)
	c.mu.Unlock()
	c.enqueue(encodeFrame(client.TypePing, 0, ping))
}

// nextPingLocked numbers and timestamps the next ping. c.mu is held.
func (c *peerConn) nextPingLocked() client.Ping {
	c.pingSeq++
	c.pingSent = c.s.now()
	return client.Ping{Seq: c.pingSeq, ServerTime: c.pingSent.UnixMilli(), RTTMS: float64(c.rtt.Microseconds()) / 1000}
}

// measureRTT pings at once (right after register), so the first punch
// schedule uses a measured round trip instead of a guess: the heartbeat
// would measure it only a ping interval later.
func (c *peerConn) measureRTT() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	ping := c.nextPingLocked()
	c.mu.Unlock()
	c.enqueue(encodeFrame(client.TypePing, 0, ping))
}

func (c *peerConn) onPong(p client.Pong) {
	c.mu.Lock()
	if p.Seq > c.pongSeq && p.Seq <= c.pingSeq {
		c.pongSeq = p.Seq
		c.missed = 0
		if p.Seq == c.pingSeq {
			c.rtt = c.s.now().Sub(c.pingSent)
			c.s.metrics.rtt.Observe(c.rtt.Seconds())
		}
	}
	c.mu.Unlock()
}

func (c *peerConn) RTT() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rtt
}

func (c *peerConn) id() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peerID
}

// fail closes the connection. code (if set) is sent as the close reason;
// reason labels the disconnect (timeout, slow_consumer, ...).
func (c *peerConn) fail(code, msg, reason string) {
	if !c.markClosed() {
		return
	}
	c.finish(code, msg, reason)
}

// failAsync is fail for callers that may hold locks (delivery paths): the
// room bookkeeping runs on its own goroutine.
func (c *peerConn) failAsync(code, msg, reason string) {
	if !c.markClosed() {
		return
	}
	go c.finish(code, msg, reason)
}

func (c *peerConn) finish(code, msg, reason string) {
	c.s.metrics.disconnects.WithLabelValues(reason).Inc()
	c.s.log.Debug("peer dropped", "peer", c.id(), "ip", c.ip, "reason", reason, "msg", msg)
	go func() {
		if code != "" {
			c.ws.Close(wsCloseCode(code), code)
		} else {
			c.ws.CloseNow()
		}
	}()
	c.s.connGone(c, reason)
}

// markClosed flips closed once; it reports whether this call did it.
func (c *peerConn) markClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.closed = true
	c.queue = nil
	if c.timer != nil {
		c.timer.Stop()
	}
	return true
}

// shutdown closes with going-away (server stopping).
func (c *peerConn) shutdown() {
	if !c.markClosed() {
		return
	}
	c.s.connGone(c, "shutdown")
	c.ws.Close(websocket.StatusGoingAway, client.CodeServerShutdown)
}

var frameBufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (c *peerConn) readLoop() {
	reason := "disconnected"
	for {
		typ, r, err := c.ws.Reader(context.Background())
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				reason = "frame_too_large"
			}
			break
		}
		cfg := c.s.config()
		buf := frameBufPool.Get().(*bytes.Buffer)
		buf.Reset()
		n, err := buf.ReadFrom(io.LimitReader(r, int64(cfg.MaxFrameBytes)+1))
		if err != nil {
			frameBufPool.Put(buf)
			if websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
				reason = "frame_too_large"
			}
			break
		}
		if n > int64(cfg.MaxFrameBytes) {
			if _, err := io.Copy(io.Discard, r); err != nil {
				frameBufPool.Put(buf)
				reason = "frame_too_large"
				break
			}
			c.sendError(0, errorf(client.CodeFrameTooLarge, "frame is over %d bytes (limits.max_frame_bytes); discarded", cfg.MaxFrameBytes))
		} else if typ != websocket.MessageText {
			c.sendError(0, errorf(client.CodeBadRequest, "binary frames are not part of the protocol; send JSON text frames"))
		} else {
			c.handleFrame(cfg, buf.Bytes())
		}
		if buf.Cap() <= 64<<10 {
			frameBufPool.Put(buf)
		}
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if !closed {
		c.fail("", "read ended", reason)
	}
}

func (c *peerConn) handleFrame(cfg *runtimeConfig, b []byte) {
	c.s.metrics.framesReceived.Inc()
	if c.cfgGen != cfg.gen {
		c.cfgGen = cfg.gen
		c.limiter.SetLimit(rate.Limit(cfg.MsgRate))
		c.limiter.SetBurst(cfg.MsgBurst)
	}
	now := c.s.now()
	if !c.limiter.AllowN(now, 1) {
		rid := peekRID(b)
		e := errorf(client.CodeRateLimited, "over %g frames/s (burst %d); frame dropped", cfg.MsgRate, cfg.MsgBurst)
		c.s.metrics.errors.WithLabelValues(e.Code).Inc()
		c.enqueue(encodeFrame(client.TypeError, rid, client.ErrorBody{Code: e.Code, Message: e.Message, RetryAfterMS: int64(1000/cfg.MsgRate) + 1}))
		return
	}
	req, e := parseRequest(b)
	if e != nil {
		c.sendError(req.RID, e)
		return
	}
	c.s.handle(c, req)
}

func (c *peerConn) sendError(rid uint64, e *client.Error) {
	c.s.metrics.errors.WithLabelValues(e.Code).Inc()
	c.enqueue(encodeFrame(client.TypeError, rid, client.ErrorBody{Code: e.Code, Message: e.Message}))
}

func (c *peerConn) reply(rid uint64, typ string, body any) {
	c.enqueue(encodeFrame(typ, rid, body))
}

// connGone forgets a closed connection; for a registered peer it starts the
// offline period: rooms are told it left, and its record waits resume-grace
// for a resume.
func (s *Server) connGone(c *peerConn, reason string) {
	s.mu.Lock()
	if _, ok := s.conns[c]; !ok {
		s.mu.Unlock()
		return
	}
	delete(s.conns, c)
	if s.perIP[c.ip]--; s.perIP[c.ip] <= 0 {
		delete(s.perIP, c.ip)
	}
	c.mu.Lock()
	id, detach := c.peerID, c.detach
	c.mu.Unlock()
	owner := id != "" && s.local[id] == c
	if owner {
		delete(s.local, id)
	}
	s.mu.Unlock()
	s.metrics.connections.Dec()
	if !owner {
		return
	}
	s.metrics.peers.Dec()
	if detach != nil {
		detach()
	}
	if s.closing.Load() {
		return
	}
	s.peerOffline(id, reason)
}

// Package punch is the peer side of rendezvous: it punches a direct UDP path
// to another peer through NATs, relays through TURN when it cannot, and runs
// an encrypted QUIC session over whichever path works best at the moment.
//
// One UDP socket carries STUN to learn the server-reflexive address, signed
// punch probes, and the QUIC session; TURN allocations (each on a socket of
// its own) carry relayed paths. The endpoint reads every socket itself: a
// packet whose first byte is below 0x40 is ours (STUN 0x00/0x01, probes
// 0x1D), anything else is QUIC and goes to quic-go through a virtual
// PacketConn that shows each session's paths as one stable address
// (vconn.go), so a session survives path switches (ladder.go).
//
// Punching follows the schedule the signaling server sent: at the same instant
// both peers send signed pings to every candidate of the other, host
// candidates first. A peer answers an authenticated ping from any source with a
// pong and pings that source too (peer-address learning: what makes
// cone × symmetric work). A path is adopted only when a pong signed by the
// peer answers one of our own fresh pings, so a third party can neither forge
// nor replay its way onto the path. The peer with the lesser key then dials
// QUIC; both sides pin each other's key in the TLS handshake.
//
// With TURN allocations (Endpoint.AllocateRelays; the Agent makes them from
// the ICE servers signaling hands out and offers the relayed addresses as
// "relay" candidates), relayed paths are probed alongside the direct ones:
// each peer sends through its own allocation to the other's relayed address.
// If only a relayed path answered, the session starts on it after a short
// grace for a direct one, and the ladder (ladder.go) moves it to direct when
// that answers; it also steps a session down (direct → relay over UDP → TCP →
// TLS) when its path stops echoing pings.
package punch

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/stun/v4"
	"github.com/quic-go/quic-go"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// Config tunes punching and the session.
type Config struct {
	// PunchWindow is how long probes are sent after the scheduled start.
	PunchWindow time.Duration
	// FirstRetry is the first gap between probe rounds; it grows 1.5× per
	// round up to MaxRetry.
	FirstRetry time.Duration
	MaxRetry   time.Duration
	// HandshakeTimeout bounds the QUIC handshake after a path is found.
	HandshakeTimeout time.Duration
	// KeepAlive keeps NAT mappings of an idle session open.
	KeepAlive time.Duration
	// IdleTimeout closes a session that hears nothing for this long.
	IdleTimeout time.Duration
	// Ladder tunes path liveness and switching between direct and relayed paths.
	Ladder LadderConfig
	// Birthday tunes probing for a direct path through a symmetric NAT.
	Birthday BirthdayConfig
}

// DefaultConfig punches for 3 s.
func DefaultConfig() Config {
	return Config{
		PunchWindow:      3 * time.Second,
		FirstRetry:       50 * time.Millisecond,
		MaxRetry:         500 * time.Millisecond,
		HandshakeTimeout: 5 * time.Second,
		KeepAlive:        5 * time.Second,
		IdleTimeout:      30 * time.Second,
		Ladder:           DefaultLadder(),
		Birthday:         DefaultBirthday(),
	}
}

// Validate names the bad field.
func (c Config) Validate() error {
	switch {
	case c.PunchWindow <= 0:
		return errors.New("punch-window must be positive")
	case c.FirstRetry <= 0 || c.MaxRetry < c.FirstRetry:
		return errors.New("first-retry must be positive and at most max-retry")
	case c.HandshakeTimeout <= 0:
		return errors.New("handshake-timeout must be positive")
	case c.KeepAlive <= 0 || c.IdleTimeout <= c.KeepAlive:
		return errors.New("keep-alive must be positive and below idle-timeout")
	case c.Ladder.PingEvery <= 0 || c.Ladder.StaleAfter <= c.Ladder.PingEvery:
		return errors.New("ladder: ping-every must be positive and below stale-after")
	case c.Ladder.MaxLoss <= 0 || c.Ladder.MaxLoss >= 1 || c.Ladder.LossWindow < 2:
		return errors.New("ladder: max-loss must be in (0,1) and loss-window at least 2")
	case c.Ladder.StepUpAfter < 0 || c.Ladder.RelayGrace < 0:
		return errors.New("ladder: step-up-after and relay-grace must not be negative")
	}
	return c.Birthday.validate()
}

// Endpoint is one peer's UDP socket with everything that runs over it.
type Endpoint struct {
	cfg   Config
	id    *Identity
	log   *slog.Logger
	conn  net.PacketConn
	vconn *virtualConn
	tr    *quic.Transport
	ln    *quic.Listener
	ctx   context.Context
	stop  context.CancelFunc
	done  sync.WaitGroup

	mu        sync.Mutex
	attempts  map[[8]byte]*attempt // by session id
	routes    map[route]*attempt   // paths proven by a signed probe, to their session
	byVirtual map[netip.AddrPort]*attempt
	allocs    []*allocation
	retiring  []*allocation             // replaced by RenewRelays, closing soon
	stunWait  map[[12]byte]chan stunAns // by STUN transaction id
	nat       NATType
	stats     Stats
}

// Stats counts what the endpoint dropped, for tests and diagnostics.
type Stats struct {
	ProbesSent, PingsAnswered          uint64
	DroppedMalformed, DroppedBadSig    uint64
	DroppedUnknownPeer, DroppedUnasked uint64
	RejectedHandshakes                 uint64
	// BirthdayProbes and BirthdaySockets count hard-NAT probing: probes
	// sent as the prober, sockets opened as the opener.
	BirthdayProbes, BirthdaySockets uint64
}

type stunAns struct {
	resp client.BindingResponse
	err  error
}

// NewEndpoint takes ownership of conn (a UDP socket; see internal/netx to open
// one inside a namespace) and starts reading it. Close releases it.
func NewEndpoint(conn net.PacketConn, id *Identity, cfg Config, log *slog.Logger) (*Endpoint, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("punch: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	e := &Endpoint{
		cfg: cfg, id: id, log: log, conn: conn, ctx: ctx, stop: stop,
		attempts:  map[[8]byte]*attempt{},
		routes:    map[route]*attempt{},
		byVirtual: map[netip.AddrPort]*attempt{},
		stunWait:  map[[12]byte]chan stunAns{},
	}
	e.vconn = newVirtualConn(e)
	e.tr = &quic.Transport{Conn: e.vconn}
	e.done.Add(1)
	go e.readLoop()
	ln, err := e.tr.Listen(id.tlsConfig(e.acceptIncoming), e.quicConfig())
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("punch: %w", err)
	}
	e.ln = ln
	e.done.Add(1)
	go e.acceptLoop()
	return e, nil
}

func (e *Endpoint) quicConfig() *quic.Config {
	return &quic.Config{
		EnableDatagrams:      true,
		KeepAlivePeriod:      e.cfg.KeepAlive,
		MaxIdleTimeout:       e.cfg.IdleTimeout,
		HandshakeIdleTimeout: e.cfg.HandshakeTimeout,
		// Paths change under the session (a relay adds its header): stay at
		// the 1280-byte packets every path carries.
		DisablePathMTUDiscovery: true,
	}
}

// LocalAddr is the socket's local address.
func (e *Endpoint) LocalAddr() netip.AddrPort { return addrPort(e.conn.LocalAddr()) }

// PublicKey is this endpoint's identity.
func (e *Endpoint) PublicKey() PublicKey { return e.id.PublicKey() }

// Stats returns a snapshot of the counters.
func (e *Endpoint) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats
}

// Close ends every session and releases the socket.
func (e *Endpoint) Close() error {
	e.stop()
	if e.ln != nil {
		e.ln.Close()
	}
	err := e.tr.Close()
	e.vconn.Close()
	e.conn.Close()
	e.mu.Lock()
	allocs := append(e.allocs, e.retiring...)
	e.allocs, e.retiring = nil, nil
	attempts := slices.Collect(maps.Values(e.attempts))
	e.mu.Unlock()
	for _, a := range allocs {
		a.close()
	}
	for _, a := range attempts {
		a.closeProbe()
	}
	e.done.Wait()
	return err
}

// addrPort is a, with an IPv4-mapped address unmapped (a dual-stack socket
// reports IPv4 peers as ::ffff:a.b.c.d; candidates are plain IPv4).
func addrPort(a net.Addr) netip.AddrPort {
	ap := netx.AddrPortOf(a)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (e *Endpoint) readLoop() {
	defer e.done.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := e.conn.ReadFrom(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() && e.ctx.Err() == nil {
				continue
			}
			return
		}
		e.handlePacket(buf[:n], route{addr: addrPort(from)})
	}
}

// handlePacket demultiplexes one packet that arrived on r.
func (e *Endpoint) handlePacket(b []byte, r route) {
	switch {
	case len(b) == 0:
	case b[0] >= 0x40: // QUIC
		e.mu.Lock()
		a := e.routes[r]
		e.mu.Unlock()
		if a != nil {
			a.noteInbound(r)
			e.vconn.deliver(b, net.UDPAddrFromAddrPort(a.vaddr))
		} else if r.via == nil && r.sock == nil {
			e.vconn.deliver(b, net.UDPAddrFromAddrPort(r.addr))
		}
	case isProbe(b):
		e.handleProbe(b, r)
	case r.via == nil && r.sock == nil && stun.IsMessage(b):
		e.handleSTUN(b)
	case r.via != nil && stun.IsMessage(b):
		e.handleRelayedBinding(b, r.addr)
	default:
		e.count(func(s *Stats) { s.DroppedMalformed++ })
	}
}

func (e *Endpoint) count(f func(*Stats)) {
	e.mu.Lock()
	f(&e.stats)
	e.mu.Unlock()
}

func (e *Endpoint) send(b []byte, to netip.AddrPort) { e.sendRoute(b, route{addr: to}) }

// sendRoute sends b over r: our UDP socket or a TURN allocation.
func (e *Endpoint) sendRoute(b []byte, r route) {
	var err error
	switch {
	case r.via != nil:
		_, err = r.via.conn.WriteTo(b, net.UDPAddrFromAddrPort(r.addr))
	case r.sock != nil:
		_, err = r.sock.conn.WriteTo(b, net.UDPAddrFromAddrPort(r.addr))
	default:
		_, err = e.conn.WriteTo(b, net.UDPAddrFromAddrPort(r.addr))
	}
	if err != nil {
		e.log.Debug("send failed", "to", r.addr.String(), "kind", string(r.kind()), "err", err)
	}
}

// bind sends a STUN Binding request from this socket to server and returns
// the answer. token, when not empty, rides in a PEER-TOKEN attribute so the
// rendezvous server ties the address it saw to this peer. It retries (RFC
// 8489 style) until ctx ends.
func (e *Endpoint) bind(ctx context.Context, server netip.AddrPort, token string) (client.BindingResponse, error) {
	msg, err := client.NewBindingRequest(token)
	if err != nil {
		return client.BindingResponse{}, err
	}
	ch := make(chan stunAns, 1)
	e.mu.Lock()
	e.stunWait[msg.ID] = ch
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.stunWait, msg.ID)
		e.mu.Unlock()
	}()
	rto := 250 * time.Millisecond
	for {
		e.send(msg.Raw, server)
		t := time.NewTimer(rto)
		select {
		case a := <-ch:
			t.Stop()
			return a.resp, a.err
		case <-ctx.Done():
			t.Stop()
			return client.BindingResponse{}, fmt.Errorf("punch: no STUN answer from %s: %w", server, ctx.Err())
		case <-e.ctx.Done():
			t.Stop()
			return client.BindingResponse{}, net.ErrClosed
		case <-t.C:
			rto = min(2*rto, 2*time.Second)
		}
	}
}

func (e *Endpoint) handleSTUN(b []byte) {
	resp, err := client.ParseBindingResponse(b)
	if resp.ID == ([12]byte{}) {
		e.count(func(s *Stats) { s.DroppedMalformed++ })
		return
	}
	e.answerSTUN(stunAns{resp: resp, err: err})
}

// answerSTUN hands an answer to the bind waiting for its transaction, if any.
func (e *Endpoint) answerSTUN(ans stunAns) {
	e.mu.Lock()
	ch := e.stunWait[ans.resp.ID]
	e.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- ans:
	default:
	}
}

// handleRelayedBinding takes one of our own Binding requests that came back
// through a TURN allocation (mappingViaRelay): where it came from is what
// our NAT mapped for the relayed address. Anyone else's is ignored.
func (e *Endpoint) handleRelayedBinding(b []byte, from netip.AddrPort) {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || m.Type != stun.BindingRequest {
		return
	}
	e.answerSTUN(stunAns{resp: client.BindingResponse{ID: m.TransactionID, Mapped: from}})
}

func randomTxID() (id [12]byte) {
	rand.Read(id[:])
	return id
}

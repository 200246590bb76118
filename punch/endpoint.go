// Package punch is the peer side of rendezvous: it punches a direct UDP path
// to another peer through NATs and runs an encrypted QUIC session over it.
//
// One UDP socket carries everything: STUN to learn the server-reflexive
// address, signed punch probes, and the QUIC session. quic-go owns the socket
// (quic.Transport) and hands us every packet whose first byte is below 0x40
// (ReadNonQUICPacket), which is where STUN (0x00/0x01) and our probes (0x1D)
// live.
//
// Punching follows the schedule the signaling server sent: at the same instant
// both peers send signed pings to every candidate of the other, host
// candidates first. A peer answers an authenticated ping from any source with a
// pong and pings that source too (peer-address learning: what makes
// cone × symmetric work). A path is adopted only when a pong signed by the
// peer answers one of our own fresh pings, so a third party can neither forge
// nor replay its way onto the path. The peer with the lesser key then dials
// QUIC; both sides pin each other's key in the TLS handshake.
package punch

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v4"
	"github.com/quic-go/quic-go"

	"github.com/rendezvous-p2p/rendezvous/internal/stunext"
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
	}
	return nil
}

// Endpoint is one peer's UDP socket with everything that runs over it.
type Endpoint struct {
	cfg  Config
	id   *Identity
	log  *slog.Logger
	conn net.PacketConn
	tr   *quic.Transport
	ln   *quic.Listener
	ctx  context.Context
	stop context.CancelFunc
	done sync.WaitGroup

	mu       sync.Mutex
	attempts map[[8]byte]*attempt      // by session id
	stunWait map[[12]byte]chan stunAns // by STUN transaction id
	stats    Stats
}

// Stats counts what the endpoint dropped, for tests and diagnostics.
type Stats struct {
	ProbesSent, PingsAnswered          uint64
	DroppedMalformed, DroppedBadSig    uint64
	DroppedUnknownPeer, DroppedUnasked uint64
	RejectedHandshakes                 uint64
}

type stunAns struct {
	addr netip.AddrPort
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
		tr:       &quic.Transport{Conn: conn},
		attempts: map[[8]byte]*attempt{},
		stunWait: map[[12]byte]chan stunAns{},
	}
	// Read non-QUIC packets before anything is sent: quic-go queues only 32.
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
	e.conn.Close()
	e.done.Wait()
	return err
}

func addrPort(a net.Addr) netip.AddrPort {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func (e *Endpoint) readLoop() {
	defer e.done.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := e.tr.ReadNonQUICPacket(e.ctx, buf)
		if err != nil {
			return
		}
		src := addrPort(from)
		b := buf[:n]
		switch {
		case isProbe(b):
			e.handleProbe(b, src)
		case stun.IsMessage(b):
			e.handleSTUN(b)
		default:
			e.count(func(s *Stats) { s.DroppedMalformed++ })
		}
	}
}

func (e *Endpoint) count(f func(*Stats)) {
	e.mu.Lock()
	f(&e.stats)
	e.mu.Unlock()
}

func (e *Endpoint) send(b []byte, to netip.AddrPort) {
	if _, err := e.tr.WriteTo(b, net.UDPAddrFromAddrPort(to)); err != nil {
		e.log.Debug("send failed", "to", to.String(), "err", err)
	}
}

// ReflexiveAddress sends a STUN Binding request from this socket to server
// and returns the address the server saw. token, when not empty, rides in a
// PEER-TOKEN attribute so the rendezvous server ties that address to this
// peer. It retries (RFC 8489 style) until ctx ends.
func (e *Endpoint) ReflexiveAddress(ctx context.Context, server netip.AddrPort, token string) (netip.AddrPort, error) {
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if token != "" {
		if len(token) > stunext.MaxPeerTokenLen {
			return netip.AddrPort{}, errors.New("punch: peer token too long")
		}
		setters = append(setters, stun.RawAttribute{Type: stun.AttrType(stunext.AttrPeerToken), Value: []byte(token)})
	}
	setters = append(setters, stun.Fingerprint)
	msg, err := stun.Build(setters...)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ch := make(chan stunAns, 1)
	e.mu.Lock()
	e.stunWait[msg.TransactionID] = ch
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.stunWait, msg.TransactionID)
		e.mu.Unlock()
	}()
	rto := 250 * time.Millisecond
	for {
		e.send(msg.Raw, server)
		t := time.NewTimer(rto)
		select {
		case a := <-ch:
			t.Stop()
			return a.addr, a.err
		case <-ctx.Done():
			t.Stop()
			return netip.AddrPort{}, fmt.Errorf("punch: no STUN answer from %s: %w", server, ctx.Err())
		case <-e.ctx.Done():
			t.Stop()
			return netip.AddrPort{}, net.ErrClosed
		case <-t.C:
			rto = min(2*rto, 2*time.Second)
		}
	}
}

func (e *Endpoint) handleSTUN(b []byte) {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		e.count(func(s *Stats) { s.DroppedMalformed++ })
		return
	}
	e.mu.Lock()
	ch := e.stunWait[m.TransactionID]
	e.mu.Unlock()
	if ch == nil {
		return
	}
	var ans stunAns
	var xor stun.XORMappedAddress
	if m.Type.Class == stun.ClassErrorResponse {
		ans.err = errors.New("punch: STUN error response")
	} else if err := xor.GetFrom(m); err != nil {
		var mapped stun.MappedAddress
		if err2 := mapped.GetFrom(m); err2 != nil {
			ans.err = fmt.Errorf("punch: STUN response without an address: %w", err)
		} else {
			ip, _ := netip.AddrFromSlice(mapped.IP)
			ans.addr = netip.AddrPortFrom(ip.Unmap(), uint16(mapped.Port))
		}
	} else {
		ip, _ := netip.AddrFromSlice(xor.IP)
		ans.addr = netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port))
	}
	select {
	case ch <- ans:
	default:
	}
}

func randomTxID() (id [12]byte) {
	rand.Read(id[:])
	return id
}

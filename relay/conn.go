package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
)

// STUN message type bits (RFC 8489 §5): class C1 is bit 8, C0 bit 4.
func isSTUN(b []byte) bool          { return len(b) >= 20 && b[0] < 0x40 }
func isRequest(b []byte) bool       { return b[0]&0x01 == 0 && b[1]&0x10 == 0 }
func isErrorResponse(b []byte) bool { return b[0]&0x01 != 0 && b[1]&0x10 != 0 }

// turnPacketConn is a client-facing UDP socket as pion sees it. Reading, it
// relays ChannelData of known allocations itself (fastpath.go), answers
// Binding requests itself (stunserver: classic clients, RFC 5780,
// PEER-TOKEN) and picks the credential key for rotated REST secrets; writing,
// it puts reason phrases on pion's unauthenticated error responses.
type turnPacketConn struct {
	net.PacketConn
	s     *Server
	batch *batchReader // nil: read one datagram per system call

	closeOnce sync.Once
}

func newTurnPacketConn(c net.PacketConn, s *Server) *turnPacketConn {
	tc := &turnPacketConn{PacketConn: c, s: s}
	switch c := c.(type) {
	case *loopUDPConn:
		tc.batch = newBatchReader(nil, s) // fed by the socket's relayPoller
	case *net.UDPConn:
		if rc, err := c.SyscallConn(); err == nil {
			tc.batch = newBatchReader(rc, s)
		}
	}
	return tc
}

func (c *turnPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		var n int
		var addr net.Addr
		var err error
		if c.batch != nil {
			n, addr, err = c.batch.readFrom(b)
		} else {
			n, addr, err = c.PacketConn.ReadFrom(b)
		}
		if err != nil || !isSTUN(b[:n]) {
			return n, addr, err
		}
		p := b[:n]
		if stunserver.IsBindingRequest(p) {
			c.s.stun.Handle(p, netx.AddrPortOf(addr), stunserver.Primary)
			continue
		}
		if isRequest(p) {
			c.s.observeRequest(p, netx.AddrPortOf(addr))
		}
		return n, addr, nil
	}
}

// Close ends pion's read of a socket its relayPoller reads (fed mode).
func (c *turnPacketConn) Close() error {
	if c.batch != nil && c.batch.fedDone != nil {
		c.closeOnce.Do(func() { close(c.batch.fedDone) })
	}
	return c.PacketConn.Close()
}

func (c *turnPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if isSTUN(b) && isErrorResponse(b) {
		if r, ok := c.s.rewriteError(b, addr); ok {
			if _, err := c.PacketConn.WriteTo(r, addr); err != nil {
				return 0, err
			}
			return len(b), nil
		}
	}
	return c.PacketConn.WriteTo(b, addr)
}

var reasonPhrases = map[stun.ErrorCode]string{
	stun.CodeTryAlternate:           "Try Alternate",
	stun.CodeBadRequest:             "Bad Request",
	stun.CodeUnauthorized:           "Unauthorized",
	stun.CodeForbidden:              "Forbidden",
	stun.CodeUnknownAttribute:       "Unknown Attribute",
	stun.CodeAllocMismatch:          "Allocation Mismatch",
	stun.CodeStaleNonce:             "Stale Nonce",
	stun.CodeAddrFamilyNotSupported: "Address Family not Supported",
	stun.CodeWrongCredentials:       "Wrong Credentials",
	stun.CodeUnsupportedTransProto:  "Unsupported Transport Protocol",
	stun.CodePeerAddrFamilyMismatch: "Peer Address Family Mismatch",
	stun.CodeConnAlreadyExists:      "Connection Already Exists",
	stun.CodeConnTimeoutOrFailure:   "Connection Timeout or Failure",
	stun.CodeAllocQuotaReached:      "Allocation Quota Reached",
	stun.CodeRoleConflict:           "Role Conflict",
	stun.CodeServerError:            "Server Error",
	stun.CodeInsufficientCapacity:   "Insufficient Capacity",
}

// withReasonPhrase rebuilds an error response whose ERROR-CODE has no reason
// phrase (pion sends none; RFC 8489 §14.8 wants one and some clients log it).
// Responses carrying MESSAGE-INTEGRITY are left alone: changing them would
// need the key.
func withReasonPhrase(b []byte) ([]byte, bool) {
	if !isSTUN(b) {
		return nil, false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || m.Contains(stun.AttrMessageIntegrity) || m.Contains(stun.AttrFingerprint) {
		return nil, false
	}
	var ec stun.ErrorCodeAttribute
	if ec.GetFrom(m) != nil || len(ec.Reason) > 0 {
		return nil, false
	}
	phrase, ok := reasonPhrases[ec.Code]
	if !ok {
		return nil, false
	}
	out := &stun.Message{TransactionID: m.TransactionID}
	out.SetType(m.Type)
	out.WriteHeader()
	for _, a := range m.Attributes {
		if a.Type == stun.AttrErrorCode {
			_ = stun.ErrorCodeAttribute{Code: ec.Code, Reason: []byte(phrase)}.AddTo(out)
			continue
		}
		out.Add(a.Type, a.Value)
	}
	return out.Raw, true
}

// rewriteError fixes pion's error responses on their way out: reason phrases
// where there are none, and a ChannelBind refused by the peer filter, which
// pion answers 401 (telling the client its credentials are wrong), becomes
// 403 Forbidden like CreatePermission and Connect — re-signed with the key
// the request was authenticated with.
func (s *Server) rewriteError(b []byte, to net.Addr) ([]byte, bool) {
	if binary.BigEndian.Uint16(b[0:2]) == stun.NewType(stun.MethodChannelBind, stun.ClassErrorResponse).Value() {
		if key := s.lastKey.get(netx.AddrPortOf(to)); key != nil {
			if r, ok := channelBindForbidden(b, key); ok {
				return r, true
			}
		}
	}
	return withReasonPhrase(b)
}

func channelBindForbidden(b, key []byte) ([]byte, bool) {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || stun.MessageIntegrity(key).Check(m) != nil {
		return nil, false
	}
	var ec stun.ErrorCodeAttribute
	if ec.GetFrom(m) != nil || ec.Code != stun.CodeUnauthorized {
		return nil, false
	}
	out, err := stun.Build(&stun.Message{TransactionID: m.TransactionID}, m.Type,
		stun.ErrorCodeAttribute{Code: stun.CodeForbidden, Reason: []byte("Forbidden")}, stun.MessageIntegrity(key))
	if err != nil {
		return nil, false
	}
	return out.Raw, true
}

// turnListener wraps the TCP (or TLS) client listener so that every accepted
// connection is closed when the server stops (pion only closes the listener).
type turnListener struct {
	net.Listener
	s *Server
}

func (l *turnListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &turnConn{Conn: c, s: l.s}
	if !l.s.trackConn(tc) {
		c.Close()
		return nil, net.ErrClosed
	}
	return tc, nil
}

// turnConn is one TCP/TLS client connection. pion frames the stream itself;
// this wrapper frames a copy only when several REST secrets are live (to pick
// the key), and stops at ConnectionBind, after which the stream is raw data.
type turnConn struct {
	net.Conn
	s         *Server
	handshake sync.Once
	mu        sync.Mutex
	pending   []byte
	raw       bool
	closeOnce sync.Once
}

func (c *turnConn) Read(b []byte) (int, error) {
	var hsErr error
	c.handshake.Do(func() {
		if t, ok := c.Conn.(*tls.Conn); ok {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			hsErr = t.HandshakeContext(ctx)
			cancel()
		}
	})
	if hsErr != nil {
		return 0, hsErr
	}
	n, err := c.Conn.Read(b)
	if n > 0 && !c.raw && c.s.multiSecret() {
		c.observe(b[:n])
	}
	return n, err
}

// observe frames the bytes read so far and shows each complete STUN request
// to the key picker.
func (c *turnConn) observe(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, b...)
	for len(c.pending) >= 4 {
		p := c.pending
		var size int
		if p[0] < 0x40 {
			if len(p) < 20 {
				return
			}
			size = 20 + int(binary.BigEndian.Uint16(p[2:4]))
		} else {
			size = 4 + (int(binary.BigEndian.Uint16(p[2:4]))+3)&^3
		}
		if len(p) < size {
			return
		}
		if p[0] < 0x40 && isRequest(p) {
			c.s.observeRequest(p[:size], netx.AddrPortOf(c.RemoteAddr()))
			if stun.NewType(stun.MethodConnectionBind, stun.ClassRequest).Value() == binary.BigEndian.Uint16(p[0:2]) {
				c.raw, c.pending = true, nil
				return
			}
		}
		c.pending = append(c.pending[:0], p[size:]...)
	}
}

func (c *turnConn) Write(b []byte) (int, error) {
	if isSTUN(b) && isErrorResponse(b) {
		if r, ok := c.s.rewriteError(b, c.RemoteAddr()); ok {
			if _, err := c.Conn.Write(r); err != nil {
				return 0, err
			}
			return len(b), nil
		}
	}
	return c.Conn.Write(b)
}

func (c *turnConn) Close() error {
	c.closeOnce.Do(func() { c.s.untrackConn(c) })
	return c.Conn.Close()
}

// relayConn is one UDP allocation's relay socket. It enforces, where data is
// sent, what TURN permissions cannot (they carry no port): a peer at the
// server's own address is reachable only at a live relay port. It applies the
// bandwidth cap and counts bytes. No per-packet allocation on the common path.
//
// On the host network the socket is a raw descriptor read by a relayPoller
// (fastpath.go) and pion's reads see only datagrams without a channel; on
// another Network (a test namespace) it is that Network's PacketConn, read by
// pion.
type relayConn struct {
	pc net.PacketConn // the socket on another Network; nil on the fast path

	fd       int // the socket on the fast path
	clientFd int // the UDP client's own connected socket on the fast path (poller.mu); -1: none
	v6       bool
	local    *net.UDPAddr
	poller   *relayPoller // the loop that reads its sockets; a UDP client's is its listening socket's, whose pion holds the allocation
	slot     uint32
	fdMu     sync.RWMutex // sends hold it shared; Close exclusively, so no send hits a reused descriptor
	closed   bool
	slow     slowQueue // datagrams for pion's ReadFrom (no channel: Data indications; TCP clients)
	done     chan struct{}

	s         *Server
	userID    string
	public    netip.AddrPort // advertised relay address
	started   time.Time
	limiter   atomic.Pointer[rate.Limiter]
	client    atomic.Pointer[netip.AddrPort]
	udpClient atomic.Pointer[netip.AddrPort] // client, when it talks UDP (the fast path's ChannelData goes there)
	channels  atomic.Pointer[channelTable]   // pion's channel bindings, mirrored from its events
	bytesOut  atomic.Uint64                  // to peer
	bytesIn   atomic.Uint64                  // from peer
	closeOnce sync.Once
	timer     atomic.Pointer[time.Timer] // max-allocation-duration
}

var noChannels = &channelTable{}

func (c *relayConn) chans() channelTable { return *c.channels.Load() }

// setChannel adds or removes (peer invalid) a channel binding in the mirror.
func (c *relayConn) setChannel(number uint16, peer netip.AddrPort) {
	c.s.mu.Lock() // serialises writers; readers load the pointer
	defer c.s.mu.Unlock()
	old := c.chans()
	t := make(channelTable, 0, len(old)+1)
	for _, e := range old {
		if e.number != number {
			t = append(t, e)
		}
	}
	if peer.IsValid() {
		t = append(t, chanEntry{number: number, peer: peer})
	}
	c.channels.Store(&t)
}

func (c *relayConn) LocalAddr() net.Addr {
	if c.pc != nil {
		return c.pc.LocalAddr()
	}
	return c.local
}

func (c *relayConn) SetDeadline(t time.Time) error {
	if c.pc != nil {
		return c.pc.SetDeadline(t)
	}
	return nil
}

func (c *relayConn) SetReadDeadline(t time.Time) error {
	if c.pc != nil {
		return c.pc.SetReadDeadline(t)
	}
	return nil
}

func (c *relayConn) SetWriteDeadline(t time.Time) error {
	if c.pc != nil {
		return c.pc.SetWriteDeadline(t)
	}
	return nil
}

// WriteTo is pion's send to a peer (Send indications, and ChannelData the
// fast path did not take).
func (c *relayConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("relay: peer address is not UDP")
	}
	ip, _ := netip.AddrFromSlice(ua.IP)
	n, err := c.writeToPeer(b, netip.AddrPortFrom(ip.Unmap(), uint16(ua.Port)))
	if n > 0 && err == nil {
		c.s.metrics.bytesToPeer.Add(float64(n))
		c.s.metrics.packetsToPeer.Inc()
	}
	return n, err
}

// writeToPeer sends b to peer after the own-address check and the bandwidth
// cap; the caller counts packets and bytes in the metrics.
func (c *relayConn) writeToPeer(b []byte, peer netip.AddrPort) (int, error) {
	dst := peer
	ip := peer.Addr()
	if own := c.s.own.Load(); own.isOwn(ip) {
		if !c.s.ports.live(ip.Is4(), peer.Port()) {
			c.s.metrics.droppedOwnAddress.Inc()
			c.s.log.Debug("relay: dropped data to the server's own address outside live relay ports",
				"user", c.userID, "peer", peer.String())
			return 0, nil
		}
		if bind, ok := own.bindFor(ip); ok {
			dst = netip.AddrPortFrom(bind, peer.Port()) // 1:1 NAT: do not hairpin through it
		}
	}
	if l := c.limiter.Load(); l != nil && !l.AllowN(time.Now(), len(b)) {
		c.s.metrics.droppedBandwidth.Inc()
		return 0, nil
	}
	var err error
	if c.pc != nil {
		_, err = c.pc.WriteTo(b, net.UDPAddrFromAddrPort(dst))
	} else {
		c.fdMu.RLock()
		if c.closed {
			err = net.ErrClosed
		} else {
			err = sendTo(c.fd, b, dst, c.v6)
		}
		c.fdMu.RUnlock()
	}
	if err != nil {
		c.s.metrics.droppedSendFailed.Inc()
		return 0, err
	}
	c.bytesOut.Add(uint64(len(b)))
	return len(b), nil
}

// ReadFrom is pion's read of the relay socket. On the fast path it returns
// only datagrams from peers without a channel (pion makes Data indications of
// them, if a permission allows).
func (c *relayConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if c.pc == nil {
		return c.slow.readFrom(b, c.done)
	}
	for {
		n, addr, err := c.pc.ReadFrom(b)
		if err != nil {
			return n, addr, err
		}
		if l := c.limiter.Load(); l != nil && !l.AllowN(time.Now(), n) {
			c.s.metrics.droppedBandwidth.Inc()
			continue
		}
		if ua, ok := addr.(*net.UDPAddr); ok {
			ip, _ := netip.AddrFromSlice(ua.IP)
			if pub, ok := c.s.own.Load().publicFor(ip.Unmap()); ok {
				addr = &net.UDPAddr{IP: pub.AsSlice(), Port: ua.Port} // another of our allocations, as its client knows it
			}
		}
		c.bytesIn.Add(uint64(n))
		c.s.metrics.bytesFromPeer.Add(float64(n))
		c.s.metrics.packetsFromPeer.Inc()
		return n, addr, nil
	}
}

func (c *relayConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.pc != nil {
			err = c.pc.Close()
		} else {
			c.poller.remove(c)
			c.fdMu.Lock()
			c.closed = true
			err = unix.Close(c.fd)
			c.fdMu.Unlock()
			close(c.done)
		}
		c.s.allocationEnded(c)
	})
	return err
}

// setLimit applies a (re)loaded bandwidth limit.
func (c *relayConn) setLimit(bytesPerSecond int64) {
	c.limiter.Store(newLimiter(bytesPerSecond))
}

func newLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	burst := int(bytesPerSecond / 4) // a quarter second of traffic
	if burst < 64<<10 {
		burst = 64 << 10
	}
	return rate.NewLimiter(rate.Limit(bytesPerSecond), burst)
}

// portSet is the set of live relay ports, per family, as a bitmap so the
// data path tests it without locks or allocation.
type portSet struct {
	v4, v6 [65536 / 64]atomic.Uint64
}

func (p *portSet) set(is4 bool, port uint16, on bool) {
	w := &p.v6[port/64]
	if is4 {
		w = &p.v4[port/64]
	}
	bit := uint64(1) << (port % 64)
	if on {
		w.Or(bit)
	} else {
		w.And(^bit)
	}
}

func (p *portSet) live(is4 bool, port uint16) bool {
	w := &p.v6[port/64]
	if is4 {
		w = &p.v4[port/64]
	}
	return w.Load()&(uint64(1)<<(port%64)) != 0
}

// ownAddrs are the relay's IPs (relay sockets live there; ips), the host's
// other IPs (refused by the filter), and the bind↔public mapping for 1:1 NAT.
type ownAddrs struct {
	ips            []netip.Addr
	hostIPs        []netip.Addr
	bind4, public4 netip.Addr
	bind6, public6 netip.Addr
}

func (o *ownAddrs) isOwn(ip netip.Addr) bool {
	for _, a := range o.ips {
		if a == ip {
			return true
		}
	}
	return false
}

// bindFor maps a public relay IP to the local IP the relay sockets bind.
func (o *ownAddrs) bindFor(ip netip.Addr) (netip.Addr, bool) {
	switch {
	case ip == o.public4 && o.bind4 != o.public4 && o.bind4.IsValid() && !o.bind4.IsUnspecified():
		return o.bind4, true
	case ip == o.public6 && o.bind6 != o.public6 && o.bind6.IsValid() && !o.bind6.IsUnspecified():
		return o.bind6, true
	}
	return netip.Addr{}, false
}

// publicOf is a peer address as clients know it: a relay socket of ours at
// its public address.
func (o *ownAddrs) publicOf(ap netip.AddrPort) netip.AddrPort {
	if pub, ok := o.publicFor(ap.Addr()); ok {
		return netip.AddrPortFrom(pub, ap.Port())
	}
	return ap
}

// publicFor maps a local relay bind IP back to its public IP.
func (o *ownAddrs) publicFor(ip netip.Addr) (netip.Addr, bool) {
	switch {
	case ip == o.bind4 && o.public4 != o.bind4 && o.public4.IsValid():
		return o.public4, true
	case ip == o.bind6 && o.public6 != o.bind6 && o.public6.IsValid():
		return o.public6, true
	}
	return netip.Addr{}, false
}

// peerConn is one RFC 6062 TCP peer connection; it counts bytes.
type peerConn struct {
	net.Conn
	s *Server
}

func (c *peerConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.s.metrics.bytesFromPeer.Add(float64(n))
		c.s.metrics.packetsFromPeer.Inc()
	}
	return n, err
}

func (c *peerConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.s.metrics.bytesToPeer.Add(float64(n))
		c.s.metrics.packetsToPeer.Inc()
	}
	return n, err
}

// relayListener is one RFC 6062 TCP allocation's listener.
type relayListener struct {
	net.Listener
	s         *Server
	port      uint16
	is4       bool
	public    netip.Addr
	userID    string
	started   time.Time
	closeOnce sync.Once
}

func (l *relayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &peerConn{Conn: c, s: l.s}, nil
}

func (l *relayListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { l.s.tcpAllocationEnded(l) })
	return err
}

// Package relay is rendezvous' TURN/STUN server: RFC 8489 STUN Binding and
// RFC 8656 TURN over UDP, TCP and TLS, IPv4 and IPv6 (RFC 6156), TCP
// allocations (RFC 6062), built on pion/turn v5 and closed by default:
//
//   - every peer address goes through a filter that refuses loopback,
//     private, link-local, multicast and other non-public ranges, in every
//     IPv4-mapped or embedded IPv6 spelling (filter.go), and the server's own
//     addresses except live relay ports (relayConn);
//   - clients authenticate with static long-term credentials or coturn-style
//     TURN REST credentials, several secrets at once for rotation (auth.go);
//   - allocations are limited per user, per client IP and in total, and each
//     one's bandwidth is capped.
//
// pion types stay inside this package: the rest of rendezvous sees Config,
// Options, Server and ICEServer.
//
// Packet path (UDP):
//
//	client ─► turnPacketConn ─► pion (auth, allocations, channels) ─► relayConn ─► peer
//	          │ Binding → internal/stunserver                          │ own-address port check,
//	          │ REST key pick for rotated secrets                      │ bandwidth cap, byte counts
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/rendezvous-p2p/rendezvous/internal/certs"
	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
)

// Options carries the relay's collaborators.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Network    netx.Network // nil = host
	// OnPeerToken is called with the PEER-TOKEN of a Binding request and the
	// address it came from (the peer's server-reflexive address). It must not block.
	OnPeerToken func(token string, from netip.AddrPort)
}

// Server is the relay service.
type Server struct {
	cfg     Config
	opts    Options
	log     *slog.Logger
	metrics *metrics
	ready   chan struct{}
	// portMin, portMax are the relay port range (restart-only, read by the
	// allocator while Reload may replace cfg).
	portMin, portMax int
	sockBuf          int

	creds      atomic.Pointer[credentials]
	certs      atomic.Pointer[certs.Source] // TURN/TLS certificate, when configured
	filter     atomic.Pointer[peerFilter]
	limits     atomic.Pointer[limits]
	own        atomic.Pointer[ownAddrs]
	keys       keyChoice
	lastKey    lastKeys
	fails      failLimiter
	ports      portSet // live UDP relay ports
	clients    clientRelays
	pollers    []*relayPoller // fast path for relay sockets on the host network; none on another Network
	nextPoller atomic.Uint32
	tcpPort    portSet // live TCP relay ports
	stun       *stunserver.Server

	mu          sync.Mutex
	cfgMu       sync.Mutex // serialises Reload
	stopping    bool
	addr        netip.AddrPort // bound UDP and TCP address
	tlsAddr     netip.AddrPort
	perUser     map[string]int
	perIP       map[netip.Addr]int
	total       int
	relays      map[netip.AddrPort]*relayConn     // by advertised relay address
	tcpClients  map[netip.AddrPort]netip.AddrPort // TCP allocation relay address → client
	clientConns map[*turnConn]struct{}
	relayWG     sync.WaitGroup
}

// limits are the reloadable allocation limits.
type limits struct {
	userQuota, totalQuota, perIP int
	bandwidth                    int64
	maxDuration                  time.Duration
}

func limitsOf(c Config) *limits {
	return &limits{userQuota: c.UserQuota, totalQuota: c.TotalQuota, perIP: c.MaxAllocationsPerIP,
		bandwidth: c.BandwidthLimit, maxDuration: c.MaxAllocationDuration}
}

// New returns a relay; it does no I/O.
func New(cfg Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("relay: registering metrics: %w", err)
	}
	s := &Server{cfg: cfg, opts: opts, log: log, metrics: m, ready: make(chan struct{}),
		portMin: cfg.PortRangeMin, portMax: cfg.PortRangeMax, sockBuf: cfg.SocketBuffer,
		perUser: map[string]int{}, perIP: map[netip.Addr]int{}, relays: map[netip.AddrPort]*relayConn{}, tcpClients: map[netip.AddrPort]netip.AddrPort{},
		clientConns: map[*turnConn]struct{}{}}
	s.creds.Store(newCredentials(cfg))
	f, err := newPeerFilter(cfg.AllowPeers, cfg.DenyPeers, nil, nil)
	if err != nil {
		return nil, err
	}
	s.filter.Store(f)
	s.limits.Store(limitsOf(cfg))
	s.own.Store(&ownAddrs{})
	s.fails.setPerMinute(cfg.AuthFailuresPerMinute)
	return s, nil
}

// Addr is the bound STUN/TURN address (UDP and TCP); valid after Ready.
func (s *Server) Addr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// TLSAddr is the bound TURN-over-TLS address, if TLS is on; valid after Ready.
func (s *Server) TLSAddr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tlsAddr
}

// Name is the service label.
func (s *Server) Name() string { return "relay" }

// Ready is closed once every listener is bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Reload applies new credentials, peer filter and limits to the running
// relay; changed listen or relay addresses need a restart. All or nothing.
func (s *Server) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	old := s.cfg
	for _, k := range []struct{ key, a, b string }{
		{"listen", old.Listen, cfg.Listen}, {"tls-listen", old.TLSListen, cfg.TLSListen},
		{"cert-file", old.CertFile, cfg.CertFile}, {"key-file", old.KeyFile, cfg.KeyFile},
		{"relay-address", old.RelayAddress, cfg.RelayAddress}, {"public-address", old.PublicAddress, cfg.PublicAddress},
		{"relay-address-v6", old.RelayAddressV6, cfg.RelayAddressV6}, {"public-address-v6", old.PublicAddressV6, cfg.PublicAddressV6},
		{"port-range-min", strconv.Itoa(old.PortRangeMin), strconv.Itoa(cfg.PortRangeMin)},
		{"port-range-max", strconv.Itoa(old.PortRangeMax), strconv.Itoa(cfg.PortRangeMax)},
		{"realm", old.Realm, cfg.Realm}, {"alternate-address", old.AlternateAddress, cfg.AlternateAddress},
		{"read-sockets", strconv.Itoa(old.ReadSockets), strconv.Itoa(cfg.ReadSockets)},
		{"socket-buffer", strconv.Itoa(old.SocketBuffer), strconv.Itoa(cfg.SocketBuffer)},
		{"lifetime", old.Lifetime.String(), cfg.Lifetime.String()},
	} {
		if k.a != k.b {
			return fmt.Errorf("%s: changed from %q to %q, which needs a restart", k.key, k.a, k.b)
		}
	}
	cur := s.filter.Load()
	f, err := newPeerFilter(cfg.AllowPeers, cfg.DenyPeers, cur.relayIPs, cur.hostIPs)
	if err != nil {
		return err
	}
	if src := s.certs.Load(); src != nil {
		// Re-read the files now; a bad pair is refused and the old one kept.
		if err := src.Reload(); err != nil {
			return fmt.Errorf("cert-file: %w", err)
		}
	}
	s.creds.Store(newCredentials(cfg))
	s.filter.Store(f)
	l := limitsOf(cfg)
	s.limits.Store(l)
	s.fails.setPerMinute(cfg.AuthFailuresPerMinute)
	s.mu.Lock()
	for _, r := range s.relays {
		r.setLimit(l.bandwidth)
	}
	s.mu.Unlock()
	s.cfg = cfg
	s.log.Info("relay: config reloaded", "users", len(cfg.Users), "auth_secrets", len(cfg.AuthSecrets),
		"allow_peers", len(cfg.AllowPeers), "deny_peers", len(cfg.DenyPeers))
	return nil
}

func (s *Server) multiSecret() bool { return len(s.creds.Load().secrets) > 1 }

// Run binds, serves until ctx ends, then closes every socket.
func (s *Server) Run(ctx context.Context) (err error) {
	// Setup reads cfg; a concurrent Reload waits for it.
	s.cfgMu.Lock()
	setupDone := false
	defer func() {
		if !setupDone {
			s.cfgMu.Unlock()
		}
	}()
	own, err := s.resolveAddrs()
	if err != nil {
		return err
	}
	s.own.Store(own)
	f, _ := newPeerFilter(s.cfg.AllowPeers, s.cfg.DenyPeers, own.ips, own.hostIPs)
	s.filter.Store(f)

	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	udpConns, err := s.listenUDP(ctx)
	if err != nil {
		return err
	}
	if s.hostNetwork() {
		for i, c := range udpConns {
			if lc, err := newLoopUDPConn(c); err == nil {
				udpConns[i] = lc
			}
		}
	}
	for _, c := range udpConns {
		closers = append(closers, func() { c.Close() })
	}
	network := netx.Or(s.opts.Network)
	// TCP shares the UDP port (which port 0 has just picked).
	listenHost, _, _ := net.SplitHostPort(s.cfg.Listen)
	tcpAddr := net.JoinHostPort(listenHost, strconv.Itoa(int(netx.AddrPortOf(udpConns[0].LocalAddr()).Port())))
	tcpLn, err := network.Listen(ctx, "tcp", tcpAddr)
	if err != nil {
		return netx.BindError("tcp", tcpAddr, "another TURN server", err)
	}
	closers = append(closers, func() { tcpLn.Close() })
	listeners := []net.Listener{&turnListener{Listener: tcpLn, s: s}}
	if s.cfg.TLSEnabled() {
		// internal/certs checks the files on every handshake, so a renewed
		// certificate is served without a restart or a reload.
		src, err := certs.New(certs.Config{CertFile: s.cfg.CertFile, KeyFile: s.cfg.KeyFile}, certs.Options{Logger: s.log})
		if err != nil {
			return fmt.Errorf("cert-file: %w", err)
		}
		s.certs.Store(src)
		tlsLn, err := network.Listen(ctx, "tcp", s.cfg.TLSListen)
		if err != nil {
			return netx.BindError("tcp", s.cfg.TLSListen, "another TURN server", err)
		}
		closers = append(closers, func() { tlsLn.Close() })
		s.mu.Lock()
		s.tlsAddr = netx.AddrPortOf(tlsLn.Addr())
		s.mu.Unlock()
		listeners = append(listeners, &turnListener{s: s,
			Listener: tls.NewListener(tlsLn, src.TLSConfig())})
	}

	// STUN Binding in front of pion, sharing the primary UDP socket.
	stunCfg := stunserver.Config{Primary: netx.AddrPortOf(udpConns[0].LocalAddr())}
	if s.cfg.AlternateAddress != "" {
		stunCfg.Alternate = netip.MustParseAddrPort(s.cfg.AlternateAddress)
	}
	if own.public4 != own.bind4 && own.public4.IsValid() && stunCfg.Primary.Addr().Unmap().Is4() && !stunCfg.Primary.Addr().IsUnspecified() {
		stunCfg.Public.Primary = netip.AddrPortFrom(own.public4, 0)
	}
	s.stun, err = stunserver.New(stunCfg, stunserver.Options{Logger: s.log, Network: s.opts.Network,
		OnPeerToken: s.opts.OnPeerToken, PrimaryConn: udpConns[0]})
	if err != nil {
		return fmt.Errorf("alternate-address: %w", err)
	}
	stunCtx, stopSTUN := context.WithCancel(context.Background())
	stunDone := make(chan error, 1)
	go func() { stunDone <- s.stun.Run(stunCtx) }()
	select {
	case <-s.stun.Ready():
	case err := <-stunDone:
		stopSTUN()
		return err
	}
	closers = append(closers, func() { stopSTUN(); <-stunDone })

	tcs := make([]*turnPacketConn, len(udpConns))
	for i, c := range udpConns {
		tcs[i] = newTurnPacketConn(c, s)
	}
	pollerOf := make([]*relayPoller, len(udpConns)) // by listening socket; nil: none
	for i, c := range udpConns {
		lc, ok := c.(*loopUDPConn)
		if !ok {
			continue // pion reads it
		}
		p, err := newRelayPoller(s, lc.fd, lc.v6)
		if err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		if err := p.readListener(tcs[i].batch); err != nil {
			p.close()
			return fmt.Errorf("relay: %w", err)
		}
		s.pollers = append(s.pollers, p)
		pollerOf[i] = p
		go p.run()
		closers = append(closers, p.stop)
	}

	gen := &relayAllocator{s: s}
	sc := turn.ServerConfig{
		Realm:              s.cfg.Realm,
		AuthHandler:        s.authHandler,
		QuotaHandler:       s.quotaHandler,
		EventHandler:       s.eventHandler(),
		AllocationLifetime: s.cfg.Lifetime,
		LoggerFactory:      &slogLoggerFactory{log: s.log},
	}
	for i, tc := range tcs {
		// pion keeps one allocation manager per socket, so an allocator of
		// the socket's own puts the relay socket in that socket's loop: the
		// client's ChannelData (SO_REUSEPORT hashes its address to this
		// socket) and the peer's replies are then read by one goroutine.
		sc.PacketConnConfigs = append(sc.PacketConnConfigs, turn.PacketConnConfig{
			PacketConn: tc, RelayAddressGenerator: &relayAllocator{s: s, poller: pollerOf[i]}, PermissionHandler: s.permit})
	}
	for _, l := range listeners {
		sc.ListenerConfigs = append(sc.ListenerConfigs, turn.ListenerConfig{
			Listener: l, RelayAddressGenerator: gen, PermissionHandler: s.permit})
	}
	ts, err := turn.NewServer(sc)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	closers = nil // owned by ts from here
	s.mu.Lock()
	s.addr = netx.AddrPortOf(udpConns[0].LocalAddr())
	s.mu.Unlock()

	s.log.Info("relay: listening", "udp", udpConns[0].LocalAddr().String(), "read_sockets", len(udpConns),
		"tcp", tcpLn.Addr().String(), "tls", s.cfg.TLSEnabled(), "relay_ipv4", own.public4, "relay_ipv6", own.public6,
		"ports", fmt.Sprintf("%d-%d", s.cfg.PortRangeMin, s.cfg.PortRangeMax))
	setupDone = true
	s.cfgMu.Unlock()
	close(s.ready)
	<-ctx.Done()

	s.mu.Lock()
	s.stopping = true
	conns := make([]*turnConn, 0, len(s.clientConns))
	for c := range s.clientConns {
		conns = append(conns, c)
	}
	relays := make([]*relayConn, 0, len(s.relays))
	for _, r := range s.relays {
		relays = append(relays, r)
	}
	s.mu.Unlock()
	for _, p := range s.pollers { // before pion closes the listening sockets they send through
		p.stop()
	}
	_ = ts.Close()
	for _, c := range conns {
		c.Close()
	}
	for _, r := range relays {
		r.Close()
	}
	stopSTUN()
	<-stunDone
	s.relayWG.Wait()
	return nil
}

// hostNetwork: sockets are the host's, so relay sockets can be raw descriptors.
func (s *Server) hostNetwork() bool {
	if s.opts.Network == nil {
		return true
	}
	_, ok := s.opts.Network.(netx.Host)
	return ok
}

// listenUDP opens ReadSockets SO_REUSEPORT sockets on Listen with large buffers.
func (s *Server) listenUDP(ctx context.Context) ([]net.PacketConn, error) {
	n := s.cfg.ReadSockets
	if n == 0 {
		// Each socket has one busy goroutine, its event loop (both
		// directions of its allocations): one socket per CPU, like coturn's
		// relay threads. On 2 cores one loop used ~7% less CPU than two but
		// queued at 45k msg/s (probe RTT p90 2.2 ms against 1.1 ms).
		n = procsBesideLoops()
	}
	network := s.opts.Network
	host, isHost := network.(netx.Host)
	if network == nil {
		isHost = true
	}
	if isHost {
		lc := host.Config
		inner := lc.Control
		bufSize := s.cfg.SocketBuffer
		lc.Control = func(nw, addr string, rc syscall.RawConn) error {
			if inner != nil {
				if err := inner(nw, addr, rc); err != nil {
					return err
				}
			}
			var serr error
			err := rc.Control(func(fd uintptr) {
				if n > 1 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
				}
				if bufSize > 0 {
					setBuffer(int(fd), unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, bufSize)
					setBuffer(int(fd), unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, bufSize)
				}
			})
			if err != nil {
				return err
			}
			return serr
		}
		network = netx.Host{Config: lc}
	} else {
		n = 1 // a foreign Network (a test namespace) gets one plain socket
	}
	var conns []net.PacketConn
	addr := s.cfg.Listen
	for i := range n {
		c, err := network.ListenPacket(ctx, "udp", addr)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, netx.BindError("udp", addr, "another TURN server", err)
		}
		conns = append(conns, c)
		if i == 0 {
			// Port 0 picks one; the other reuseport sockets must join it.
			host, _, _ := net.SplitHostPort(s.cfg.Listen)
			addr = net.JoinHostPort(host, strconv.Itoa(int(netx.AddrPortOf(c.LocalAddr()).Port())))
		}
	}
	if rb, err := rcvBuf(conns[0]); err == nil && s.cfg.SocketBuffer > 0 && rb < s.cfg.SocketBuffer {
		s.log.Warn("relay: UDP receive buffer smaller than configured; raise net.core.rmem_max or run with CAP_NET_ADMIN",
			"want", s.cfg.SocketBuffer, "got", rb)
	}
	return conns, nil
}

// relaySocketBuffer caps an allocation's socket buffers: one allocation's
// traffic, but enough to ride out a scheduling hiccup at tens of kpps.
const relaySocketBuffer = 1 << 20

// setConnBuffers sizes an open socket's buffers, when it is a real socket.
func setConnBuffers(c net.PacketConn, size int) {
	sc, ok := c.(syscall.Conn)
	if !ok || size <= 0 {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		setBuffer(int(fd), unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, size)
		setBuffer(int(fd), unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, size)
	})
}

// setBuffer sets a socket buffer, forcing past the sysctl cap when allowed.
func setBuffer(fd, opt, force, size int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size) == nil {
		return
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, size)
}

func rcvBuf(c net.PacketConn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.ErrUnsupported
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) }); err != nil {
		return 0, err
	}
	return v / 2, gerr // Linux reports double the requested size
}

// resolveAddrs works out the relay bind and public IPs and the server's own IPs.
func (s *Server) resolveAddrs() (*ownAddrs, error) {
	o := &ownAddrs{}
	parse := func(v string) netip.Addr {
		if v == "" {
			return netip.Addr{}
		}
		a := netip.MustParseAddr(v)
		return a.Unmap()
	}
	o.bind4, o.public4 = parse(s.cfg.RelayAddress), parse(s.cfg.PublicAddress)
	o.bind6, o.public6 = parse(s.cfg.RelayAddressV6), parse(s.cfg.PublicAddressV6)
	var ifaceIPs []netip.Addr
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				ifaceIPs = append(ifaceIPs, p.Addr().Unmap())
			}
		}
	}
	pick := func(is4 bool) netip.Addr {
		var fallback netip.Addr
		for _, a := range ifaceIPs {
			if a.Is4() != is4 || !a.IsGlobalUnicast() {
				continue
			}
			if !a.IsPrivate() {
				return a
			}
			if !fallback.IsValid() {
				fallback = a
			}
		}
		return fallback
	}
	host, _, _ := net.SplitHostPort(s.cfg.Listen)
	listenIP, _ := netip.ParseAddr(host)
	listenIP = listenIP.Unmap()
	if !o.bind4.IsValid() {
		if listenIP.Is4() && !listenIP.IsUnspecified() {
			o.bind4 = listenIP
		} else {
			o.bind4 = pick(true)
		}
	}
	if !o.bind6.IsValid() {
		if listenIP.Is6() && !listenIP.IsUnspecified() {
			o.bind6 = listenIP
		} else if !listenIP.Is4() {
			o.bind6 = pick(false)
		}
	}
	if !o.public4.IsValid() {
		o.public4 = o.bind4
	}
	if !o.public6.IsValid() {
		o.public6 = o.bind6
	}
	if !o.bind4.IsValid() && !o.bind6.IsValid() {
		return nil, errors.New("relay-address: no global unicast address on this host; set relay-address")
	}
	for _, a := range []netip.Addr{o.bind4, o.public4, o.bind6, o.public6} {
		if a.IsValid() && !a.IsUnspecified() {
			o.ips = appendUnique(o.ips, a)
		}
	}
	hostIPs := []netip.Addr{listenIP}
	if listenIP.IsUnspecified() || !listenIP.IsValid() {
		hostIPs = ifaceIPs
	}
	for _, a := range hostIPs {
		if a.IsValid() && !a.IsUnspecified() && !slices.Contains(o.ips, a) {
			o.hostIPs = appendUnique(o.hostIPs, a)
		}
	}
	return o, nil
}

func appendUnique(s []netip.Addr, a netip.Addr) []netip.Addr {
	for _, x := range s {
		if x == a {
			return s
		}
	}
	return append(s, a)
}

// permit is pion's PermissionHandler: CreatePermission, ChannelBind, Connect.
func (s *Server) permit(client net.Addr, peer net.IP) bool {
	ip, ok := netip.AddrFromSlice(peer)
	reason := "invalid"
	if ok {
		reason = s.filter.Load().check(ip)
	}
	if reason == "" {
		return true
	}
	s.metrics.peersRefused.WithLabelValues(reason).Inc()
	s.log.Debug("relay: peer refused", "client", client.String(), "peer", peer.String(), "reason", reason)
	return false
}

// authHandler is pion's AuthHandler.
func (s *Server) authHandler(ra *turn.RequestAttributes) (string, []byte, bool) {
	from := netx.AddrPortOf(ra.SrcAddr)
	now := time.Now()
	if s.fails.blocked(from.Addr().Unmap(), now) {
		s.metrics.authFailures.WithLabelValues(authRateLimited).Inc()
		return "", nil, false
	}
	userID, keys, reason := s.creds.Load().candidates(ra.Username, now)
	if reason != "" {
		s.metrics.authFailures.WithLabelValues(reason).Inc()
		s.fails.fail(from.Addr().Unmap(), now)
		s.log.Debug("relay: authentication refused", "client", from, "username", ra.Username, "reason", reason)
		return "", nil, false
	}
	key := keys[0]
	if len(keys) > 1 {
		if k := s.keys.take(from, ra.Username); k != nil {
			key = k
		}
	}
	if ra.Method == stun.MethodChannelBind {
		s.lastKey.put(from, key)
	}
	return userID, key, true
}

// quotaHandler is pion's QuotaHandler (false → 486 Allocation Quota Reached).
func (s *Server) quotaHandler(userID, _ string, src net.Addr) bool {
	l := s.limits.Load()
	ip := netx.AddrPortOf(src).Addr().Unmap()
	s.mu.Lock()
	reason := ""
	switch {
	case l.totalQuota > 0 && s.total >= l.totalQuota:
		reason = "total_quota"
	case l.userQuota > 0 && s.perUser[userID] >= l.userQuota:
		reason = "user_quota"
	case l.perIP > 0 && s.perIP[ip] >= l.perIP:
		reason = "ip_quota"
	}
	s.mu.Unlock()
	if reason != "" {
		s.metrics.allocationsRefused.WithLabelValues(reason).Inc()
		s.log.Debug("relay: allocation refused", "user", userID, "client", src.String(), "reason", reason)
		return false
	}
	return true
}

func (s *Server) eventHandler() turn.EventHandler {
	return turn.EventHandler{
		OnAuth: func(src, _ net.Addr, _, username, _, method string, ok bool) {
			if !ok {
				s.metrics.authFailures.WithLabelValues(authBadPassword).Inc()
				s.fails.fail(netx.AddrPortOf(src).Addr().Unmap(), time.Now())
				s.log.Debug("relay: authentication failed", "client", src.String(), "username", username, "method", method)
			}
		},
		OnAllocationCreated: func(src, _ net.Addr, protocol, userID, _ string, relayAddr net.Addr, _ int) {
			client := netx.AddrPortOf(src)
			// protocol is the relayed transport (UDP, or TCP for RFC 6062); the
			// client's own transport shows in its address type (TLS is tcp).
			_, udp := src.(*net.UDPAddr)
			clientTransport := "tcp"
			if udp {
				clientTransport = "udp"
			}
			s.mu.Lock()
			s.perIP[client.Addr().Unmap()]++
			rc := s.relays[netx.AddrPortOf(relayAddr)]
			if rc != nil {
				rc.client.Store(&client)
				// A TCP/TLS client's ChannelData travels its stream, through pion.
				if udp {
					rc.udpClient.Store(&client)
					s.clients.put(client, rc)
				}
			} else {
				s.tcpClients[netx.AddrPortOf(relayAddr)] = client
			}
			s.mu.Unlock()
			if rc != nil && udp && rc.poller != nil {
				if err := rc.poller.addClientSocket(rc, client); err != nil {
					s.log.Debug("relay: client read on the listening socket (no socket of its own)", "client", client, "error", err)
				}
			}
			s.log.Info("relay: allocation started", "user", userID, "client", client, "client_transport", clientTransport,
				"transport", protocol, "relay", relayAddr.String())
		},
		OnPermissionCreated: func(_, _ net.Addr, _, _, _ string, _ net.Addr, _ net.IP) { s.metrics.permissions.Inc() },
		OnPermissionDeleted: func(_, _ net.Addr, _, _, _ string, _ net.Addr, _ net.IP) { s.metrics.permissions.Dec() },
		OnChannelCreated: func(_, _ net.Addr, _, _, _ string, relayAddr, peer net.Addr, number uint16) {
			s.metrics.channels.Inc()
			if rc := s.relayConn(relayAddr); rc != nil {
				p := netx.AddrPortOf(peer)
				rc.setChannel(number, netip.AddrPortFrom(p.Addr().Unmap(), p.Port()))
			}
		},
		OnChannelDeleted: func(_, _ net.Addr, _, _, _ string, relayAddr, _ net.Addr, number uint16) {
			s.metrics.channels.Dec()
			if rc := s.relayConn(relayAddr); rc != nil {
				rc.setChannel(number, netip.AddrPort{})
			}
		},
	}
}

func (s *Server) relayConn(relayAddr net.Addr) *relayConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.relays[netx.AddrPortOf(relayAddr)]
}

// reserve counts a new allocation against the quotas, strictly (the quota
// handler's check can race with a concurrent Allocate).
func (s *Server) reserve(userID string) error {
	l := s.limits.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopping:
		return net.ErrClosed
	case l.totalQuota > 0 && s.total >= l.totalQuota:
		s.metrics.allocationsRefused.WithLabelValues("total_quota").Inc()
		return errors.New("total quota reached")
	case l.userQuota > 0 && s.perUser[userID] >= l.userQuota:
		s.metrics.allocationsRefused.WithLabelValues("user_quota").Inc()
		return errors.New("user quota reached")
	}
	s.total++
	s.perUser[userID]++
	return nil
}

func (s *Server) release(userID string, client *netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.perUser[userID]--; s.perUser[userID] <= 0 {
		delete(s.perUser, userID)
	}
	if client != nil {
		ip := client.Addr().Unmap()
		if s.perIP[ip]--; s.perIP[ip] <= 0 {
			delete(s.perIP, ip)
		}
	}
}

func (s *Server) allocationEnded(c *relayConn) {
	if t := c.timer.Load(); t != nil {
		t.Stop()
	}
	s.mu.Lock()
	delete(s.relays, c.public)
	s.mu.Unlock()
	s.ports.set(c.public.Addr().Is4(), c.public.Port(), false)
	client := c.client.Load()
	if client != nil {
		s.clients.remove(*client, c)
	}
	s.release(c.userID, client)
	life := time.Since(c.started)
	out, in := c.bytesOut.Load(), c.bytesIn.Load()
	s.metrics.allocations.Dec()
	s.metrics.lifetimes.Observe(life.Seconds())
	s.metrics.allocationBytes.Observe(float64(out + in))
	var clientStr string
	if client != nil {
		clientStr = client.String()
	}
	s.log.Info("relay: allocation ended", "user", c.userID, "client", clientStr, "relay", c.public,
		"duration", life.Round(time.Millisecond), "bytes_to_peer", out, "bytes_from_peer", in)
	s.relayWG.Done()
}

func (s *Server) tcpAllocationEnded(l *relayListener) {
	s.tcpPort.set(l.is4, l.port, false)
	s.mu.Lock()
	pub := netip.AddrPortFrom(l.public, l.port)
	client, ok := s.tcpClients[pub]
	delete(s.tcpClients, pub)
	s.mu.Unlock()
	var cp *netip.AddrPort
	if ok {
		cp = &client
	}
	s.release(l.userID, cp)
	s.metrics.allocations.Dec()
	s.metrics.lifetimes.Observe(time.Since(l.started).Seconds())
	s.log.Info("relay: allocation ended", "user", l.userID, "client", client, "relay", pub, "transport", "tcp",
		"duration", time.Since(l.started).Round(time.Millisecond))
	s.relayWG.Done()
}

func (s *Server) trackConn(c *turnConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.clientConns[c] = struct{}{}
	return true
}

func (s *Server) untrackConn(c *turnConn) {
	s.mu.Lock()
	delete(s.clientConns, c)
	s.mu.Unlock()
}

// relayAllocator is pion's RelayAddressGenerator: it opens relay sockets in
// the configured port range and wraps them.
type relayAllocator struct {
	s      *Server
	poller *relayPoller // the loop of the listening socket this allocator serves; nil: any (TCP clients)
}

func (g *relayAllocator) Validate() error { return nil }

func (g *relayAllocator) family(network string) (bind, public netip.Addr, err error) {
	own := g.s.own.Load()
	if network == "udp6" || network == "tcp6" {
		bind, public = own.bind6, own.public6
	} else {
		bind, public = own.bind4, own.public4
	}
	if !bind.IsValid() {
		g.s.metrics.allocationsRefused.WithLabelValues("address_family").Inc()
		return bind, public, fmt.Errorf("no relay address for %s", network)
	}
	return bind, public, nil
}

// pickPorts yields the ports to try: the requested one, or random ones in range.
func (g *relayAllocator) pickPorts(requested int, try func(port int) error) error {
	if requested != 0 {
		if requested < g.s.portMin || requested > g.s.portMax {
			return fmt.Errorf("requested port %d outside the relay range", requested)
		}
		return try(requested)
	}
	span := g.s.portMax - g.s.portMin + 1
	var err error
	for range 32 {
		if err = try(g.s.portMin + rand.IntN(span)); err == nil {
			return nil
		}
	}
	g.s.metrics.allocationsRefused.WithLabelValues("no_relay_port").Inc()
	return fmt.Errorf("no free relay port: %w", err)
}

func (g *relayAllocator) AllocatePacketConn(conf turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	s := g.s
	bind, public, err := g.family(conf.Network)
	if err != nil {
		return nil, nil, err
	}
	if conf.UserID == "" {
		// pion probing for a free even port (EVEN-PORT): a socket it closes at once.
		var conn net.PacketConn
		err := g.pickPorts(0, func(port int) error {
			c, err := netx.Or(s.opts.Network).ListenPacket(context.Background(), conf.Network,
				netip.AddrPortFrom(bind, uint16(port)).String())
			conn = c
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		return conn, net.UDPAddrFromAddrPort(netip.AddrPortFrom(public, netx.AddrPortOf(conn.LocalAddr()).Port())), nil
	}
	if err := s.reserve(conf.UserID); err != nil {
		return nil, nil, err
	}
	rc := &relayConn{s: s, userID: conf.UserID, started: time.Now(), clientFd: -1}
	rc.channels.Store(noChannels)
	var port uint16
	if len(s.pollers) > 0 {
		err = g.pickPorts(conf.RequestedPort, func(p int) error {
			fd, err := openRelaySocket(netip.AddrPortFrom(bind, uint16(p)), min(s.sockBuf, relaySocketBuffer))
			if err == nil {
				rc.fd, port = fd, uint16(p)
			}
			return err
		})
		if err == nil {
			rc.v6 = bind.Is6() && !bind.Is4In6()
			rc.local = net.UDPAddrFromAddrPort(netip.AddrPortFrom(bind, port))
			rc.slow.signal = make(chan struct{}, 1)
			rc.done = make(chan struct{})
			rc.poller = g.poller
			if rc.poller == nil {
				rc.poller = s.pollers[int(s.nextPoller.Add(1))%len(s.pollers)]
			}
			if err = rc.poller.add(rc); err != nil {
				unix.Close(rc.fd)
			}
		}
	} else {
		err = g.pickPorts(conf.RequestedPort, func(p int) error {
			c, err := netx.Or(s.opts.Network).ListenPacket(context.Background(), conf.Network,
				netip.AddrPortFrom(bind, uint16(p)).String())
			if err == nil {
				rc.pc = c
			}
			return err
		})
		if err == nil {
			setConnBuffers(rc.pc, min(s.sockBuf, relaySocketBuffer))
			port = netx.AddrPortOf(rc.pc.LocalAddr()).Port()
		}
	}
	if err != nil {
		s.release(conf.UserID, nil)
		return nil, nil, err
	}
	rc.public = netip.AddrPortFrom(public, port)
	l := s.limits.Load()
	rc.setLimit(l.bandwidth)
	s.relayWG.Add(1)
	s.mu.Lock()
	s.relays[rc.public] = rc
	s.mu.Unlock()
	s.ports.set(bind.Is4(), port, true)
	if l.maxDuration > 0 {
		rc.timer.Store(time.AfterFunc(l.maxDuration, func() { rc.Close() }))
	}
	s.metrics.allocations.Inc()
	s.metrics.allocationsCreated.Inc()
	return rc, net.UDPAddrFromAddrPort(rc.public), nil
}

func reuseControl(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (g *relayAllocator) AllocateListener(conf turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	s := g.s
	bind, public, err := g.family(conf.Network)
	if err != nil {
		return nil, nil, err
	}
	if err := s.reserve(conf.UserID); err != nil {
		return nil, nil, err
	}
	// The relay address also dials out (Connect), so it needs SO_REUSEPORT;
	// a test's own Network (a namespace) gets a plain listener.
	listen := netx.Network(netx.Host{Config: net.ListenConfig{Control: reuseControl}})
	if _, isHost := s.opts.Network.(netx.Host); s.opts.Network != nil && !isHost {
		listen = s.opts.Network
	}
	var ln net.Listener
	err = g.pickPorts(conf.RequestedPort, func(port int) error {
		l, err := listen.Listen(context.Background(), conf.Network, netip.AddrPortFrom(bind, uint16(port)).String())
		if err == nil {
			ln = l
		}
		return err
	})
	if err != nil {
		s.release(conf.UserID, nil)
		return nil, nil, err
	}
	port := netx.AddrPortOf(ln.Addr()).Port()
	rl := &relayListener{Listener: ln, s: s, port: port, is4: bind.Is4(), public: public, userID: conf.UserID, started: time.Now()}
	s.relayWG.Add(1)
	s.tcpPort.set(bind.Is4(), port, true)
	s.metrics.allocations.Inc()
	s.metrics.allocationsCreated.Inc()
	return rl, &net.TCPAddr{IP: public.AsSlice(), Port: int(port)}, nil
}

func (g *relayAllocator) AllocateConn(conf turn.AllocateConnConfig) (net.Conn, error) {
	s := g.s
	local := netx.AddrPortOf(conf.LocalAddr)
	own := s.own.Load()
	if b, ok := own.bindFor(local.Addr().Unmap()); ok {
		local = netip.AddrPortFrom(b, local.Port())
	}
	remote := netx.AddrPortOf(conf.RemoteAddr)
	rip := remote.Addr().Unmap()
	if own.isOwn(rip) {
		if !s.tcpPort.live(rip.Is4(), remote.Port()) {
			s.metrics.droppedOwnAddress.Inc()
			s.log.Debug("relay: refused Connect to the server's own address outside live relay ports", "peer", remote)
			return nil, errors.New("peer is the relay itself")
		}
		if b, ok := own.bindFor(rip); ok {
			remote = netip.AddrPortFrom(b, remote.Port())
		}
	}
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Control: reuseControl, Timeout: 30 * time.Second}
	c, err := d.Dial(conf.Network, remote.String())
	if err != nil {
		return nil, err
	}
	return &peerConn{Conn: c, s: s}, nil
}

// slogLoggerFactory routes pion's logs to slog at debug level (pion logs
// per-packet events at Info and client mistakes at Error).
type slogLoggerFactory struct{ log *slog.Logger }

func (f *slogLoggerFactory) NewLogger(scope string) logging.LeveledLogger {
	return &slogLeveled{log: f.log.With("pion", scope)}
}

type slogLeveled struct{ log *slog.Logger }

func (l *slogLeveled) Trace(string)                   {}
func (l *slogLeveled) Tracef(string, ...any)          {}
func (l *slogLeveled) Debug(msg string)               {}
func (l *slogLeveled) Debugf(format string, a ...any) { l.logf(format, a...) }
func (l *slogLeveled) Info(msg string)                { l.log.Debug(msg) }
func (l *slogLeveled) Infof(format string, a ...any)  { l.logf(format, a...) }
func (l *slogLeveled) Warn(msg string)                { l.log.Debug(msg) }
func (l *slogLeveled) Warnf(format string, a ...any)  { l.logf(format, a...) }
func (l *slogLeveled) Error(msg string)               { l.log.Debug(msg) }
func (l *slogLeveled) Errorf(format string, a ...any) { l.logf(format, a...) }

func (l *slogLeveled) logf(format string, a ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(fmt.Sprintf(format, a...))
	}
}

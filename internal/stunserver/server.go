package stunserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
)

// Config says where the server listens.
type Config struct {
	// Primary is the primary address to bind; port 0 picks a free port. With an
	// Alternate it must be a specific IP (RFC 5780 needs to tell IPs apart).
	Primary netip.AddrPort
	// Alternate turns on RFC 5780: its IP must differ from Primary's and is
	// bound with both ports; its port (0 picks one) is bound on both IPs.
	Alternate netip.AddrPort
	// Public, when set, is what clients see (a server behind 1:1 NAT); ports
	// left 0 are taken from the bound sockets.
	Public Addrs
}

// Validate checks the config.
func (c Config) Validate() error {
	if !c.Primary.IsValid() {
		return errors.New("primary: address required")
	}
	if c.Alternate.IsValid() {
		if c.Primary.Addr().IsUnspecified() || c.Alternate.Addr().IsUnspecified() {
			return errors.New("alternate: RFC 5780 needs specific primary and alternate IPs, not a wildcard")
		}
		if c.Alternate.Addr() == c.Primary.Addr() {
			return errors.New("alternate: IP must differ from the primary IP")
		}
		if c.Alternate.Addr().Unmap().Is4() != c.Primary.Addr().Unmap().Is4() {
			return errors.New("alternate: IP must be of the same family as the primary IP")
		}
		if c.Alternate.Port() != 0 && c.Alternate.Port() == c.Primary.Port() {
			return errors.New("alternate: port must differ from the primary port")
		}
	}
	return nil
}

// Options carries the server's collaborators.
type Options struct {
	Logger  *slog.Logger
	Network netx.Network // nil = host
	// OnPeerToken is called with every PEER-TOKEN and the address it came
	// from. It runs on the read loop: it must not block.
	OnPeerToken func(token string, from netip.AddrPort)
	// PrimaryConn, when set, is a socket the caller owns and reads (the relay
	// shares its STUN/TURN port): the server does not bind or read the primary
	// address, the caller hands Binding requests to Handle, and answers meant
	// for the primary socket are written to PrimaryConn.
	PrimaryConn net.PacketConn
}

// Server answers Binding requests on up to four sockets.
type Server struct {
	cfg   Config
	opts  Options
	log   *slog.Logger
	ready chan struct{}

	mu    sync.Mutex
	conns [4]net.PacketConn
	addrs Addrs // as clients see them
}

// New returns a server; it does no I/O.
func New(cfg Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, opts: opts, log: log, ready: make(chan struct{})}, nil
}

// Name is the service label.
func (s *Server) Name() string { return "stun" }

// Ready is closed once every socket is bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the server's addresses as clients see them. Valid after Ready.
func (s *Server) Addrs() Addrs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs
}

// Run binds, serves until ctx ends, and closes its sockets.
func (s *Server) Run(ctx context.Context) error {
	conns, err := s.bind(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.conns = conns
	s.addrs = s.publicAddrs(conns)
	s.mu.Unlock()
	close(s.ready)

	var wg sync.WaitGroup
	for i, c := range conns {
		if c == nil || (Socket(i) == Primary && s.opts.PrimaryConn != nil) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.readLoop(c, Socket(i))
		}()
	}
	<-ctx.Done()
	for i, c := range conns {
		if c != nil && !(Socket(i) == Primary && s.opts.PrimaryConn != nil) {
			c.Close()
		}
	}
	wg.Wait()
	return nil
}

func (s *Server) publicAddrs(conns [4]net.PacketConn) Addrs {
	bound := func(c net.PacketConn) netip.AddrPort {
		if c == nil {
			return netip.AddrPort{}
		}
		return netx.AddrPortOf(c.LocalAddr())
	}
	a := Addrs{Primary: bound(conns[Primary]), Alternate: bound(conns[AltBoth])}
	if p := s.cfg.Public.Primary; p.IsValid() {
		port := p.Port()
		if port == 0 {
			port = a.Primary.Port()
		}
		a.Primary = netip.AddrPortFrom(p.Addr(), port)
	}
	if p := s.cfg.Public.Alternate; p.IsValid() && a.Alternate.IsValid() {
		port := p.Port()
		if port == 0 {
			port = a.Alternate.Port()
		}
		a.Alternate = netip.AddrPortFrom(p.Addr(), port)
	}
	return a
}

// bind opens the sockets. With port 0 the alternate-IP sockets must reuse the
// ports picked on the primary IP; if one is taken there, start over.
func (s *Server) bind(ctx context.Context) ([4]net.PacketConn, error) {
	var lastErr error
	for range 8 {
		conns, retry, err := s.bindOnce(ctx)
		if err == nil {
			return conns, nil
		}
		lastErr = err
		if !retry {
			break
		}
	}
	return [4]net.PacketConn{}, lastErr
}

func (s *Server) bindOnce(ctx context.Context) (conns [4]net.PacketConn, retry bool, err error) {
	network := netx.Or(s.opts.Network)
	listen := func(ap netip.AddrPort) (net.PacketConn, error) {
		c, err := network.ListenPacket(ctx, "udp", ap.String())
		if err != nil {
			return nil, netx.BindError("udp", ap.String(), "another STUN server", err)
		}
		return c, nil
	}
	closeAll := func() {
		for i, c := range conns {
			if c != nil && !(Socket(i) == Primary && s.opts.PrimaryConn != nil) {
				c.Close()
			}
		}
	}
	if s.opts.PrimaryConn != nil {
		conns[Primary] = s.opts.PrimaryConn
	} else if conns[Primary], err = listen(s.cfg.Primary); err != nil {
		return conns, false, err
	}
	if !s.cfg.Alternate.IsValid() {
		return conns, false, nil
	}
	pIP, aIP := s.cfg.Primary.Addr(), s.cfg.Alternate.Addr()
	pPort := netx.AddrPortOf(conns[Primary].LocalAddr()).Port()
	if conns[AltPort], err = listen(netip.AddrPortFrom(pIP, s.cfg.Alternate.Port())); err != nil {
		closeAll()
		return conns, false, err
	}
	aPort := netx.AddrPortOf(conns[AltPort].LocalAddr()).Port()
	if conns[AltIP], err = listen(netip.AddrPortFrom(aIP, pPort)); err != nil {
		closeAll()
		return conns, s.cfg.Primary.Port() == 0 && errors.Is(err, syscall.EADDRINUSE), err
	}
	if conns[AltBoth], err = listen(netip.AddrPortFrom(aIP, aPort)); err != nil {
		closeAll()
		return conns, s.cfg.Alternate.Port() == 0 && errors.Is(err, syscall.EADDRINUSE), err
	}
	return conns, false, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Handle answers b if it is a Binding request that arrived on socket on from
// from, and reports whether it was one. The relay calls it for packets read
// from the socket it shares with TURN (Options.PrimaryConn). Safe for
// concurrent use; it does not keep b.
func (s *Server) Handle(b []byte, from netip.AddrPort, on Socket) bool {
	if !IsBindingRequest(b) {
		return false
	}
	req, err := ParseRequest(b)
	if err != nil {
		s.log.Debug("stun: dropping request", "from", from, "err", err)
		return true
	}
	if req.PeerToken != "" && s.opts.OnPeerToken != nil {
		s.opts.OnPeerToken(req.PeerToken, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
	}
	s.mu.Lock()
	addrs, conns := s.addrs, s.conns
	s.mu.Unlock()
	bp := bufPool.Get().(*[]byte)
	resp, via := AppendResponse((*bp)[:0], &req, from, on, addrs)
	if c := conns[via]; c != nil {
		if _, err := c.WriteTo(resp, net.UDPAddrFromAddrPort(from)); err != nil {
			s.log.Debug("stun: writing response", "to", from, "err", err)
		}
	}
	*bp = resp[:0]
	bufPool.Put(bp)
	return true
}

func (s *Server) readLoop(c net.PacketConn, on Socket) {
	buf := make([]byte, 1500)
	for {
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Debug("stun: read loop ends", "err", err)
			}
			return
		}
		if n >= len(buf) {
			continue // truncated
		}
		s.Handle(buf[:n], netx.AddrPortOf(addr), on)
	}
}

// String describes the server's sockets, for logs.
func (a Addrs) String() string {
	if !a.HasAlternate() {
		return a.Primary.String()
	}
	return fmt.Sprintf("%s (alternate %s)", a.Primary, a.Alternate)
}

package punch

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// RelayServer is one TURN server URL with its credentials, as signaling hands
// them out (RTCIceServer): turn:host:port?transport=udp|tcp or
// turns:host:port?transport=tcp (TURN over TLS).
type RelayServer struct {
	URL        string
	Username   string
	Credential string
}

// RelayServers picks the TURN URLs out of signaling's ICE servers.
func RelayServers(ice []client.ICEServer) []RelayServer {
	var out []RelayServer
	for _, s := range ice {
		for _, u := range s.URLs {
			if strings.HasPrefix(u, "turn:") || strings.HasPrefix(u, "turns:") {
				out = append(out, RelayServer{URL: u, Username: s.Username, Credential: s.Credential})
			}
		}
	}
	return out
}

// RelayOptions says how to reach TURN servers.
type RelayOptions struct {
	// ListenPacket opens the TURN client's own UDP socket (nil: net.ListenPacket).
	ListenPacket func(ctx context.Context, network, addr string) (net.PacketConn, error)
	// Dial opens TCP connections (nil: net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RootCAs verifies a turns: server's certificate (nil: the system pool).
	RootCAs *x509.CertPool
	// Timeout bounds each allocation (default 3 s).
	Timeout time.Duration
}

// relayTransport is how we reach the TURN server; it ranks relay paths.
type relayTransport int

const (
	relayUDP relayTransport = iota
	relayTCP
	relayTLS
)

func (t relayTransport) kind() PathKind {
	return [...]PathKind{RelayUDP, RelayTCP, RelayTLS}[t]
}

// allocation is one TURN allocation: a relayed address on the server that
// forwards to and from peers, reached over a socket of its own (TURN
// ChannelData, first byte 0x40–0x4F, would be taken for QUIC on the
// endpoint's socket).
type allocation struct {
	transport relayTransport
	server    string
	client    *turn.Client
	conn      net.PacketConn // the relayed conn: WriteTo sends through the relay
	relayed   netip.AddrPort
	closeOnce sync.Once
	under     net.PacketConn // the client's socket (UDP, or a STUNConn over TCP/TLS)
	closed    chan struct{}
}

// permitter is the allocation's CreatePermission, which pion's relayed
// UDP conn has (WriteTo makes one too, but would also send data).
func (a *allocation) permitter() (interface{ CreatePermissions(...net.Addr) error }, bool) {
	if a == nil {
		return nil, false
	}
	p, ok := a.conn.(interface{ CreatePermissions(...net.Addr) error })
	return p, ok
}

func (a *allocation) close() {
	a.closeOnce.Do(func() {
		close(a.closed)
		a.conn.Close()
		a.client.Close()
		a.under.Close()
	})
}

// AllocateRelays makes TURN allocations: at most one per transport (UDP,
// TCP, TLS), tried at once, and returns the relayed addresses as candidates
// for the other side (each peer sends through its own allocation to the
// other's relayed address). Allocations that fail are reported in the error
// only when none succeeded. The endpoint keeps the allocations until Close
// or RenewRelays.
func (e *Endpoint) AllocateRelays(ctx context.Context, servers []RelayServer, opts RelayOptions) ([]Candidate, error) {
	return e.allocateRelays(ctx, servers, opts, false)
}

// relayRetireAfter is how long replaced allocations stay open after
// RenewRelays: sessions verify their new relayed paths within a few ping
// rounds (every candidate is pinged every fourth 250 ms round).
var relayRetireAfter = 10 * time.Second

// RenewRelays replaces the endpoint's TURN allocations with new ones (fresh
// credentials: TURN REST credentials expire, and with them the allocations
// made with them), returns the new relayed candidates for the peers, and
// moves every session's relayed paths to the new allocations: they are
// pinged at once toward the peer's relayed addresses, and the old
// allocations close relayRetireAfter later. The old ones stay when no new
// one could be made.
func (e *Endpoint) RenewRelays(ctx context.Context, servers []RelayServer, opts RelayOptions) ([]Candidate, error) {
	return e.allocateRelays(ctx, servers, opts, true)
}

func (e *Endpoint) allocateRelays(ctx context.Context, servers []RelayServer, opts RelayOptions, renew bool) ([]Candidate, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 3 * time.Second
	}
	type res struct {
		a   *allocation
		err error
	}
	chosen := map[relayTransport]RelayServer{}
	for _, s := range servers {
		tr, _, err := parseTURNURL(s.URL)
		if err != nil {
			continue
		}
		if _, ok := chosen[tr]; !ok {
			chosen[tr] = s
		}
	}
	if len(chosen) == 0 {
		return nil, errors.New("punch: no usable TURN URL")
	}
	results := make(chan res, len(chosen))
	for tr, s := range chosen {
		go func() {
			actx, cancel := context.WithTimeout(ctx, opts.Timeout)
			defer cancel()
			a, err := allocate(actx, tr, s, opts, e.log)
			results <- res{a, err}
		}()
	}
	var errs []error
	var got []*allocation
	for range chosen {
		r := <-results
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		got = append(got, r.a)
	}
	if len(got) == 0 {
		return nil, errors.Join(errs...)
	}
	e.mu.Lock()
	closed := e.ctx.Err() != nil
	var old []*allocation
	var attempts []*attempt
	if !closed {
		if renew {
			old = e.allocs
			e.allocs = got
			e.retiring = append(e.retiring, old...)
			attempts = slices.Collect(maps.Values(e.attempts))
		} else {
			e.allocs = append(e.allocs, got...)
		}
	}
	e.mu.Unlock()
	if closed {
		for _, a := range got {
			a.close()
		}
		return nil, net.ErrClosed
	}
	var cands []Candidate
	for _, tr := range []relayTransport{relayUDP, relayTCP, relayTLS} {
		for _, a := range got {
			if a.transport == tr {
				cands = append(cands, Candidate{Addr: a.relayed, Kind: Relayed})
				e.done.Add(2)
				go e.relayReadLoop(a)
				go e.relayKeepAlive(a)
			}
		}
	}
	if renew {
		for _, a := range attempts {
			a.addRoutes(relayRoutes(got, a.peerRelayed()))
		}
		time.AfterFunc(relayRetireAfter, func() { e.retire(old) })
	}
	return cands, nil
}

// retire closes replaced allocations and takes their routes out of every
// session (a session sending on one moves to its best other path).
func (e *Endpoint) retire(old []*allocation) {
	gone := map[*allocation]bool{}
	for _, al := range old {
		gone[al] = true
	}
	e.mu.Lock()
	keep := e.retiring[:0]
	for _, al := range e.retiring {
		if !gone[al] {
			keep = append(keep, al)
		}
	}
	e.retiring = keep
	attempts := slices.Collect(maps.Values(e.attempts))
	for r := range e.routes {
		if gone[r.via] {
			delete(e.routes, r)
		}
	}
	e.mu.Unlock()
	for _, a := range attempts {
		a.dropRoutes(func(r route) bool { return gone[r.via] })
	}
	for _, al := range old {
		al.close()
	}
}

// relayKeepAliveEvery keeps the NAT mapping (or TCP connection) between a
// TURN client and the server open while no session sends through it: pion
// refreshes an allocation only every few minutes, and a NAT that forgot the
// mapping in between would present the refresh from a new 5-tuple, which the
// server rejects (RFC 8656 ties an allocation to its 5-tuple).
const relayKeepAliveEvery = 15 * time.Second

func (e *Endpoint) relayKeepAlive(a *allocation) {
	defer e.done.Done()
	t := time.NewTicker(relayKeepAliveEvery)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-a.closed:
			return
		case <-t.C:
			if _, err := a.client.SendBindingRequest(); err != nil {
				e.log.Debug("TURN keepalive", "server", a.server, "err", err)
			}
		}
	}
}

// parseTURNURL reads turn:host:port?transport=udp|tcp and turns:host:port.
func parseTURNURL(raw string) (relayTransport, string, error) {
	scheme, rest, ok := strings.Cut(raw, ":")
	if !ok {
		return 0, "", fmt.Errorf("punch: bad TURN URL %q", raw)
	}
	hostport, query, _ := strings.Cut(rest, "?")
	q, _ := url.ParseQuery(query)
	transport := q.Get("transport")
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		if scheme == "turns" {
			hostport = net.JoinHostPort(strings.Trim(hostport, "[]"), "5349")
		} else {
			hostport = net.JoinHostPort(strings.Trim(hostport, "[]"), "3478")
		}
	}
	if host, _, err := net.SplitHostPort(hostport); err != nil || host == "" {
		return 0, "", fmt.Errorf("punch: bad host in TURN URL %q", raw)
	}
	switch {
	case scheme == "turn" && (transport == "" || transport == "udp"):
		return relayUDP, hostport, nil
	case scheme == "turn" && transport == "tcp":
		return relayTCP, hostport, nil
	case scheme == "turns" && (transport == "" || transport == "tcp"):
		return relayTLS, hostport, nil
	}
	return 0, "", fmt.Errorf("punch: unsupported TURN URL %q", raw)
}

// maxAllocateAttempts bounds the UDP allocations tried from new ports after
// 437 (Allocation Mismatch). A server answers 437 when the client's 5-tuple
// still has an allocation: the OS gave the TURN socket a port that a client
// killed earlier used, within that allocation's lifetime (up to an hour).
// Only another 5-tuple helps, so a UDP allocation starts over on a new socket;
// TCP and TLS get a new 5-tuple with every connection anyway.
const maxAllocateAttempts = 3

type debugLogger interface{ Debug(string, ...any) }

func allocate(ctx context.Context, tr relayTransport, s RelayServer, opts RelayOptions, log debugLogger) (*allocation, error) {
	for attempt := 1; ; attempt++ {
		a, err := allocateOnce(ctx, tr, s, opts, log)
		if err == nil || tr != relayUDP || attempt == maxAllocateAttempts || !isAllocationMismatch(err) {
			return a, err
		}
		log.Debug("TURN allocation mismatch (437): trying from another port", "server", s.URL, "attempt", attempt)
	}
}

func isAllocationMismatch(err error) bool {
	var te *stun.TurnError
	return errors.As(err, &te) && te.ErrorCodeAttr.Code == stun.CodeAllocMismatch
}

func allocateOnce(ctx context.Context, tr relayTransport, s RelayServer, opts RelayOptions, log debugLogger) (*allocation, error) {
	_, hostport, err := parseTURNURL(s.URL)
	if err != nil {
		return nil, err
	}
	var under net.PacketConn
	switch tr {
	case relayUDP:
		lp := opts.ListenPacket
		if lp == nil {
			lp = func(ctx context.Context, network, addr string) (net.PacketConn, error) {
				var lc net.ListenConfig
				return lc.ListenPacket(ctx, network, addr)
			}
		}
		under, err = lp(ctx, "udp4", "0.0.0.0:0")
	default:
		dial := opts.Dial
		if dial == nil {
			var d net.Dialer
			dial = d.DialContext
		}
		var c net.Conn
		c, err = dial(ctx, "tcp", hostport)
		if err == nil && tr == relayTLS {
			host, _, _ := net.SplitHostPort(hostport)
			tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12})
			if err = tc.HandshakeContext(ctx); err != nil {
				c.Close()
			}
			c = tc
		}
		if err == nil {
			under = turn.NewSTUNConn(c)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("punch: TURN %s: %w", s.URL, err)
	}
	cl, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: hostport,
		TURNServerAddr: hostport,
		Username:       s.Username,
		Password:       s.Credential,
		Conn:           under,
		LoggerFactory:  quietLogger{},
	})
	if err != nil {
		under.Close()
		return nil, fmt.Errorf("punch: TURN %s: %w", s.URL, err)
	}
	if err := cl.Listen(); err != nil {
		cl.Close()
		under.Close()
		return nil, fmt.Errorf("punch: TURN %s: %w", s.URL, err)
	}
	relayed, err := cl.AllocateWithContext(ctx)
	if err != nil {
		cl.Close()
		under.Close()
		return nil, fmt.Errorf("punch: TURN allocation at %s: %w", s.URL, err)
	}
	a := &allocation{transport: tr, server: s.URL, client: cl, conn: relayed, relayed: addrPort(relayed.LocalAddr()), under: under, closed: make(chan struct{})}
	log.Debug("TURN allocation", "server", s.URL, "relayed", a.relayed.String())
	return a, nil
}

// relayReadLoop feeds what arrives through an allocation into the endpoint,
// tagged with the allocation, as the UDP socket's read loop does.
func (e *Endpoint) relayReadLoop(a *allocation) {
	defer e.done.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := a.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		e.handlePacket(buf[:n], route{via: a, addr: addrPort(from)})
	}
}

// quietLogger keeps pion's logging out of the peer's output.
type quietLogger struct{}

func (quietLogger) NewLogger(string) logging.LeveledLogger {
	return logging.NewDefaultLeveledLoggerForScope("", logging.LogLevelDisabled, discardWriter{})
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

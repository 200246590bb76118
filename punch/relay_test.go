package punch

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/turn/v5"

	"github.com/rendezvous-p2p/rendezvous/relay"
)

// The test relay listens on 127.0.0.2 so that 127.0.0.1, where the peers
// live, is not one of its own addresses.
const testRelayIP = "127.0.0.2"

type testRelay struct {
	servers []RelayServer // udp, tcp, tls
	ca      *x509.CertPool
}

// testRelaySecret signs the test relay's TURN REST credentials.
const testRelaySecret = "punch-test-relay-secret"

func startTestRelay(t *testing.T) testRelay {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "punch test relay"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP(testRelayIP)},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)

	cfg := relay.DefaultConfig()
	cfg.Listen = testRelayIP + ":0"
	cfg.TLSListen = testRelayIP + ":0"
	cfg.CertFile, cfg.KeyFile = certFile, keyFile
	cfg.RelayAddress = testRelayIP
	cfg.RelayAddressV6 = "::1"
	cfg.ReadSockets = 1
	cfg.Users = map[string]string{"peer": "peer-pw"}
	cfg.AuthSecrets = []string{testRelaySecret}
	srv, err := relay.New(cfg, relay.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-srv.Ready():
	case <-done:
		t.Fatal("relay did not start")
	case <-time.After(10 * time.Second):
		t.Fatal("relay not ready after 10s")
	}
	pool := x509.NewCertPool()
	pool.AddCert(must(x509.ParseCertificate(der)))
	cred := func(u string) RelayServer { return RelayServer{URL: u, Username: "peer", Credential: "peer-pw"} }
	return testRelay{
		servers: []RelayServer{
			cred("turn:" + srv.Addr().String() + "?transport=udp"),
			cred("turn:" + srv.Addr().String() + "?transport=tcp"),
			cred("turns:" + srv.TLSAddr().String() + "?transport=tcp"),
		},
		ca: pool,
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// cuttable is a UDP socket whose direct sends to one address can be cut, as
// an nft rule on a router would (loopback has no router to put one on).
type cuttable struct {
	net.PacketConn
	cut atomic.Bool
}

func (c *cuttable) WriteTo(b []byte, to net.Addr) (int, error) {
	if c.cut.Load() {
		return len(b), nil // dropped on the floor, like a firewall
	}
	return c.PacketConn.WriteTo(b, to)
}

// relayPeer is an endpoint on a cuttable loopback socket with TURN allocations.
func relayPeer(t *testing.T, r testRelay, servers ...RelayServer) (*Endpoint, *cuttable, []Candidate) {
	t.Helper()
	return relayPeerWith(t, RelayOptions{RootCAs: r.ca}, servers...)
}

func relayPeerWith(t *testing.T, opts RelayOptions, servers ...RelayServer) (*Endpoint, *cuttable, []Candidate) {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cuttable{PacketConn: conn}
	id, _ := NewIdentity()
	e, err := NewEndpoint(c, id, testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := e.AllocateRelays(ctx, servers, opts)
	if err != nil {
		t.Fatal(err)
	}
	return e, c, rc
}

func connectWith(t *testing.T, a, b *Endpoint, ca, cb []Candidate) (*Session, *Session) {
	t.Helper()
	sess := [8]byte{0x4e, 0x1a}
	start := time.Now().Add(20 * time.Millisecond)
	return connectSessions(t, a, Peer{Key: b.PublicKey(), Session: sess, Start: start, Candidates: cb},
		b, Peer{Key: a.PublicKey(), Session: sess, Start: start, Candidates: ca})
}

// A peer that no direct candidate reaches is connected through the relay,
// over UDP, TCP or TLS to the server, and the session carries streams.
func TestRelayedSessionOverEachTransport(t *testing.T) {
	r := startTestRelay(t)
	for i, kind := range []PathKind{RelayUDP, RelayTCP, RelayTLS} {
		t.Run(string(kind), func(t *testing.T) {
			a, ca, relA := relayPeer(t, r, r.servers[i])
			b, cb, relB := relayPeer(t, r, r.servers[i])
			ca.cut.Store(true) // no direct path at all
			cb.cut.Store(true)
			direct := func(e *Endpoint) Candidate { return Candidate{Addr: e.LocalAddr(), Kind: Host} }
			sa, sb := connectWith(t, a, b, append([]Candidate{direct(a)}, relA...), append([]Candidate{direct(b)}, relB...))
			for _, s := range []*Session{sa, sb} {
				if p := s.Path(); p.Kind != kind {
					t.Fatalf("path %+v, want %s", p, kind)
				}
			}
			if p := sa.Path(); p.Local != relA[0].Addr || p.Remote != relB[0].Addr {
				t.Errorf("a's path %v → %v, want its relayed address %v → b's %v", p.Local, p.Remote, relA[0].Addr, relB[0].Addr)
			}
			echoStream(t, sa, sb, bytes.Repeat([]byte("relayed "), 64<<10))
		})
	}
}

// echoStream sends payload over a new stream from a, b echoes it, and the
// echo must come back intact.
func echoStream(t *testing.T, a, b *Session, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		st, err := b.AcceptStream(ctx)
		if err == nil {
			_, err = io.Copy(st, st)
		}
		if err == nil {
			err = st.Close()
		}
		errc <- err
	}()
	st, err := a.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() { st.Write(payload); st.Close() }()
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo: %d bytes back, want %d intact", len(got), len(payload))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// The path ladder: a session on its direct path moves to the relay when the
// direct path is cut (echo stale), keeps its stream whole, and moves back to
// direct once the path has been healthy for StepUpAfter.
func TestLadderFallsBackToRelayAndBack(t *testing.T) {
	r := startTestRelay(t)
	a, ca, relA := relayPeer(t, r, r.servers[0])
	b, cb, relB := relayPeer(t, r, r.servers[0])
	direct := func(e *Endpoint) Candidate { return Candidate{Addr: e.LocalAddr(), Kind: Host} }
	sa, sb := connectWith(t, a, b, append([]Candidate{direct(a)}, relA...), append([]Candidate{direct(b)}, relB...))
	if sa.Path().Kind != Direct || sb.Path().Kind != Direct {
		t.Fatalf("want direct first, got %s / %s", sa.Path().Kind, sb.Path().Kind)
	}

	// A stream that spans both switches: b reads it whole while a writes in
	// three parts, one before the cut, one into it, one after the repair.
	payload := make([]byte, 3<<20)
	rand.Read(payload)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	sum := make(chan [32]byte, 1)
	go func() {
		st, err := sb.AcceptStream(ctx)
		if err != nil {
			sum <- [32]byte{}
			return
		}
		h := sha256.New()
		io.Copy(h, st)
		var s [32]byte
		copy(s[:], h.Sum(nil))
		sum <- s
	}()
	st, err := sa.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	third := len(payload) / 3
	if _, err := st.Write(payload[:third]); err != nil {
		t.Fatal(err)
	}

	waitPath := func(s *Session, want func(PathKind) bool, within time.Duration) PathEvent {
		t.Helper()
		return waitPathEvent(t, s, func(ev PathEvent) bool { return want(ev.Path.Kind) }, within)
	}
	cutAt := time.Now()
	ca.cut.Store(true)
	cb.cut.Store(true)
	mid := make(chan error, 1)
	go func() { _, err := st.Write(payload[third : 2*third]); mid <- err }() // into the cut: retransmitted on the relay
	for _, s := range []*Session{sa, sb} {
		ev := waitPath(s, func(k PathKind) bool { return k == RelayUDP }, 3*time.Second)
		if ev.Reason == "" || ev.From == nil || ev.From.Kind != Direct {
			t.Errorf("switch event %+v: want a reason and the direct path it left", ev)
		}
		t.Logf("moved to the relay %v after the cut: %s", ev.Time.Sub(cutAt).Round(time.Millisecond), ev.Reason)
	}
	ca.cut.Store(false)
	cb.cut.Store(false)
	for _, s := range []*Session{sa, sb} {
		ev := waitPath(s, func(k PathKind) bool { return k == Direct }, 10*time.Second)
		t.Logf("back to direct: %s", ev.Reason)
	}
	if err := <-mid; err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(payload[2*third:]); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if got := <-sum; got != sha256.Sum256(payload) {
		t.Fatal("the stream across the switches did not arrive complete and in order")
	}
}

func TestParseTURNURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		tr   relayTransport
		host string
		err  bool
	}{
		{"turn:203.0.113.1:3478?transport=udp", relayUDP, "203.0.113.1:3478", false},
		{"turn:203.0.113.1?transport=tcp", relayTCP, "203.0.113.1:3478", false},
		{"turns:relay.example.com:443?transport=tcp", relayTLS, "relay.example.com:443", false},
		{"turns:[2001:db8::1]", relayTLS, "[2001:db8::1]:5349", false},
		{"turn:h:1?transport=sctp", 0, "", true},
		{"stun:h:1", 0, "", true},
	} {
		tr, host, err := parseTURNURL(tc.in)
		if (err != nil) != tc.err || !tc.err && (tr != tc.tr || host != tc.host) {
			t.Errorf("parseTURNURL(%q) = %v, %q, %v; want %v, %q, err=%v", tc.in, tr, host, err, tc.tr, tc.host, tc.err)
		}
	}
}

func FuzzParseTURNURL(f *testing.F) {
	for _, s := range []string{"turn:203.0.113.1:3478?transport=udp", "turns:[::1]:443?transport=tcp", "turn:x", "turns:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tr, host, err := parseTURNURL(s)
		if err != nil {
			return
		}
		if tr > relayTLS {
			t.Fatalf("transport %d", tr)
		}
		if _, _, err := net.SplitHostPort(host); err != nil {
			t.Fatalf("%q gave host %q: %v", s, host, err)
		}
	})
}

// The lower rungs: a relayed session whose UDP way to the TURN server breaks
// (a network that starts dropping UDP) steps down to its TURN-over-TCP
// allocation and its stream goes on.
func TestLadderStepsDownToRelayOverTCP(t *testing.T) {
	r := startTestRelay(t)
	var turnSockets []*cuttable
	opts := RelayOptions{RootCAs: r.ca, ListenPacket: func(ctx context.Context, network, addr string) (net.PacketConn, error) {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			return nil, err
		}
		cc := &cuttable{PacketConn: c}
		turnSockets = append(turnSockets, cc) // AllocateRelays runs one UDP allocation per call
		return cc, nil
	}}
	peer := func() (*Endpoint, []Candidate) {
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c := &cuttable{PacketConn: conn}
		c.cut.Store(true) // no direct path
		id, _ := NewIdentity()
		e, err := NewEndpoint(c, id, testConfig(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rc, err := e.AllocateRelays(ctx, r.servers[:2], opts)
		if err != nil || len(rc) != 2 {
			t.Fatalf("allocations: %v %v", rc, err)
		}
		return e, append([]Candidate{{Addr: e.LocalAddr(), Kind: Host}}, rc...)
	}
	a, ca := peer()
	b, cb := peer()
	sa, sb := connectWith(t, a, b, ca, cb)
	if sa.Path().Kind != RelayUDP || sb.Path().Kind != RelayUDP {
		t.Fatalf("want relay-udp first, got %s / %s", sa.Path().Kind, sb.Path().Kind)
	}
	for _, c := range turnSockets {
		c.cut.Store(true)
	}
	for _, s := range []*Session{sa, sb} {
		tm := time.NewTimer(5 * time.Second)
	wait:
		for {
			select {
			case ev := <-s.PathEvents():
				if ev.Path.Kind == RelayTCP {
					t.Logf("stepped down to relay-tcp: %s", ev.Reason)
					break wait
				}
			case <-tm.C:
				t.Fatalf("no step down to relay-tcp within 5s (path %+v)", s.Path())
			}
		}
		tm.Stop()
	}
	echoStream(t, sa, sb, bytes.Repeat([]byte("over tcp "), 32<<10))
}

// Renewing the relays (fresh TURN credentials before the old ones expire)
// moves a relayed session to the new allocations: both sides renew, learn
// the other's new relayed address as signaling's peer_updated would tell
// them, and when the old allocations close the session carries on over the
// new ones with its stream whole.
func TestRenewRelaysMovesSessions(t *testing.T) {
	old := relayRetireAfter
	relayRetireAfter = 2 * time.Second
	t.Cleanup(func() { relayRetireAfter = old })
	r := startTestRelay(t)
	a, _, relA := relayPeer(t, r, r.servers[0])
	b, _, relB := relayPeer(t, r, r.servers[0])
	sa, sb := connectWith(t, a, b, relA, relB)
	if sa.Path().Kind != RelayUDP {
		t.Fatalf("path %+v, want relay-udp", sa.Path())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	payload := make([]byte, 256<<10)
	rand.Read(payload)
	got := make(chan []byte, 1)
	go func() {
		st, err := sb.AcceptStream(ctx)
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(st)
		got <- b
	}()
	st, err := sa.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	half := len(payload) / 2
	if _, err := st.Write(payload[:half]); err != nil {
		t.Fatal(err)
	}

	newA, err := a.RenewRelays(ctx, r.servers[:1], RelayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	newB, err := b.RenewRelays(ctx, r.servers[:1], RelayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if newA[0].Addr == relA[0].Addr || newB[0].Addr == relB[0].Addr {
		t.Fatalf("renewed relayed addresses %v %v are the old ones", newA, newB)
	}
	a.AddCandidates(b.PublicKey(), newB)
	b.AddCandidates(a.PublicKey(), newA)
	for _, c := range []struct {
		s     *Session
		local netip.AddrPort
	}{{sa, newA[0].Addr}, {sb, newB[0].Addr}} {
		ev := waitPathEvent(t, c.s, func(ev PathEvent) bool { return ev.Path.Local == c.local && ev.Path.Kind == RelayUDP }, 10*time.Second)
		t.Logf("moved: %s", ev.Reason)
	}
	if _, err := st.Write(payload[half:]); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatalf("stream across the renewal: %d bytes arrived, want %d intact", len(b), len(payload))
	}
}

// waitPathEvent reads s's path events until want, failing after within.
func waitPathEvent(t *testing.T, s *Session, want func(PathEvent) bool, within time.Duration) PathEvent {
	t.Helper()
	tm := time.NewTimer(within)
	defer tm.Stop()
	for {
		select {
		case ev := <-s.PathEvents():
			if want(ev) {
				return ev
			}
		case <-tm.C:
			t.Fatalf("no such path switch within %v (path now %+v)", within, s.Path())
		}
	}
}

// A TURN client killed without deallocating leaves its allocation on the
// server. When the OS hands its port to a new client within that
// allocation's lifetime, the server answers 437 (Allocation Mismatch), and
// the new client must start over from another port rather than give up.
func TestAllocateRetriesFromAnotherPortAfterMismatch(t *testing.T) {
	r := startTestRelay(t)
	udp := r.servers[0]
	_, hostport, err := parseTURNURL(udp.URL)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: hostport, TURNServerAddr: hostport,
		Username: udp.Username, Password: udp.Credential, Conn: dead, LoggerFactory: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Listen(); err != nil {
		t.Fatal(err)
	}
	relayed, err := cl.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	stale := dead.LocalAddr().String()
	dead.Close() // killed: the Refresh with lifetime 0 below never reaches the server
	relayed.Close()
	cl.Close()

	var opened []string
	opts := RelayOptions{ListenPacket: func(ctx context.Context, network, addr string) (net.PacketConn, error) {
		if len(opened) == 0 {
			addr = stale // the OS reuses the dead client's port
		}
		c, err := net.ListenPacket(network, addr)
		if err == nil {
			opened = append(opened, c.LocalAddr().String())
		}
		return c, err
	}}
	_, _, rc := relayPeerWith(t, opts, udp)
	if len(rc) != 1 || rc[0].Kind != Relayed {
		t.Fatalf("allocation after a mismatch: %v (sockets %v)", rc, opened)
	}
	if len(opened) != 2 || opened[0] != stale || opened[1] == stale {
		t.Fatalf("sockets opened %v; want the stale port %s, then another", opened, stale)
	}
}

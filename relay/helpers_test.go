package relay

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"github.com/rendezvous-p2p/rendezvous/internal/service/servicetest"
)

// The test relay listens on 127.0.0.2 so that 127.0.0.1, where clients and
// plain peers live, is not one of its own addresses.
const relayIP = "127.0.0.2"

type testRelay struct {
	srv     *Server
	reg     *prometheus.Registry
	addr    netip.AddrPort
	tlsAddr netip.AddrPort
	certPEM []byte
}

// writeCert makes a self-signed certificate for 127.0.0.2.
func writeCert(t *testing.T) (certFile, keyFile string, certPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP(relayIP)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, certPEM
}

// testConfig is a relay on 127.0.0.2 with TLS, one static user and the
// default peer filter.
func testConfig(t *testing.T) (Config, []byte) {
	cfg := DefaultConfig()
	cfg.Listen = relayIP + ":0"
	cfg.TLSListen = relayIP + ":0"
	cfg.RelayAddress = relayIP
	cfg.RelayAddressV6 = "::1"
	cfg.ReadSockets = 2
	cfg.SocketBuffer = 1 << 20
	cfg.Users = map[string]string{"alice": "alice-pw", "bob": "bob-pw"}
	var certPEM []byte
	cfg.CertFile, cfg.KeyFile, certPEM = writeCert(t)
	return cfg, certPEM
}

func startRelay(t *testing.T, mutate func(*Config), opts ...Options) *testRelay {
	t.Helper()
	cfg, certPEM := testConfig(t)
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	o.Registerer = reg
	srv, err := New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	servicetest.Start(t, srv)
	return &testRelay{srv: srv, reg: reg, addr: srv.Addr(), tlsAddr: srv.TLSAddr(), certPEM: certPEM}
}

// metric returns the value of a counter or gauge (summed over series whose
// labels include want), or a histogram's sample count.
func (r *testRelay) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsMatch(m, want) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not standing in for one
	}
}

// rawClient speaks TURN by hand, so tests see exact error codes.
type rawClient struct {
	t         *testing.T
	transport string
	pc        net.PacketConn // udp
	sc        net.Conn       // tcp/tls
	server    net.Addr
	buf       []byte
	user      string
	key       []byte
	realm     string
	nonce     string
	proto     byte // REQUESTED-TRANSPORT for allocate: 17 (UDP, the default) or 6 (TCP, RFC 6062)
}

func dialRaw(t *testing.T, r *testRelay, transport string) *rawClient {
	t.Helper()
	c := &rawClient{t: t, transport: transport, proto: 17}
	switch transport {
	case "udp":
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.pc, c.server = pc, net.UDPAddrFromAddrPort(r.addr)
	case "tcp":
		sc, err := net.Dial("tcp", r.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.sc = sc
	case "tls":
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.certPEM)
		sc, err := tls.Dial("tcp", r.tlsAddr.String(), &tls.Config{RootCAs: pool, ServerName: relayIP})
		if err != nil {
			t.Fatal(err)
		}
		c.sc = sc
	}
	t.Cleanup(c.close)
	return c
}

func (c *rawClient) close() {
	if c.pc != nil {
		c.pc.Close()
	}
	if c.sc != nil {
		c.sc.Close()
	}
}

func (c *rawClient) localAddr() net.Addr {
	if c.pc != nil {
		return c.pc.LocalAddr()
	}
	return c.sc.LocalAddr()
}

func (c *rawClient) send(b []byte) {
	c.t.Helper()
	var err error
	if c.pc != nil {
		_, err = c.pc.WriteTo(b, c.server)
	} else {
		_, err = c.sc.Write(b)
	}
	if err != nil {
		c.t.Fatal(err)
	}
}

// recv reads one STUN message or ChannelData frame.
func (c *rawClient) recv() []byte {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	if c.pc != nil {
		_ = c.pc.SetReadDeadline(deadline)
		buf := make([]byte, 2048)
		n, _, err := c.pc.ReadFrom(buf)
		if err != nil {
			c.t.Fatalf("%s: no answer from the relay: %v", c.transport, err)
		}
		return buf[:n]
	}
	_ = c.sc.SetReadDeadline(deadline)
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(c.sc, hdr); err != nil {
		c.t.Fatalf("%s: no answer from the relay: %v", c.transport, err)
	}
	n := int(binary.BigEndian.Uint16(hdr[2:4]))
	if hdr[0] < 0x40 {
		n += 16
	} else {
		n = (n + 3) &^ 3
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.sc, body); err != nil {
		c.t.Fatal(err)
	}
	return append(hdr, body...)
}

type rawAttr struct {
	typ stun.AttrType
	val []byte
}

func (a rawAttr) AddTo(m *stun.Message) error { m.Add(a.typ, a.val); return nil }

func transportAttr(proto byte) rawAttr {
	return rawAttr{stun.AttrRequestedTransport, []byte{proto, 0, 0, 0}}
}
func familyAttr(v6 bool) rawAttr {
	if v6 {
		return rawAttr{stun.AttrRequestedAddressFamily, []byte{2, 0, 0, 0}}
	}
	return rawAttr{stun.AttrRequestedAddressFamily, []byte{1, 0, 0, 0}}
}
func lifetimeAttr(sec uint32) rawAttr {
	return rawAttr{stun.AttrLifetime, binary.BigEndian.AppendUint32(nil, sec)}
}
func channelAttr(n uint16) rawAttr {
	return rawAttr{stun.AttrChannelNumber, []byte{byte(n >> 8), byte(n), 0, 0}}
}

type peerAttr netip.AddrPort

func (p peerAttr) AddTo(m *stun.Message) error {
	ap := netip.AddrPort(p)
	ip := net.IP(ap.Addr().AsSlice()) // 16 bytes for IPv4-mapped, so it stays mapped on the wire
	return stun.XORMappedAddress{IP: ip, Port: int(ap.Port())}.AddToAs(m, stun.AttrXORPeerAddress)
}

// do sends one request (authenticated once login has run) and returns the
// response to it, skipping indications and ChannelData.
func (c *rawClient) do(method stun.Method, attrs ...stun.Setter) *stun.Message {
	c.t.Helper()
	setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
	setters = append(setters, attrs...)
	if c.key != nil {
		setters = append(setters, stun.NewUsername(c.user), stun.NewRealm(c.realm), stun.NewNonce(c.nonce),
			stun.MessageIntegrity(c.key))
	}
	req := stun.MustBuild(setters...)
	c.send(req.Raw)
	for {
		b := c.recv()
		if b[0] >= 0x40 {
			continue
		}
		m := &stun.Message{Raw: b}
		if err := m.Decode(); err != nil {
			c.t.Fatalf("bad response: %v", err)
		}
		if m.TransactionID == req.TransactionID {
			return m
		}
	}
}

// errorCode returns the response's error code, 0 for success.
func errorCode(t *testing.T, m *stun.Message) (stun.ErrorCode, string) {
	t.Helper()
	if m.Type.Class == stun.ClassSuccessResponse {
		return 0, ""
	}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		t.Fatalf("error response without ERROR-CODE: %v", err)
	}
	return ec.Code, string(ec.Reason)
}

// allocate runs the 401 challenge and an Allocate with user/password.
func (c *rawClient) allocate(user, password string, attrs ...stun.Setter) *stun.Message {
	c.t.Helper()
	c.key = nil
	m := c.do(stun.MethodAllocate, append([]stun.Setter{transportAttr(c.proto)}, attrs...)...)
	code, reason := errorCode(c.t, m)
	if code != stun.CodeUnauthorized || reason == "" {
		c.t.Fatalf("unauthenticated Allocate: got %d %q, want 401 with a reason phrase", code, reason)
	}
	var realm stun.Realm
	var nonce stun.Nonce
	if err := realm.GetFrom(m); err != nil {
		c.t.Fatal(err)
	}
	if err := nonce.GetFrom(m); err != nil {
		c.t.Fatal(err)
	}
	c.login(user, password, realm.String(), nonce.String())
	return c.do(stun.MethodAllocate, append([]stun.Setter{transportAttr(c.proto)}, attrs...)...)
}

func (c *rawClient) login(user, password, realm, nonce string) {
	c.user, c.realm, c.nonce = user, realm, nonce
	c.key = stun.NewLongTermIntegrity(user, realm, password)
}

func relayedAddr(t *testing.T, m *stun.Message) netip.AddrPort {
	t.Helper()
	var a stun.XORMappedAddress
	if err := a.GetFromAs(m, stun.AttrXORRelayedAddress); err != nil {
		t.Fatalf("no XOR-RELAYED-ADDRESS: %v", err)
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}

func mustAllocate(t *testing.T, c *rawClient, user, password string, attrs ...stun.Setter) netip.AddrPort {
	t.Helper()
	m := c.allocate(user, password, attrs...)
	if code, reason := errorCode(t, m); code != 0 {
		t.Fatalf("Allocate as %s: %d %s", user, code, reason)
	}
	return relayedAddr(t, m)
}

// sendIndication sends data to peer through the allocation.
func (c *rawClient) sendIndication(peer netip.AddrPort, data []byte) {
	c.t.Helper()
	m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication),
		peerAttr(peer), rawAttr{stun.AttrData, data})
	c.send(m.Raw)
}

// recvData returns the next Data indication's payload and peer.
func (c *rawClient) recvData() ([]byte, netip.AddrPort) {
	c.t.Helper()
	for {
		b := c.recv()
		if b[0] >= 0x40 {
			n := int(binary.BigEndian.Uint16(b[2:4]))
			return b[4 : 4+n], netip.AddrPort{}
		}
		m := &stun.Message{Raw: b}
		if m.Decode() != nil || m.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
			continue
		}
		var data []byte
		for _, a := range m.Attributes {
			if a.Type == stun.AttrData {
				data = a.Value
			}
		}
		var p stun.XORMappedAddress
		if err := p.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
			c.t.Fatal(err)
		}
		ip, _ := netip.AddrFromSlice(p.IP)
		return data, netip.AddrPortFrom(ip.Unmap(), uint16(p.Port))
	}
}

// udpPeer is a plain UDP socket on 127.0.0.1 standing in for a remote peer.
func udpPeer(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readPeer(t *testing.T, c *net.UDPConn) ([]byte, netip.AddrPort) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("peer received nothing: %v", err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

func addrOf(c net.Conn) netip.AddrPort { return netx.AddrPortOf(c.LocalAddr()) }

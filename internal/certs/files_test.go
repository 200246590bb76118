package certs

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rendezvous-p2p/rendezvous/internal/service"
)

// testCA issues leaf certificates for the tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serialSeq atomic.Int64

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serialSeq.Add(1)),
		Subject:               pkix.Name{CommonName: "rendezvous test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a PEM certificate and key for name, and the certificate's serial.
func (ca *testCA) issue(t *testing.T, name string) (certPEM, keyPEM []byte, serial *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial = big.NewInt(serialSeq.Add(1))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(12 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), serial
}

// replace swaps a file the way certbot's deploy hooks and `install` do: a new
// file renamed over the old one.
func replace(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// serveEcho runs a TLS line-echo server on loopback with cfg until the test ends.
func serveEcho(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveEchoOn(t, ln, cfg)
}

func serveEchoOn(t *testing.T, ln net.Listener, cfg *tls.Config) string {
	t.Helper()
	tl := tls.NewListener(ln, cfg)
	t.Cleanup(func() { tl.Close() })
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

type client struct {
	conn *tls.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, addr, name string, pool *x509.CertPool) *client {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{conn: c, r: bufio.NewReader(c)}
}

func (c *client) serial() *big.Int { return c.conn.ConnectionState().PeerCertificates[0].SerialNumber }

// echo sends a line and checks it comes back: the connection still works.
func (c *client) echo(t *testing.T, line string) {
	t.Helper()
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, line+"\n"); err != nil {
		t.Fatalf("write on an established connection: %v", err)
	}
	got, err := c.r.ReadString('\n')
	if err != nil || strings.TrimSpace(got) != line {
		t.Fatalf("echo on an established connection: %q, %v", got, err)
	}
}

func writePair(t *testing.T, dir string, certPEM, keyPEM []byte) Config {
	t.Helper()
	cfg := Config{CertFile: filepath.Join(dir, "fullchain.pem"), KeyFile: filepath.Join(dir, "privkey.pem")}
	replace(t, cfg.KeyFile, keyPEM)
	replace(t, cfg.CertFile, certPEM)
	return cfg
}

func TestReplacedFilesServeNewHandshakesAndKeepOldConnections(t *testing.T) {
	ca := newTestCA(t)
	const name = "turn.example.test"
	certA, keyA, serialA := ca.issue(t, name)
	cfg := writePair(t, t.TempDir(), certA, keyA)
	reg := prometheus.NewRegistry()
	src, err := New(cfg, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveEcho(t, src.TLSConfig())

	old := dial(t, addr, name, ca.pool)
	if old.serial().Cmp(serialA) != 0 {
		t.Fatalf("first handshake got serial %v, want %v", old.serial(), serialA)
	}
	old.echo(t, "before")

	// Renewal: key first, then certificate, as a deploy hook would. No Reload call:
	// the stat on the next handshake notices.
	certB, keyB, serialB := ca.issue(t, name)
	replace(t, cfg.KeyFile, keyB)
	replace(t, cfg.CertFile, certB)

	fresh := dial(t, addr, name, ca.pool)
	if fresh.serial().Cmp(serialB) != 0 {
		t.Fatalf("handshake after replacing the files got serial %v, want the new %v", fresh.serial(), serialB)
	}
	old.echo(t, "after") // the established connection was not dropped
	fresh.echo(t, "new")
	if old.serial().Cmp(serialA) != 0 {
		t.Fatalf("old connection's certificate changed")
	}
	if got := testutil.ToFloat64(src.loads.WithLabelValues("files", "applied")); got != 2 {
		t.Errorf("applied loads = %v, want 2 (start and one change)", got)
	}
	leafB, _ := x509.ParseCertificate(mustDecodePEM(t, certB))
	if got := testutil.ToFloat64(src.notAfter); got != float64(leafB.NotAfter.Unix()) {
		t.Errorf("expiry gauge = %v, want %v", got, leafB.NotAfter.Unix())
	}
}

func TestHalfReplacedPairKeepsServingTheOldOne(t *testing.T) {
	ca := newTestCA(t)
	const name = "signal.example.test"
	certA, keyA, serialA := ca.issue(t, name)
	cfg := writePair(t, t.TempDir(), certA, keyA)
	src, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveEcho(t, src.TLSConfig())

	// A tool that writes the certificate first: for a moment the pair does not match.
	certB, keyB, serialB := ca.issue(t, name)
	replace(t, cfg.CertFile, certB)
	for range 3 {
		c := dial(t, addr, name, ca.pool)
		if c.serial().Cmp(serialA) != 0 {
			t.Fatalf("mismatched pair: served serial %v, want the old %v", c.serial(), serialA)
		}
	}
	if got := testutil.ToFloat64(src.loads.WithLabelValues("files", "refused")); got != 1 {
		t.Errorf("refused loads = %v, want 1 (a bad pair is tried once, not on every handshake)", got)
	}
	if err := src.Reload(); err == nil || !strings.Contains(err.Error(), "private key does not match public key") {
		t.Errorf("Reload of a mismatched pair: %v, want the mismatch named", err)
	}

	replace(t, cfg.KeyFile, keyB)
	if c := dial(t, addr, name, ca.pool); c.serial().Cmp(serialB) != 0 {
		t.Fatalf("after the key caught up: serial %v, want %v", c.serial(), serialB)
	}

	os.Remove(cfg.KeyFile)
	err = src.Reload()
	if err == nil || !strings.Contains(err.Error(), "key-file") {
		t.Fatalf("Reload with the key deleted: %v, want an error naming key-file", err)
	}
	if c := dial(t, addr, name, ca.pool); c.serial().Cmp(serialB) != 0 {
		t.Fatalf("a failed reload changed the served certificate")
	}
}

func TestReloadPicksUpSameSizeRewriteInPlace(t *testing.T) {
	ca := newTestCA(t)
	const name = "a.example.test"
	certA, keyA, _ := ca.issue(t, name)
	dir := t.TempDir()
	cfg := writePair(t, dir, certA, keyA)
	src, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	certB, keyB, serialB := ca.issue(t, name)
	// Rewritten in place (same inode): the explicit reload on SIGHUP always re-reads.
	if err := os.WriteFile(cfg.KeyFile, keyB, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.CertFile, certB, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := src.Certificate().Leaf.SerialNumber; got.Cmp(serialB) != 0 {
		t.Fatalf("after Reload: serial %v, want %v", got, serialB)
	}
}

func TestNewRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	certA, keyA, _ := ca.issue(t, "x.example.test")
	_, keyB, _ := ca.issue(t, "x.example.test")
	cases := []struct {
		name      string
		cert, key []byte
		want      string
	}{
		{"missing", nil, nil, "no such file"},
		{"mismatch", certA, keyB, "does not match"},
		{"garbage", []byte("not pem"), keyA, "failed to find any PEM data"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{CertFile: filepath.Join(dir, tc.name+".crt"), KeyFile: filepath.Join(dir, tc.name+".key")}
			if tc.cert != nil {
				os.WriteFile(cfg.CertFile, tc.cert, 0o600)
				os.WriteFile(cfg.KeyFile, tc.key, 0o600)
			}
			_, err := New(cfg, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	acme := func(domains ...string) Config {
		c := DefaultConfig()
		c.ACME.Domains = domains
		return c
	}
	cases := []struct {
		cfg  Config
		want string
	}{
		{DefaultConfig(), ""},
		{Config{CertFile: "a", KeyFile: "b"}, ""},
		{acme("rdv.example.com", "turn.example.com"), ""},
		{Config{CertFile: "a"}, "key-file: missing"},
		{Config{KeyFile: "b"}, "cert-file: missing"},
		{Config{CertFile: "a", KeyFile: "b", ACME: ACMEConfig{Domains: []string{"x.example.com"}, DirectoryURL: DefaultDirectoryURL}}, "acme.domains: set together with cert-file"},
		{acme("*.example.com"), "acme.domains[0]: \"*.example.com\": wildcard"},
		{acme("localhost"), "acme.domains[0]: \"localhost\": not a public DNS name"},
		{acme("192.0.2.1"), "an IP address"},
		{acme("a.example.com", "A.example.com"), "acme.domains[1]: \"A.example.com\" is listed twice"},
		{acme("bad_name.example.com"), "not a valid DNS name"},
		{Config{ACME: ACMEConfig{Domains: []string{"a.example.com"}, DirectoryURL: "http://ca.example/dir"}}, "acme.directory-url"},
		{Config{ACME: ACMEConfig{Domains: []string{"a.example.com"}, DirectoryURL: DefaultDirectoryURL, Email: "nobody"}}, "acme.email"},
		{Config{ACME: ACMEConfig{Domains: []string{"a.example.com"}, DirectoryURL: DefaultDirectoryURL, RenewBefore: -time.Hour}}, "acme.renew-before"},
	}
	for _, tc := range cases {
		err := tc.cfg.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: unexpected error %v", tc.cfg, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want it to contain %q", tc.cfg, err, tc.want)
		}
	}
	if DefaultConfig().Enabled() {
		t.Error("the default config turns TLS on")
	}
	if _, err := New(DefaultConfig(), Options{}); err == nil {
		t.Error("New with no certificate configured succeeded")
	}
}

func mustDecodePEM(t *testing.T, b []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("not PEM")
	}
	return block.Bytes
}

// The app runs the source beside the listeners as one of its services.
var _ service.Service = (*Source)(nil)

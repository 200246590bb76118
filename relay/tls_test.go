package relay

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"
)

// A certificate replaced on disk (as certbot renews it) is served on the next
// TURN/TLS handshake with no reload, and a connection made before keeps
// working: its allocation still relays.
func TestTLSCertificateFilesReplacedWithoutReload(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.1/32"} })
	handshake := func(trust []byte) error {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(trust)
		c, err := tls.Dial("tcp", r.tlsAddr.String(), &tls.Config{RootCAs: pool, ServerName: relayIP})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := handshake(r.certPEM); err != nil {
		t.Fatalf("first certificate: %v", err)
	}
	// An allocation over TLS made with the first certificate.
	old := pionClient(t, r, "tls", "alice", "alice-pw")
	relayConn, err := old.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer relayConn.Close()

	// Replace the files in place with a new key and certificate.
	newCert, newKey, newPEM := writeCert(t)
	cfg := r.srv.cfg
	for src, dst := range map[string]string{newCert: cfg.CertFile, newKey: cfg.KeyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".new", dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := handshake(newPEM); err != nil {
		t.Fatalf("after replacing the files, a new handshake does not get the new certificate: %v", err)
	}
	if err := handshake(r.certPEM); err == nil {
		t.Fatal("the old certificate is still served")
	}
	// The connection from before still works: relay a datagram through it.
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	if _, err := relayConn.WriteTo([]byte("still here"), peer.LocalAddr()); err != nil {
		t.Fatalf("old TLS connection broken by the certificate change: %v", err)
	}
	if got, _ := readRelay(t, peer); string(got) != "still here" {
		t.Fatalf("relayed over the old connection: %q", got)
	}
}

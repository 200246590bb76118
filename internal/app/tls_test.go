package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/config"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 with the given
// serial to cert/key files and returns it parsed.
func selfSigned(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "rendezvous test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	// Write to temporary names and rename, as certbot does, so a reader never sees half a pair.
	for path, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kb}} {
		if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

func TestHTTPSWithCertificateFilesAndReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := selfSigned(t, certFile, keyFile, 1)
	cfg := testConfig(t)
	cfg.TLS.CertFile, cfg.TLS.KeyFile = certFile, keyFile
	r := start(t, cfg, Options{Load: func() (c config.Config, err error) { return cfg, nil }})

	served := func(trust *x509.Certificate) (*big.Int, error) {
		pool := x509.NewCertPool()
		pool.AddCert(trust)
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + r.app.HTTPAddr().String() + "/healthz")
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("/healthz over HTTPS = %d", resp.StatusCode)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber, nil
	}
	if serial, err := served(first); err != nil || serial.Int64() != 1 {
		t.Fatalf("HTTPS with the first certificate: serial %v, %v", serial, err)
	}
	second := selfSigned(t, certFile, keyFile, 2)
	if err := r.app.Reload(); err != nil {
		t.Fatal(err)
	}
	if serial, err := served(second); err != nil || serial.Int64() != 2 {
		t.Fatalf("after replacing the files: serial %v, %v", serial, err)
	}
	// A broken pair is refused by the reload; the last good certificate stays.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.app.Reload(); err == nil {
		t.Fatal("reload accepted a broken key file")
	}
	if serial, err := served(second); err != nil || serial.Int64() != 2 {
		t.Fatalf("after a refused reload: serial %v, %v", serial, err)
	}
}

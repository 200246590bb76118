package certs

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// The wiring cmd/rendezvous uses for the signaling listener: net/http serving
// TLS from the source, HTTP/2 included, across a certificate change.
func TestHTTPSServerWithSource(t *testing.T) {
	ca := newTestCA(t)
	const name = "rdv.example.test"
	certA, keyA, serialA := ca.issue(t, name)
	cfg := writePair(t, t.TempDir(), certA, keyA)
	src, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) }),
		TLSConfig:         src.TLSConfig(),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		srv.Close()
		if err := <-done; err != http.ErrServerClosed {
			t.Errorf("ServeTLS: %v", err)
		}
	}()

	tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: name, RootCAs: ca.pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	url := "https://" + ln.Addr().String() + "/"
	get := func() (proto string, serial string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body), resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	proto, serial := get()
	if proto != "HTTP/2.0" || serial != serialA.String() {
		t.Fatalf("first request: %s with serial %s, want HTTP/2.0 with %v", proto, serial, serialA)
	}

	certB, keyB, serialB := ca.issue(t, name)
	replace(t, cfg.KeyFile, keyB)
	replace(t, cfg.CertFile, certB)
	// The pooled HTTP/2 connection keeps its certificate; a new connection gets the new one.
	if _, serial := get(); serial != serialA.String() {
		t.Errorf("the established HTTP/2 connection changed certificate: %s", serial)
	}
	tr.CloseIdleConnections()
	if _, serial := get(); serial != serialB.String() {
		t.Errorf("new connection after the change: serial %s, want %v", serial, serialB)
	}
}

package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/dns/dnsmessage"
)

// pebble is letsencrypt's test ACME server, run in-process on loopback.
type pebble struct {
	dirURL string
	caFile string         // the directory's HTTPS certificate, for acme.ca-file
	roots  *x509.CertPool // the CA's root, that issued certificates chain to
	close  func()
}

// startPebble runs pebble's web front end on 127.0.0.1:0; its validation
// authority resolves every name to 127.0.0.1 (through a loopback DNS server)
// and makes its TLS-ALPN-01 connections to tlsPort.
func startPebble(t *testing.T, tlsPort int) *pebble {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")      // validate at once, not after up to 15 s
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0") // no random badNonce rejections
	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() {
		logger = log.New(os.Stderr, "pebble ", log.Lmicroseconds)
	}
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	validator := va.New(logger, 0, tlsPort, false, startDNS(t), store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 1, 1)
	srv := httptest.NewTLSServer(front.Handler())
	t.Cleanup(srv.Close)

	caFile := filepath.Join(t.TempDir(), "pebble-wfe.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(authority.GetRootCert(0).Cert)
	return &pebble{dirURL: srv.URL + "/dir", caFile: caFile, roots: roots, close: srv.Close}
}

// startDNS answers every A query with 127.0.0.1 and everything else with no
// records, over TCP (pebble's resolver uses TCP).
func startDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				for {
					var n uint16
					if binary.Read(c, binary.BigEndian, &n) != nil {
						return
					}
					req := make([]byte, n)
					if _, err := io.ReadFull(c, req); err != nil {
						return
					}
					var msg dnsmessage.Message
					if msg.Unpack(req) != nil || len(msg.Questions) != 1 {
						return
					}
					q := msg.Questions[0]
					resp := dnsmessage.Message{
						Header:    dnsmessage.Header{ID: msg.ID, Response: true, Authoritative: true, RecursionDesired: msg.RecursionDesired},
						Questions: msg.Questions,
					}
					if q.Type == dnsmessage.TypeA {
						resp.Answers = []dnsmessage.Resource{{
							Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
							Body:   &dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}},
						}}
					}
					out, err := resp.Pack()
					if err != nil {
						return
					}
					c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(out))))
					c.Write(out)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		<-tick.C
	}
}

func TestACMEIssueRenewAndRestartFromCache(t *testing.T) {
	const name = "turn.example.com"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peb := startPebble(t, ln.Addr().(*net.TCPAddr).Port)

	var skew atomic.Int64 // the test's clock runs ahead of the real one by this much
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	stateDir := t.TempDir()
	cfg := DefaultConfig()
	cfg.ACME.Domains = []string{name}
	cfg.ACME.Email = "ops@example.com"
	cfg.ACME.DirectoryURL = peb.dirURL
	cfg.ACME.CAFile = peb.caFile
	src, err := New(cfg, Options{StateDir: stateDir, Now: now, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if src.Certificate() != nil {
		t.Fatal("a certificate before any issuance")
	}
	addr := serveEchoOn(t, ln, src.TLSConfig())
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	waitFor(t, "first ACME certificate", 60*time.Second, func() bool { return src.Certificate() != nil })
	first := dial(t, addr, name, peb.roots) // verifies the chain up to pebble's root
	serialA := first.serial()
	first.echo(t, "issued")
	leaf := first.conn.ConnectionState().PeerCertificates[0]
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != name {
		t.Fatalf("issued for %v, want [%s]", leaf.DNSNames, name)
	}
	if got := testutil.ToFloat64(src.notAfter); got != float64(leaf.NotAfter.Unix()) {
		t.Errorf("expiry gauge %v, want %v", got, leaf.NotAfter.Unix())
	}
	// A TURN or HTTP client negotiating its own ALPN is not refused over acme-tls/1.
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, RootCAs: peb.roots, NextProtos: []string{"stun.turn"}})
	if err != nil {
		t.Fatalf("handshake offering ALPN stun.turn: %v", err)
	}
	c.Close()

	// Move the clock past the renewal point (a third of the lifetime before
	// expiry) and ask for a check, as SIGHUP does.
	skew.Store(int64(time.Until(leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore)/3)) + time.Minute))
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "renewed certificate", 60*time.Second, func() bool {
		return src.Certificate().Leaf.SerialNumber.Cmp(serialA) != 0
	})
	renewed := dial(t, addr, name, peb.roots)
	serialB := renewed.serial()
	if serialB.Cmp(serialA) == 0 {
		t.Fatal("handshake after renewal still gets the first certificate")
	}
	first.echo(t, "still here") // renewal dropped no connection
	if got := testutil.ToFloat64(src.loads.WithLabelValues("acme", "applied")); got != 2 {
		t.Errorf("acme applied = %v, want 2", got)
	}

	// A restart (new Source, CA gone) serves the stored certificate at once.
	cancel()
	<-ran
	ran <- nil
	peb.close()
	again, err := New(cfg, Options{StateDir: stateDir, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Certificate(); got == nil || got.Leaf.SerialNumber.Cmp(serialB) != 0 {
		t.Fatalf("after restart: %v, want the stored renewed certificate %v", serialOf(got), serialB)
	}
	for _, f := range []string{"account.key", "key.pem"} {
		matches, _ := filepath.Glob(filepath.Join(stateDir, "acme", "*", f))
		if len(matches) != 1 {
			t.Fatalf("%s not stored in the state directory: %v", f, matches)
		}
		if st, _ := os.Stat(matches[0]); st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", matches[0], st.Mode().Perm())
		}
	}
}

func serialOf(c *tls.Certificate) *big.Int {
	if c == nil {
		return nil
	}
	return c.Leaf.SerialNumber
}

func TestACMEChallengeForUnknownNameIsRefused(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ACME.Domains = []string{"rdv.example.com"}
	src, err := New(cfg, Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveEcho(t, src.TLSConfig())
	_, err = tls.Dial("tcp", addr, &tls.Config{ServerName: "other.example.com", InsecureSkipVerify: true, NextProtos: []string{"acme-tls/1"}})
	if err == nil {
		t.Fatal("a TLS-ALPN-01 handshake with no pending challenge succeeded")
	}
	_, err = tls.Dial("tcp", addr, &tls.Config{ServerName: "rdv.example.com", InsecureSkipVerify: true})
	if err == nil {
		t.Fatal("a handshake succeeded before any certificate was issued")
	}
}

// With the CA unreachable, Run logs, counts the failure, backs off, and still
// returns as soon as its context ends.
func TestACMEUnreachableCABacksOffAndStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens here now: connections are refused at once
	cfg := DefaultConfig()
	cfg.ACME.Domains = []string{"rdv.example.com"}
	cfg.ACME.DirectoryURL = "https://" + dead + "/dir"
	src, err := New(cfg, Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- src.Run(ctx) }()
	waitFor(t, "a counted failure", 10*time.Second, func() bool {
		return testutil.ToFloat64(src.loads.WithLabelValues("acme", "refused")) >= 1
	})
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended (stuck in the retry backoff)")
	}
	if src.Certificate() != nil {
		t.Fatal("a certificate without a CA")
	}
}

func TestFilesRunReturnsWhenContextEnds(t *testing.T) {
	ca := newTestCA(t)
	certA, keyA, _ := ca.issue(t, "a.example.test")
	src, err := New(writePair(t, t.TempDir(), certA, keyA), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- src.Run(ctx) }()
	select {
	case <-src.Ready():
	default:
		t.Fatal("Ready not closed: the source needs no listener")
	}
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

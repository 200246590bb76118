package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/acme"
)

// Options are the source's collaborators.
type Options struct {
	Logger *slog.Logger
	// Registerer receives the certificate metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// StateDir keeps the ACME account key and certificates (in <StateDir>/acme).
	// Required with ACME.
	StateDir string
	// Now is the clock that decides renewals; nil is time.Now.
	Now func() time.Time
}

// Source hands out the current certificate to TLS handshakes. It is safe for
// concurrent use; one Source serves every TLS listener.
type Source struct {
	cfg  Config
	opts Options
	log  *slog.Logger

	current atomic.Pointer[served]

	// files mode
	filesMu sync.Mutex // one re-read at a time
	failed  fileState  // the last pair that did not load, so it is not retried (and logged) per handshake

	// ACME mode
	acme *acmeIssuer

	notAfter prometheus.Gauge
	loads    *prometheus.CounterVec
}

// served is a certificate in use and where it came from.
type served struct {
	cert  *tls.Certificate
	files fileState // files mode: the stat of the pair this was read from
}

// fileState identifies a version of the cert and key files.
type fileState struct{ cert, key fileID }

type fileID struct {
	size, mtime int64
	dev, ino    uint64
}

// New validates cfg and loads the certificate files, or the cached ACME
// certificate, so that a bad or missing pair fails at start (and in
// `serve --check`). It does not contact an ACME CA: Run does.
func New(cfg Config, opts Options) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Enabled() {
		return nil, errors.New("no certificate configured: set cert-file and key-file, or acme.domains")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Source{cfg: cfg, opts: opts, log: opts.Logger.With("service", "tls")}
	s.notAfter = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "rendezvous_tls_certificate_expiry_timestamp_seconds",
		Help: "When the served TLS certificate expires (Unix time); 0 while there is none.",
	})
	s.loads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rendezvous_tls_certificate_loads_total",
		Help: "Certificates put in service (applied) or refused (the old one kept serving), by source: files or acme.",
	}, []string{"source", "result"})
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(s.notAfter); err != nil {
			return nil, err
		}
		if err := opts.Registerer.Register(s.loads); err != nil {
			return nil, err
		}
	}
	if cfg.UsesACME() {
		if opts.StateDir == "" {
			return nil, errors.New("acme: no state directory to keep the account and certificates in")
		}
		iss, err := newACMEIssuer(s, cfg.ACME, opts.StateDir)
		if err != nil {
			return nil, err
		}
		s.acme = iss
		return s, nil
	}
	if err := s.loadFiles(true); err != nil {
		return nil, err
	}
	return s, nil
}

// TLSConfig is a fresh server config that takes its certificate from the
// source. Callers set their own NextProtos (net/http adds h2 and http/1.1;
// TURN may offer "stun.turn"): with ACME, a TLS-ALPN-01 validation (a hello
// offering only "acme-tls/1") is answered by a config of its own, so the
// callers' protocols never include "acme-tls/1".
func (s *Source) TLSConfig() *tls.Config {
	c := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.GetCertificate,
	}
	if s.acme != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if !isACMEValidation(hello) {
				return nil, nil // the caller's config
			}
			cert, err := s.acme.challengeCert(hello.ServerName)
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*cert},
				NextProtos:   []string{acme.ALPNProto},
			}, nil
		}
	}
	return c
}

func isACMEValidation(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto
}

// GetCertificate is tls.Config.GetCertificate: the current certificate, after
// checking whether the files changed (files mode).
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.acme != nil {
		if isACMEValidation(hello) {
			return s.acme.challengeCert(hello.ServerName)
		}
	} else {
		_ = s.loadFiles(false) // a failure is logged once and the old pair keeps serving
	}
	cur := s.current.Load()
	if cur == nil {
		return nil, errors.New("no TLS certificate yet (ACME issuance has not completed)")
	}
	return cur.cert, nil
}

// Certificate is the certificate served now (nil before the first ACME issuance).
func (s *Source) Certificate() *tls.Certificate {
	if cur := s.current.Load(); cur != nil {
		return cur.cert
	}
	return nil
}

// Reload re-reads the certificate files now (SIGHUP); a pair that does not
// load is refused with an error and the old one keeps serving. With ACME it
// asks Run to check the stored certificate and renew it if it is due, and
// returns at once.
func (s *Source) Reload() error {
	if s.acme != nil {
		s.acme.poke()
		return nil
	}
	s.filesMu.Lock()
	s.failed = fileState{} // an explicit reload retries even a pair that failed before
	s.filesMu.Unlock()
	return s.loadFiles(true)
}

// Name implements service.Service.
func (s *Source) Name() string { return "tls" }

// Ready implements service.Service: the source needs no listener of its own.
func (s *Source) Ready() <-chan struct{} { return closedChan }

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Run obtains and renews ACME certificates until ctx ends; with certificate
// files it only waits for ctx. It returns nil when ctx ends.
func (s *Source) Run(ctx context.Context) error {
	if s.acme == nil {
		<-ctx.Done()
		return nil
	}
	s.acme.run(ctx)
	return nil
}

// put makes cert the served certificate.
func (s *Source) put(cert *tls.Certificate, files fileState) {
	s.current.Store(&served{cert: cert, files: files})
	s.notAfter.Set(float64(cert.Leaf.NotAfter.Unix()))
}

func statID(path string) (fileID, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{size: st.Size(), mtime: st.ModTime().UnixNano()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(sys.Dev), sys.Ino
	}
	return id, nil
}

// loadFiles re-reads the pair when its stat changed (or always when force).
func (s *Source) loadFiles(force bool) error {
	var now fileState
	var err error
	if now.cert, err = statID(s.cfg.CertFile); err != nil {
		return s.refuse(force, now, fmt.Errorf("cert-file: %w", err))
	}
	if now.key, err = statID(s.cfg.KeyFile); err != nil {
		return s.refuse(force, now, fmt.Errorf("key-file: %w", err))
	}
	if cur := s.current.Load(); !force && cur != nil && cur.files == now {
		return nil
	}
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	if cur := s.current.Load(); !force && (cur != nil && cur.files == now || s.failed == now) {
		return nil
	}
	cert, err := loadPair(s.cfg.CertFile, s.cfg.KeyFile)
	if err != nil {
		s.failed = now
		return s.refuseLocked(force, err)
	}
	prev := s.current.Load()
	s.put(cert, now)
	s.failed = fileState{}
	s.loads.WithLabelValues("files", "applied").Inc()
	if prev != nil {
		s.log.Info("TLS certificate reloaded", "file", s.cfg.CertFile, "subject", cert.Leaf.Subject.String(),
			"names", cert.Leaf.DNSNames, "not_after", cert.Leaf.NotAfter)
	}
	if s.opts.Now().After(cert.Leaf.NotAfter) {
		s.log.Warn("TLS certificate has expired; clients will refuse it", "file", s.cfg.CertFile, "not_after", cert.Leaf.NotAfter)
	}
	return nil
}

// refuse records a stat failure (e.g. a file replaced by delete-then-create).
func (s *Source) refuse(force bool, st fileState, err error) error {
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	if !force && s.failed == st && s.current.Load() != nil {
		return err
	}
	s.failed = st
	return s.refuseLocked(force, err)
}

func (s *Source) refuseLocked(force bool, err error) error {
	s.loads.WithLabelValues("files", "refused").Inc()
	if s.current.Load() != nil {
		s.log.Warn("TLS certificate files not reloaded; the previous certificate keeps serving", "error", err, "explicit", force)
	}
	return err
}

// loadPair reads a PEM chain and its key and checks they belong together.
func loadPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("cert-file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("key-file: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("cert-file %s: %w", certFile, err)
		}
	}
	return &cert, nil
}

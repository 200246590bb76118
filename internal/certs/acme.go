package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
)

// acmeIssuer obtains and renews the certificate for cfg.Domains.
//
// On disk, in <state>/acme/<directory host>/ (so staging and production never mix):
//
//	account.key   the ACME account's ECDSA key (0600)
//	cert.pem      the certificate chain, leaf first
//	key.pem       the certificate's ECDSA key (0600)
type acmeIssuer struct {
	src     *Source
	cfg     ACMEConfig
	dir     string
	domains []string // lower case, as validated
	client  *acme.Client
	wake    chan struct{}

	mu         sync.Mutex
	challenges map[string]*tls.Certificate // server name → TLS-ALPN-01 certificate
}

// Backoff between failed issuance attempts: the CA's rate limits punish hammering.
var (
	retryMin = time.Minute
	retryMax = time.Hour
	// checkEvery bounds how long Run sleeps, so a clock jump or a deleted file is noticed.
	checkEvery = 12 * time.Hour
)

func newACMEIssuer(src *Source, cfg ACMEConfig, stateDir string) (*acmeIssuer, error) {
	u, err := url.Parse(cfg.DirectoryURL)
	if err != nil {
		return nil, fmt.Errorf("acme.directory-url: %w", err)
	}
	host := strings.NewReplacer(":", "_", "/", "_").Replace(u.Host)
	iss := &acmeIssuer{
		src:        src,
		cfg:        cfg,
		dir:        filepath.Join(stateDir, "acme", host),
		wake:       make(chan struct{}, 1),
		challenges: map[string]*tls.Certificate{},
	}
	for _, d := range cfg.Domains {
		iss.domains = append(iss.domains, strings.ToLower(strings.TrimSuffix(d, ".")))
	}
	httpClient := &http.Client{Timeout: 30 * time.Second}
	if cfg.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pemData, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("acme.ca-file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("acme.ca-file: %s holds no PEM certificate", cfg.CAFile)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		httpClient.Transport = tr
	}
	if err := os.MkdirAll(iss.dir, 0o700); err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	key, err := loadOrCreateKey(filepath.Join(iss.dir, "account.key"))
	if err != nil {
		return nil, fmt.Errorf("acme account key: %w", err)
	}
	iss.client = &acme.Client{Key: key, DirectoryURL: cfg.DirectoryURL, HTTPClient: httpClient, UserAgent: "rendezvous"}
	if cert, err := loadPair(iss.certPath(), iss.keyPath()); err == nil && iss.covers(cert.Leaf) {
		src.put(cert, fileState{})
		src.log.Info("ACME certificate loaded from the state directory", "names", cert.Leaf.DNSNames, "not_after", cert.Leaf.NotAfter)
	}
	return iss, nil
}

func (a *acmeIssuer) certPath() string { return filepath.Join(a.dir, "cert.pem") }
func (a *acmeIssuer) keyPath() string  { return filepath.Join(a.dir, "key.pem") }

// covers reports whether leaf names exactly the configured domains.
func (a *acmeIssuer) covers(leaf *x509.Certificate) bool {
	names := slices.Clone(leaf.DNSNames)
	for i := range names {
		names[i] = strings.ToLower(names[i])
	}
	want := slices.Clone(a.domains)
	slices.Sort(names)
	slices.Sort(want)
	return slices.Equal(slices.Compact(names), slices.Compact(want))
}

func (a *acmeIssuer) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// renewAt is when the served certificate is due for renewal (zero: now).
func (a *acmeIssuer) renewAt() time.Time {
	cur := a.src.current.Load()
	if cur == nil {
		return time.Time{}
	}
	leaf := cur.cert.Leaf
	before := a.cfg.RenewBefore
	if before == 0 {
		before = leaf.NotAfter.Sub(leaf.NotBefore) / 3
	}
	return leaf.NotAfter.Add(-before)
}

// run issues when there is no certificate, renews when one is due, and
// retries failures with a backoff, until ctx ends.
func (a *acmeIssuer) run(ctx context.Context) {
	var backoff time.Duration
	for {
		var wait time.Duration
		if !a.src.opts.Now().Before(a.renewAt()) {
			if err := a.obtain(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				backoff = min(max(2*backoff, retryMin), retryMax)
				a.src.loads.WithLabelValues("acme", "refused").Inc()
				a.src.log.Error("ACME certificate request failed; retrying", "domains", a.domains, "error", err, "retry_in", backoff)
				wait = backoff
			} else {
				backoff = 0
			}
		}
		if wait == 0 {
			wait = min(checkEvery, max(a.renewAt().Sub(a.src.opts.Now()), time.Second))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-a.wake: // Reload (SIGHUP): check now, and retry a failure at once
			t.Stop()
			backoff = 0
		case <-t.C:
		}
	}
}

// obtain runs one ACME order for the domains and puts the certificate in service.
func (a *acmeIssuer) obtain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	renewing := a.src.current.Load() != nil
	a.src.log.Info("requesting an ACME certificate", "domains", a.domains, "directory", a.cfg.DirectoryURL, "renewal", renewing)

	acct := &acme.Account{}
	if a.cfg.Email != "" {
		acct.Contact = []string{"mailto:" + a.cfg.Email}
	}
	if _, err := a.client.Register(ctx, acct, acme.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		return fmt.Errorf("registering the ACME account: %w", err)
	}
	order, err := a.client.AuthorizeOrder(ctx, acme.DomainIDs(a.domains...))
	if err != nil {
		return fmt.Errorf("creating the order: %w", err)
	}
	for _, u := range order.AuthzURLs {
		if err := a.authorize(ctx, u); err != nil {
			return err
		}
	}
	if order, err = a.client.WaitOrder(ctx, order.URI); err != nil {
		return fmt.Errorf("waiting for the order: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: a.domains[0]},
		DNSNames: a.domains,
	}, key)
	if err != nil {
		return err
	}
	der, _, err := a.client.CreateCertFromOrder(ctx, order, csr, true)
	if err != nil {
		return fmt.Errorf("finalizing the order: %w", err)
	}
	cert, err := a.store(der, key)
	if err != nil {
		return err
	}
	a.src.put(cert, fileState{})
	a.src.loads.WithLabelValues("acme", "applied").Inc()
	a.src.log.Info("ACME certificate obtained", "names", cert.Leaf.DNSNames, "not_after", cert.Leaf.NotAfter, "renew_at", a.renewAt())
	return nil
}

// authorize proves control of one identifier with TLS-ALPN-01.
func (a *acmeIssuer) authorize(ctx context.Context, authzURL string) error {
	authz, err := a.client.GetAuthorization(ctx, authzURL)
	if err != nil {
		return fmt.Errorf("fetching the authorization: %w", err)
	}
	if authz.Status == acme.StatusValid {
		return nil
	}
	name := authz.Identifier.Value
	var chal *acme.Challenge
	for _, c := range authz.Challenges {
		if c.Type == "tls-alpn-01" {
			chal = c
		}
	}
	if chal == nil {
		return fmt.Errorf("%s: the CA offers no tls-alpn-01 challenge", name)
	}
	cert, err := a.client.TLSALPN01ChallengeCert(chal.Token, name)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.challenges[strings.ToLower(name)] = &cert
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.challenges, strings.ToLower(name))
		a.mu.Unlock()
	}()
	if _, err := a.client.Accept(ctx, chal); err != nil {
		return fmt.Errorf("%s: accepting the challenge: %w", name, err)
	}
	if _, err := a.client.WaitAuthorization(ctx, authz.URI); err != nil {
		return fmt.Errorf("%s: validation failed (is port 443 of %s forwarded to a rendezvous TLS listener?): %w", name, name, err)
	}
	return nil
}

func (a *acmeIssuer) challengeCert(serverName string) (*tls.Certificate, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.challenges[strings.ToLower(serverName)]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("no pending tls-alpn-01 challenge for %q", serverName)
}

// store writes the chain and key (key first, so a crash never leaves a
// certificate whose key is missing) and returns them as a tls.Certificate.
func (a *acmeIssuer) store(der [][]byte, key *ecdsa.PrivateKey) (*tls.Certificate, error) {
	if len(der) == 0 {
		return nil, errors.New("the CA returned an empty certificate chain")
	}
	leaf, err := x509.ParseCertificate(der[0])
	if err != nil {
		return nil, fmt.Errorf("the CA's certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	var chain []byte
	for _, b := range der {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b})...)
	}
	if err := writeFileAtomic(a.keyPath(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(a.certPath(), chain); err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}, nil
}

func loadOrCreateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%s: not PEM", path)
		}
		return x509.ParseECPrivateKey(block.Bytes)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
		return nil, err
	}
	return key, nil
}

// writeFileAtomic writes data (mode 0600) by rename, so readers see the old
// file or the new one, never half of one.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

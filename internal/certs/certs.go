// Package certs is the TLS certificate source of `rendezvous serve`: one
// Source serves the certificate of the signaling HTTPS listener and of the
// TURN TLS listener, from either
//
//   - certificate files (cert-file, key-file): re-read when they change, checked
//     by a stat on every handshake, and on SIGHUP (Reload). A renewal by certbot
//     or any tool that replaces the files is picked up with no restart and no
//     dropped connection: established TLS connections keep the certificate they
//     negotiated, new handshakes get the new one. A half-written pair (new
//     certificate, old key) is refused and the old pair keeps serving until
//     the files are consistent again; or
//   - ACME (acme.domains): certificates from Let's Encrypt or any RFC 8555 CA,
//     validated with TLS-ALPN-01 on the TLS listeners themselves (so one of them
//     must be reachable on port 443 of every domain), kept in the state
//     directory and renewed in the background (Run) a third of their lifetime
//     before they expire.
//
// Wiring (internal/app): one Source for every TLS listener, run as a service.
//
//	src, err := certs.New(cfg.TLS, certs.Options{Logger: log, Registerer: registry, StateDir: st.Path()})
//	services = append(services, src)              // Run: ACME issuance and renewal until ctx ends
//	httpSrv.TLSConfig = src.TLSConfig(); httpSrv.ServeTLS(ln, "", "")   // HTTPS (h2 added by net/http)
//	turnLn := tls.NewListener(tcpLn, src.TLSConfig())                   // TURN over TLS
//	on SIGHUP: src.Reload()                       // re-read files now; ACME: check renewal now
package certs

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// DefaultDirectoryURL is Let's Encrypt's production ACME directory.
const DefaultDirectoryURL = "https://acme-v02.api.letsencrypt.org/directory"

// Config is the `tls` section. Empty (no files, no ACME domains) means TLS is
// off. Files and ACME are exclusive.
type Config struct {
	// CertFile is a PEM certificate chain (leaf first), e.g. certbot's fullchain.pem.
	CertFile string `yaml:"cert-file"`
	// KeyFile is the PEM private key of CertFile's leaf.
	KeyFile string     `yaml:"key-file"`
	ACME    ACMEConfig `yaml:"acme"`
}

// ACMEConfig is the `tls.acme` section.
type ACMEConfig struct {
	// Domains are the names the certificate covers; each must resolve to this
	// server, whose TLS listener must answer on port 443 for TLS-ALPN-01.
	Domains []string `yaml:"domains"`
	// Email is given to the CA for expiry notices (optional).
	Email string `yaml:"email"`
	// DirectoryURL is the CA's ACME directory (default Let's Encrypt production).
	DirectoryURL string `yaml:"directory-url"`
	// CAFile is an extra PEM root to trust for the directory's HTTPS, for a
	// private CA (e.g. step-ca or pebble). The system roots stay trusted.
	CAFile string `yaml:"ca-file"`
	// RenewBefore renews this long before expiry; 0 means a third of the
	// certificate's lifetime (30 days for Let's Encrypt's 90-day certificates).
	RenewBefore time.Duration `yaml:"renew-before"`
}

// DefaultConfig is TLS off, with Let's Encrypt as the ACME CA once domains are set.
func DefaultConfig() Config {
	return Config{ACME: ACMEConfig{DirectoryURL: DefaultDirectoryURL}}
}

// Enabled reports whether the config asks for TLS at all.
func (c Config) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" || len(c.ACME.Domains) > 0 }

// UsesACME reports whether certificates come from ACME.
func (c Config) UsesACME() bool { return len(c.ACME.Domains) > 0 }

// Validate names the bad key, relative to the section.
func (c Config) Validate() error {
	var errs []error
	switch {
	case (c.CertFile == "") != (c.KeyFile == ""):
		if c.CertFile == "" {
			errs = append(errs, errors.New("cert-file: missing; key-file is set, and a key needs its certificate"))
		} else {
			errs = append(errs, errors.New("key-file: missing; cert-file is set, and a certificate needs its key"))
		}
	case c.CertFile != "" && c.UsesACME():
		errs = append(errs, errors.New("acme.domains: set together with cert-file; use certificate files or ACME, not both"))
	}
	seen := map[string]bool{}
	for i, d := range c.ACME.Domains {
		if err := checkDomain(d); err != nil {
			errs = append(errs, fmt.Errorf("acme.domains[%d]: %w", i, err))
		}
		if seen[strings.ToLower(d)] {
			errs = append(errs, fmt.Errorf("acme.domains[%d]: %q is listed twice", i, d))
		}
		seen[strings.ToLower(d)] = true
	}
	if c.UsesACME() {
		u, err := url.Parse(c.ACME.DirectoryURL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("acme.directory-url: %q is not an https:// URL", c.ACME.DirectoryURL))
		}
	}
	if c.ACME.Email != "" && (!strings.Contains(c.ACME.Email, "@") || strings.ContainsAny(c.ACME.Email, " \t,<>")) {
		errs = append(errs, fmt.Errorf("acme.email: %q is not an email address", c.ACME.Email))
	}
	if c.ACME.RenewBefore < 0 || c.ACME.RenewBefore > 365*24*time.Hour {
		errs = append(errs, fmt.Errorf("acme.renew-before: %v is out of range [0, 8760h]", c.ACME.RenewBefore))
	}
	return errors.Join(errs...)
}

// checkDomain accepts a DNS name an ACME CA can validate with TLS-ALPN-01:
// no wildcard (that needs DNS-01), no IP address, at least one dot.
func checkDomain(d string) error {
	switch {
	case d == "":
		return errors.New("empty name")
	case strings.HasPrefix(d, "*."):
		return fmt.Errorf("%q: wildcard names need the DNS-01 challenge, which rendezvous does not do; list each name", d)
	case !strings.Contains(strings.Trim(d, "."), "."):
		return fmt.Errorf("%q: not a public DNS name (it has no dot)", d)
	case len(d) > 253:
		return fmt.Errorf("%q: longer than 253 characters", d)
	}
	for _, label := range strings.Split(strings.TrimSuffix(d, "."), ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") ||
			strings.IndexFunc(label, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-')
			}) >= 0 {
			return fmt.Errorf("%q: not a valid DNS name", d)
		}
	}
	if net.ParseIP(strings.TrimSuffix(d, ".")) != nil {
		return fmt.Errorf("%q: an IP address, not a DNS name", d)
	}
	return nil
}

package certs

import (
	"net"
	"strings"
	"testing"
)

// FuzzValidateDomain: Validate never panics on a domain, and what it accepts
// is a dotted DNS name of letters, digits and hyphens, never an IP address
// or a wildcard (what an ACME CA can validate with TLS-ALPN-01).
func FuzzValidateDomain(f *testing.F) {
	for _, s := range []string{"rdv.example.com", "a.b", "*.example.com", "localhost", "192.0.2.1", "::1",
		"-a.example.com", "a..b", "xn--bcher-kva.example", "rdv.example.com.", "1.2.3.4.", strings.Repeat("a", 64) + ".com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d string) {
		cfg := DefaultConfig()
		cfg.ACME.Domains = []string{d}
		if cfg.Validate() != nil {
			return
		}
		trimmed := strings.TrimSuffix(d, ".")
		if net.ParseIP(trimmed) != nil || strings.HasPrefix(d, "*") || !strings.Contains(trimmed, ".") || len(d) > 253 {
			t.Fatalf("accepted %q", d)
		}
		for _, r := range trimmed {
			if !(r == '.' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				t.Fatalf("accepted %q with %q", d, r)
			}
		}
	})
}

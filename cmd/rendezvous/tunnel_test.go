package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad tunnel and relay flags fail before any network I/O, with a message
// that says what to give instead.
func TestTunnelFlagErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	const srv = "http://127.0.0.1:9"
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"tunnel", "--create", "--forward", "udp:127.0.0.1:1"}, "--server is required"},
		{[]string{"tunnel", "--server", srv, "--forward", "udp:127.0.0.1:1"}, "either --create (host) or --room CODE"},
		{[]string{"tunnel", "--server", srv, "--create"}, "either --forward udp:HOST:PORT"},
		{[]string{"tunnel", "--server", srv, "--create", "--forward", "udp:127.0.0.1:1", "--listen", "udp:127.0.0.1:2"}, "either --forward"},
		{[]string{"tunnel", "--server", srv, "--create", "--forward", "tcp:127.0.0.1:1"}, "must look like udp:HOST:PORT"},
		{[]string{"tunnel", "--server", srv, "--room", "ABC", "--listen", "udp:127.0.0.1:notaport"}, "--listen:"},
		{[]string{"tunnel", "--server", srv, "--create", "--forward", "udp:127.0.0.1:1", "--relay-ca", notPEM}, "holds no PEM certificate"},
		{[]string{"connect", "--server", srv, "--create", "--relay-ca", filepath.Join(dir, "missing.pem")}, "--relay-ca:"},
	}
	for _, tc := range cases {
		out, err := run(t, dir, tc.args...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("rendezvous %s: err=%v, output %q, want it to contain %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
}

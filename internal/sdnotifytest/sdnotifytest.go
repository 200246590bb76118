// Package sdnotifytest is a fake systemd notification socket for tests: it
// records every READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1 a process sends.
package sdnotifytest

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Socket listens on a unixgram socket; point NOTIFY_SOCKET at Path.
type Socket struct {
	Path string
	msgs chan string
}

// New creates the socket in a temporary directory and closes it at cleanup.
func New(t testing.TB) *Socket {
	t.Helper()
	// sun_path is at most 108 bytes; t.TempDir() can be longer.
	dir, err := makeShortDir(t)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &Socket{Path: path, msgs: make(chan string, 1024)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				close(s.msgs)
				return
			}
			s.msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return s
}

// Setenv points this process's NOTIFY_SOCKET at the socket (for in-process tests).
func (s *Socket) Setenv(t testing.TB) { t.Setenv("NOTIFY_SOCKET", s.Path) }

// Next waits up to timeout for the next message and returns its first line
// ("READY=1", "RELOADING=1", ...). It fails the test on timeout.
func (s *Socket) Next(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			t.Fatal("notify socket closed")
		}
		first, _, _ := strings.Cut(m, "\n")
		return first
	case <-time.After(timeout):
		t.Fatalf("no systemd notification within %v", timeout)
		return ""
	}
}

// Expect waits for want, skipping WATCHDOG=1 pings unless want is the ping,
// and fails on any other message in between.
func (s *Socket) Expect(t testing.TB, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.Next(t, time.Until(deadline))
		if got == want {
			return
		}
		if got == "WATCHDOG=1" {
			continue
		}
		t.Fatalf("systemd notification %q, want %q", got, want)
	}
}

func makeShortDir(t testing.TB) (string, error) {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir, nil
}

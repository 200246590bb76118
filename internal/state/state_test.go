package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSecretIsGeneratedOnceAndPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "state")
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := d.Secret("turn-secret")
	if err != nil {
		t.Fatal(err)
	}
	if len(s1) != 64 {
		t.Errorf("secret %q: want 64 hex characters", s1)
	}
	st, err := os.Stat(filepath.Join(dir, "turn-secret"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("secret file mode %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(dir); dst.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, want 0700", dst.Mode().Perm())
	}
	// A second process (re-open) reads the same secret.
	d2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := d2.Secret("turn-secret")
	if err != nil || s2 != s1 {
		t.Fatalf("second read = %q, %v; want %q", s2, err, s1)
	}
	other, err := d2.Secret("join-token-secret")
	if err != nil || other == s1 {
		t.Fatalf("distinct secrets must differ: %q %v", other, err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestSecretReadableByOthersIsRefused(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d.Path(), "s")
	if err := os.WriteFile(p, []byte(strings.Repeat("a", 64)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Secret("s"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Secret on a 0644 file = %v, want a refusal telling to chmod 600", err)
	}
}

func TestDefaultDirPrefersSystemd(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/rendezvous:/var/lib/other")
	if got := DefaultDir(); got != "/var/lib/rendezvous" {
		t.Errorf("DefaultDir = %q", got)
	}
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", "/tmp/xdg")
	if got := DefaultDir(); got != "/tmp/xdg/rendezvous" {
		t.Errorf("DefaultDir = %q", got)
	}
}

func TestDefaultDirForRootIsTheServiceDir(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/someone")
	want := "/home/someone/.local/state/rendezvous"
	if os.Geteuid() == 0 {
		want = SystemDir
	}
	if got := DefaultDir(); got != want {
		t.Errorf("DefaultDir = %q, want %q", got, want)
	}
}

func TestReadOnlyNeverCreates(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadOnly().Secret("turn-secret"); err == nil {
		t.Fatal("ReadOnly returned a secret that does not exist")
	}
	if _, err := os.Stat(filepath.Join(d.Path(), "turn-secret")); !os.IsNotExist(err) {
		t.Fatal("ReadOnly created the secret file")
	}
	want, _ := d.Secret("turn-secret")
	if got, err := d.ReadOnly().Secret("turn-secret"); err != nil || got != want {
		t.Fatalf("ReadOnly = %q, %v; want the existing %q", got, err, want)
	}
}

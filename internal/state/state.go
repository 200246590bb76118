// Package state is the daemon's state directory: secrets generated on first
// start and kept, so a restart keeps issued credentials valid.
package state

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// SystemDir is the state directory of the system service (systemd's
// StateDirectory=rendezvous).
const SystemDir = "/var/lib/rendezvous"

// DefaultDir is where state lives when no --state-dir is given: systemd's
// $STATE_DIRECTORY (StateDirectory=), else $XDG_STATE_HOME/rendezvous, else
// for root the system service's /var/lib/rendezvous (so `rendezvous creds`
// run by an administrator signs with the daemon's secret), else
// ~/.local/state/rendezvous.
func DefaultDir() string {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		d, _, _ = strings.Cut(d, ":")
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "rendezvous")
	}
	if os.Geteuid() == 0 {
		return SystemDir
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" && home != "/" {
		return filepath.Join(home, ".local", "state", "rendezvous")
	}
	return SystemDir
}

// Dir is an opened state directory.
type Dir struct{ path string }

// Open creates the directory (mode 0700) when missing.
func Open(path string) (*Dir, error) {
	if path == "" {
		path = DefaultDir()
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w (set --state-dir or state-dir in the config)", path, err)
	}
	return &Dir{path: path}, nil
}

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

// Secrets hands out named secrets.
type Secrets interface {
	Secret(name string) (string, error)
}

// ReadOnly is the directory's secrets without generating missing ones: for
// tools run beside the server (creds, token), which must never create a
// secret the server then cannot read or would not use.
func (d *Dir) ReadOnly() Secrets { return readOnly{d} }

type readOnly struct{ d *Dir }

func (r readOnly) Secret(name string) (string, error) {
	p := filepath.Join(r.d.path, name)
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no secret %s yet: start the server once so it generates it (or set it in the config), and run this as the server's user (e.g. sudo -u rendezvous)", p)
	}
	return r.d.Secret(name)
}

// Secret returns the named secret (32 random bytes, hex-encoded in the file
// <dir>/<name>, mode 0600), generating and saving it on first use. A secret
// file that others can read is refused: it would let them mint credentials.
func (d *Dir) Secret(name string) (string, error) {
	p := filepath.Join(d.path, name)
	data, err := os.ReadFile(p)
	switch {
	case err == nil:
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		if st.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("secret %s has mode %v: others can read it; run chmod 600 %s", p, st.Mode().Perm(), p)
		}
		s := strings.TrimSpace(string(data))
		if len(s) < 32 {
			return "", fmt.Errorf("secret %s is shorter than 32 characters; delete it to have a new one generated", p)
		}
		return s, nil
	case errors.Is(err, fs.ErrNotExist):
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		s := hex.EncodeToString(b)
		// Write to a temporary file and rename, so a crash never leaves half a secret.
		tmp, err := os.CreateTemp(d.path, "."+name+".tmp*")
		if err != nil {
			return "", fmt.Errorf("saving secret: %w", err)
		}
		defer os.Remove(tmp.Name())
		if err := tmp.Chmod(0o600); err != nil {
			tmp.Close()
			return "", err
		}
		if _, err := tmp.WriteString(s + "\n"); err != nil {
			tmp.Close()
			return "", err
		}
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return "", err
		}
		if err := tmp.Close(); err != nil {
			return "", err
		}
		if err := os.Link(tmp.Name(), p); err != nil {
			if errors.Is(err, fs.ErrExist) { // another process won the race: use its secret
				return d.Secret(name)
			}
			return "", fmt.Errorf("saving secret: %w", err)
		}
		return s, nil
	default:
		return "", fmt.Errorf("reading secret: %w", err)
	}
}

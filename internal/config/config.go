// Package config is the one typed configuration of `rendezvous serve`: built-in
// defaults, overlaid by a YAML file decoded strictly (unknown keys and bad
// values are errors naming the key and line), overlaid by command-line flags.
//
// Each service owns the type of its own section (relay.Config, ...); this
// package only composes them, so nothing but cmd/ imports it.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/rendezvous-p2p/rendezvous/internal/certs"
	"github.com/rendezvous-p2p/rendezvous/internal/httpserver"
	"github.com/rendezvous-p2p/rendezvous/internal/logx"
	"github.com/rendezvous-p2p/rendezvous/relay"
	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/natsstore"
)

// Config is the whole configuration of `rendezvous serve`.
type Config struct {
	// StateDir keeps generated secrets. Empty: $STATE_DIRECTORY under systemd,
	// else the XDG state directory (see internal/state).
	StateDir string `yaml:"state-dir"`
	// ShutdownTimeout bounds how long SIGINT/SIGTERM wait for connections to drain.
	ShutdownTimeout time.Duration `yaml:"shutdown-timeout"`
	// PublicHost is the DNS name or IP clients use to reach this server; it
	// goes into the STUN/TURN URLs handed to peers. Empty: relay.public-address,
	// else the first global unicast IPv4 address of this host.
	PublicHost string            `yaml:"public-host"`
	Log        logx.Config       `yaml:"log"`
	HTTP       httpserver.Config `yaml:"http"`
	// TLS is the certificate for HTTPS on the HTTP listener and TURN over TLS:
	// files (reloaded when they change) or ACME.
	TLS       certs.Config     `yaml:"tls"`
	Relay     relay.Config     `yaml:"relay"`
	Signaling signaling.Config `yaml:"signaling"`
	// State is where rooms and presence live: "memory" (this node only) or
	// "nats" (several nodes share them through the NATS servers in nats).
	State string           `yaml:"state"`
	NATS  natsstore.Config `yaml:"nats"`
}

// Default is the built-in configuration: everything on, safe for a VPS.
func Default() Config {
	return Config{
		ShutdownTimeout: 10 * time.Second,
		Log:             logx.DefaultConfig(),
		HTTP:            httpserver.DefaultConfig(),
		TLS:             certs.DefaultConfig(),
		Relay:           relay.DefaultConfig(),
		Signaling:       signaling.DefaultConfig(),
		State:           "memory",
		NATS:            natsstore.DefaultConfig(),
	}
}

// Validate checks every section; the error names the offending key.
func (c *Config) Validate() error {
	var errs []error
	if c.ShutdownTimeout <= 0 || c.ShutdownTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("shutdown-timeout: %v is out of range (0s, 10m]", c.ShutdownTimeout))
	}
	if c.PublicHost != "" && strings.ContainsAny(c.PublicHost, ":/ ") {
		if _, err := netip.ParseAddr(c.PublicHost); err != nil {
			errs = append(errs, fmt.Errorf("public-host: %q is not a host name or IP address (no port, no scheme)", c.PublicHost))
		}
	}
	errs = append(errs,
		prefix("log", c.Log.Validate()),
		prefix("http", c.HTTP.Validate()),
		prefix("tls", c.TLS.Validate()),
		prefix("relay", c.Relay.Validate()),
		prefix("signaling", c.Signaling.Validate()),
		prefix("nats", c.NATS.Validate()))
	if c.State != "memory" && c.State != "nats" {
		errs = append(errs, fmt.Errorf("state: %q is not memory or nats", c.State))
	}
	return errors.Join(errs...)
}

// prefix puts a section name before a section's error ("http.listen: ...").
func prefix(section string, err error) error {
	if err == nil {
		return nil
	}
	var out []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, fmt.Errorf("%s.%w", section, e))
		}
		return errors.Join(out...)
	}
	return fmt.Errorf("%s.%w", section, err)
}

// Parse decodes data over the defaults and validates the result. name is used
// in error messages (a file path).
func Parse(name string, data []byte) (Config, error) {
	cfg := Default()
	if err := DecodeStrict(data, &cfg); err != nil {
		return Config{}, fmt.Errorf("%s: %w", name, err)
	}
	return cfg, nil
}

// Marshal renders cfg as YAML that Parse reads back to the same Config.
func Marshal(cfg Config) ([]byte, error) { return yaml.Marshal(cfg) }

// SearchPaths are the files tried, in order, when no --config is given.
func SearchPaths() []string {
	paths := []string{"rendezvous.yaml"}
	if d := os.Getenv("CONFIGURATION_DIRECTORY"); d != "" { // systemd ConfigurationDirectory=
		paths = append(paths, filepath.Join(firstPath(d), "rendezvous.yaml"))
	}
	return append(paths, "/etc/rendezvous/rendezvous.yaml")
}

// Find returns the config file to use: explicit when given (it must exist),
// else the first of SearchPaths that exists, else "" for built-in defaults.
func Find(explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("config file: %w", err)
		}
		return explicit, nil
	}
	for _, p := range SearchPaths() {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", nil
}

// Load reads the file at path ("" means built-in defaults) without validating.
func Load(path string) (Config, error) {
	if path == "" {
		return Default(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config file: %w", err)
	}
	return Parse(path, data)
}

// firstPath takes the first entry of a colon-separated systemd directory list.
func firstPath(list string) string {
	for i := 0; i < len(list); i++ {
		if list[i] == ':' {
			return list[:i]
		}
	}
	return list
}

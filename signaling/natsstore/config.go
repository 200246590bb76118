package natsstore

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"
)

// Config is the `nats:` section used when `state: nats`.
type Config struct {
	// URLs of the NATS servers (nats://host:4222 or tls://host:4222). Listing
	// several lets the client fail over; servers of the cluster that are not
	// listed are discovered.
	URLs []string `yaml:"urls"`
	// CredsFile is a NATS .creds file (JWT + NKEY seed).
	CredsFile string `yaml:"creds-file"`
	// NKeyFile holds an NKEY user seed ("SU...").
	NKeyFile string `yaml:"nkey-file"`
	// TLS configures TLS to the NATS servers; CAFile alone verifies the
	// servers, CertFile+KeyFile add a client certificate.
	TLS TLSConfig `yaml:"tls"`
	// Prefix names the KV buckets (<prefix>-rooms, <prefix>-peers,
	// <prefix>-nodes) and subjects (<prefix>.node.<id>). Nodes that share a
	// prefix share rooms.
	Prefix string `yaml:"prefix"`
	// NodeID identifies this node; empty means hostname plus a random suffix
	// (a restarted node is a new node: its old peers are reaped).
	NodeID string `yaml:"node-id"`
	// Replicas of each bucket: 0 picks 3 when the cluster has at least three
	// servers, else 1.
	Replicas int `yaml:"replicas"`
	// PresenceTTL is how long a node's heartbeat stays valid. A node that dies
	// takes its peers out of their rooms within PresenceTTL plus a third of it
	// (the reaper's period).
	PresenceTTL time.Duration `yaml:"presence-ttl"`
	// SweepInterval is how often one node removes rooms that have been empty
	// that long, join codes without a room, and old delete markers. Keep it
	// above signaling's resume-grace.
	SweepInterval time.Duration `yaml:"sweep-interval"`
	// OpTimeout bounds every NATS operation of a signaling request,
	// including retries while a NATS server fails over (a stream leader is
	// re-elected within about 10 s).
	OpTimeout time.Duration `yaml:"op-timeout"`
}

// TLSConfig is the TLS client setup for NATS.
type TLSConfig struct {
	CAFile   string `yaml:"ca-file"`
	CertFile string `yaml:"cert-file"`
	KeyFile  string `yaml:"key-file"`
}

// DefaultConfig is a local nats-server with the default prefix.
func DefaultConfig() Config {
	return Config{
		URLs:          []string{"nats://127.0.0.1:4222"},
		Prefix:        "rzv",
		PresenceTTL:   15 * time.Second,
		SweepInterval: 5 * time.Minute,
		OpTimeout:     15 * time.Second,
	}
}

var (
	prefixRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// Validate checks the config; errors name the key.
func (c Config) Validate() error {
	var errs []error
	if len(c.URLs) == 0 {
		errs = append(errs, errors.New("urls: at least one NATS server URL is required"))
	}
	if c.CredsFile != "" && c.NKeyFile != "" {
		errs = append(errs, errors.New("creds-file and nkey-file: set only one"))
	}
	for key, f := range map[string]string{"creds-file": c.CredsFile, "nkey-file": c.NKeyFile, "tls.ca-file": c.TLS.CAFile, "tls.cert-file": c.TLS.CertFile, "tls.key-file": c.TLS.KeyFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("tls: cert-file and key-file go together"))
	}
	if !prefixRe.MatchString(c.Prefix) {
		errs = append(errs, fmt.Errorf("prefix: %q must be 1-32 of A-Z a-z 0-9 _ -", c.Prefix))
	}
	if c.NodeID != "" && !nodeIDRe.MatchString(c.NodeID) {
		errs = append(errs, fmt.Errorf("node-id: %q must be 1-64 of A-Z a-z 0-9 _ -", c.NodeID))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas: %d out of range 0..5", c.Replicas))
	}
	if c.PresenceTTL < 3*time.Second {
		errs = append(errs, fmt.Errorf("presence-ttl: %v is below 3s", c.PresenceTTL))
	}
	if c.SweepInterval < time.Second {
		errs = append(errs, fmt.Errorf("sweep-interval: %v is below 1s", c.SweepInterval))
	}
	if c.OpTimeout <= 0 {
		errs = append(errs, fmt.Errorf("op-timeout: %v must be positive", c.OpTimeout))
	}
	return errors.Join(errs...)
}

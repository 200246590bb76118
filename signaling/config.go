package signaling

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// OpenMode says who may connect without an API key or join token.
type OpenMode string

const (
	// OpenLoopback admits unauthenticated clients from loopback addresses only (default).
	OpenLoopback OpenMode = "loopback"
	// OpenAll admits everyone without credentials.
	OpenAll OpenMode = "true"
	// OpenNone requires credentials from every client.
	OpenNone OpenMode = "false"
)

// UnmarshalYAML accepts true, false or "loopback".
func (m *OpenMode) UnmarshalYAML(n *yaml.Node) error {
	switch strings.ToLower(strings.TrimSpace(n.Value)) {
	case "true", "yes", "on":
		*m = OpenAll
	case "false", "no", "off":
		*m = OpenNone
	case "loopback":
		*m = OpenLoopback
	default:
		return fmt.Errorf("open: %q is not true, false or \"loopback\"", n.Value)
	}
	return nil
}

// MarshalYAML writes booleans as booleans.
func (m OpenMode) MarshalYAML() (any, error) {
	switch m {
	case OpenAll:
		return true, nil
	case OpenNone:
		return false, nil
	}
	return string(m), nil
}

// Config is the signaling section of the rendezvous config.
type Config struct {
	// APIKeys are operator keys: full access, sent as "Authorization: Bearer <key>"
	// or ?token=<key>.
	APIKeys []string `yaml:"api-keys"`
	// JoinTokenSecrets verify join tokens minted by a game backend (MintJoinToken).
	// The first one signs tokens minted by this process; all verify (rotation).
	JoinTokenSecrets []string `yaml:"join-token-secrets"`
	// Open admits clients without credentials: true, false or "loopback".
	Open OpenMode `yaml:"open"`
	// AllowedOrigins are browser Origin patterns (path.Match syntax on host) that
	// may open a WebSocket; "*" allows every origin.
	AllowedOrigins []string `yaml:"allowed-origins"`

	PingInterval time.Duration `yaml:"ping-interval"`
	MissedPings  int           `yaml:"missed-pings"`
	ResumeGrace  time.Duration `yaml:"resume-grace"`
	WriteTimeout time.Duration `yaml:"write-timeout"`

	MaxFrameBytes   int     `yaml:"max-frame-bytes"`
	MsgRate         float64 `yaml:"msg-rate"`
	MsgBurst        int     `yaml:"msg-burst"`
	MaxConnsPerIP   int     `yaml:"max-conns-per-ip"`
	MaxRoomsPerPeer int     `yaml:"max-rooms-per-peer"`
	MaxRoomCapacity int     `yaml:"max-room-capacity"`
	SendQueue       int     `yaml:"send-queue"`
	MaxPeers        int     `yaml:"max-peers"`

	// TURNCredentialTTL is the lifetime of the TURN credentials handed out.
	TURNCredentialTTL time.Duration `yaml:"turn-credential-ttl"`
	// PunchAttempts and PunchInterval shape the punch schedule.
	PunchAttempts int           `yaml:"punch-attempts"`
	PunchInterval time.Duration `yaml:"punch-interval"`
}

// DefaultConfig is the configuration used when the section is absent.
func DefaultConfig() Config {
	return Config{
		Open:              OpenLoopback,
		AllowedOrigins:    []string{"*"},
		PingInterval:      15 * time.Second,
		MissedPings:       3,
		ResumeGrace:       30 * time.Second,
		WriteTimeout:      10 * time.Second,
		MaxFrameBytes:     64 << 10,
		MsgRate:           50,
		MsgBurst:          100,
		MaxConnsPerIP:     32,
		MaxRoomsPerPeer:   8,
		MaxRoomCapacity:   64,
		SendQueue:         128,
		MaxPeers:          200000,
		TURNCredentialTTL: 12 * time.Hour,
		PunchAttempts:     20,
		PunchInterval:     50 * time.Millisecond,
	}
}

// Validate checks every key; errors name the key relative to the section.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf(key+": "+format, args...))
	}
	for i, k := range c.APIKeys {
		if len(k) < 16 {
			bad("api-keys", "key %d is %d characters; use at least 16", i, len(k))
		}
	}
	for i, s := range c.JoinTokenSecrets {
		if len(s) < 16 {
			bad("join-token-secrets", "secret %d is %d characters; use at least 16", i, len(s))
		}
	}
	switch c.Open {
	case OpenLoopback, OpenAll, OpenNone:
	default:
		bad("open", "%q is not true, false or \"loopback\"", string(c.Open))
	}
	if c.PingInterval < time.Millisecond {
		bad("ping-interval", "%v is too short (minimum 1ms)", c.PingInterval)
	}
	if c.MissedPings < 1 {
		bad("missed-pings", "must be at least 1, got %d", c.MissedPings)
	}
	if c.ResumeGrace < 0 {
		bad("resume-grace", "must not be negative, got %v", c.ResumeGrace)
	}
	if c.WriteTimeout <= 0 {
		bad("write-timeout", "must be positive, got %v", c.WriteTimeout)
	}
	if c.MaxFrameBytes < 1024 || c.MaxFrameBytes > 16<<20 {
		bad("max-frame-bytes", "%d out of range 1024..16777216", c.MaxFrameBytes)
	}
	if c.MsgRate <= 0 {
		bad("msg-rate", "must be positive, got %v", c.MsgRate)
	}
	if c.MsgBurst < 1 {
		bad("msg-burst", "must be at least 1, got %d", c.MsgBurst)
	}
	if c.MaxConnsPerIP < 1 {
		bad("max-conns-per-ip", "must be at least 1, got %d", c.MaxConnsPerIP)
	}
	if c.MaxRoomsPerPeer < 1 {
		bad("max-rooms-per-peer", "must be at least 1, got %d", c.MaxRoomsPerPeer)
	}
	if c.MaxRoomCapacity < 2 {
		bad("max-room-capacity", "must be at least 2, got %d", c.MaxRoomCapacity)
	}
	if c.SendQueue < 4 {
		bad("send-queue", "must be at least 4, got %d", c.SendQueue)
	}
	if c.MaxPeers < 1 {
		bad("max-peers", "must be at least 1, got %d", c.MaxPeers)
	}
	if c.TURNCredentialTTL < time.Minute {
		bad("turn-credential-ttl", "%v is too short (minimum 1m)", c.TURNCredentialTTL)
	}
	if c.PunchAttempts < 1 {
		bad("punch-attempts", "must be at least 1, got %d", c.PunchAttempts)
	}
	if c.PunchInterval <= 0 {
		bad("punch-interval", "must be positive, got %v", c.PunchInterval)
	}
	return errors.Join(errs...)
}

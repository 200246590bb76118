package lanbeacon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// DefaultPort is the UDP port beacons go to.
const DefaultPort = 9999

// DefaultGroup6 is the IPv6 link-local multicast group beacons go to:
// ff02::1e52:5a42, the magic "\x1eRZB" in the low 32 bits. It is outside
// every IANA-assigned ff02:: group and outside the solicited-node range
// ff02::1:ff00:0/104 (Ethernet MAC 33:33:1e:52:5a:42).
var DefaultGroup6 = netip.MustParseAddr("ff02::1e52:5a42")

// Config is the beacon section of the config file, shared by announcers and
// listeners (so both agree on port, group and key).
type Config struct {
	// Port is the UDP port listeners bind and announcers send directed
	// broadcasts and IPv6 multicast to.
	Port int `yaml:"port"`
	// Broadcast is the limited-broadcast destination; "" sends none. On a
	// multi-homed host it leaves through one interface only, which is why
	// directed broadcasts and IPv6 multicast go out too.
	Broadcast string `yaml:"broadcast"`
	// DirectedBroadcast sends to the broadcast address of every IPv4 prefix
	// of every up, broadcast-capable interface.
	DirectedBroadcast bool `yaml:"directed-broadcast"`
	// Group6 is the IPv6 link-local multicast group (in ff02::/16) joined on
	// and sent to on every up, multicast-capable interface; "" disables IPv6.
	Group6 string `yaml:"ipv6-group"`
	// Interfaces limits directed broadcasts and IPv6 multicast (sending and
	// joining) to these interface names; empty means all. The limited
	// broadcast follows the routing table: set Broadcast to "" as well to keep
	// strictly to these interfaces.
	Interfaces []string `yaml:"interfaces"`
	// Interval is the time between announcements (each waits a random 90-100%
	// of it, so a listener hears every announcer within one interval).
	// Listeners expire an entry after three of the announcer's intervals.
	Interval time.Duration `yaml:"interval"`
	// LANKey, when set, signs announcements (HMAC-SHA256 with timestamp and
	// nonce) and makes listeners drop unsigned, forged and replayed beacons.
	// Without it listeners accept everything and mark peers unauthenticated.
	LANKey string `yaml:"lan-key"`
	// MaxClockSkew is how far a signed beacon's timestamp may be from the
	// listener's clock; it is also the replay window.
	MaxClockSkew time.Duration `yaml:"max-clock-skew"`
	// MaxPeers bounds the listener's table; beacons of further peers are
	// dropped and counted.
	MaxPeers int `yaml:"max-peers"`
}

// DefaultConfig is 255.255.255.255:9999 plus directed broadcasts and
// ff02::1e52:5a42 on port 9999, every 2 s, no LAN key.
func DefaultConfig() Config {
	return Config{
		Port:              DefaultPort,
		Broadcast:         "255.255.255.255:9999",
		DirectedBroadcast: true,
		Group6:            DefaultGroup6.String(),
		Interval:          2 * time.Second,
		MaxClockSkew:      30 * time.Second,
		MaxPeers:          256,
	}
}

// Validate checks every key; errors name the key.
func (c Config) Validate() error {
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("port: %d out of range 1-65535", c.Port)
	}
	if c.Broadcast != "" {
		if _, err := netip.ParseAddrPort(c.Broadcast); err != nil {
			return fmt.Errorf("broadcast: %q is not ip:port (e.g. \"255.255.255.255:9999\")", c.Broadcast)
		}
	}
	if c.Group6 != "" {
		g, err := netip.ParseAddr(c.Group6)
		if err != nil || !g.Is6() || !g.IsLinkLocalMulticast() {
			return fmt.Errorf("ipv6-group: %q is not an IPv6 link-local multicast group (ff02::/16)", c.Group6)
		}
	}
	if c.Interval < 100*time.Millisecond || c.Interval > MaxWireInterval {
		return fmt.Errorf("interval: %v out of range 100ms-1h", c.Interval)
	}
	if c.LANKey != "" && len(c.LANKey) < 8 {
		// Every signed beacon lets an eavesdropper test guesses offline.
		return fmt.Errorf("lan-key: %d characters, at least 8 (use a long random passphrase)", len(c.LANKey))
	}
	if c.MaxClockSkew < time.Second {
		return fmt.Errorf("max-clock-skew: %v, at least 1s", c.MaxClockSkew)
	}
	if c.MaxPeers < 1 {
		return fmt.Errorf("max-peers: %d, at least 1", c.MaxPeers)
	}
	return nil
}

func (c Config) broadcast() netip.AddrPort {
	if c.Broadcast == "" {
		return netip.AddrPort{}
	}
	return netip.MustParseAddrPort(c.Broadcast)
}

func (c Config) group6() netip.Addr {
	if c.Group6 == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(c.Group6)
}

func (c Config) wantInterface(name string) bool {
	if len(c.Interfaces) == 0 {
		return true
	}
	for _, n := range c.Interfaces {
		if n == name {
			return true
		}
	}
	return false
}

// Options are the Go-only knobs of an Announcer or Listener.
type Options struct {
	Logger *slog.Logger
	// Network opens sockets and lists interfaces; nil is the host.
	Network Network
	// Instance is the announcer's id; zero picks a random one (the normal case).
	Instance InstanceID
	// App, when set, makes a listener keep only beacons of this app (a game
	// that should not list other games); others are counted in OtherApp.
	App string
	// Ignore lists instance ids a listener skips: the process's own
	// announcers, whose broadcasts loop back.
	Ignore []InstanceID
	// RateLimit and RateBurst bound the beacons a listener takes per source
	// address; zero means 20/s with a burst of 40.
	RateLimit rate.Limit
	RateBurst int
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o Options) network() Network {
	if o.Network == nil {
		return HostNetwork{}
	}
	return o.Network
}

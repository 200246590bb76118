package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is the relay section of the rendezvous config.
type Config struct {
	// Listen is the STUN/TURN address for UDP and TCP (RFC 8489, RFC 8656).
	Listen string `yaml:"listen"`
	// TLSListen is the TURN-over-TLS address, used when CertFile is set.
	TLSListen string `yaml:"tls-listen"`
	CertFile  string `yaml:"cert-file"`
	KeyFile   string `yaml:"key-file"`
	// Realm is the long-term credential realm.
	Realm string `yaml:"realm"`

	// RelayAddress is the local IPv4 address relay sockets bind; empty picks
	// the first global unicast IPv4 of the host.
	RelayAddress string `yaml:"relay-address"`
	// PublicAddress is the IPv4 address clients are told to send to, for a VPS
	// behind 1:1 NAT; empty means RelayAddress.
	PublicAddress string `yaml:"public-address"`
	// RelayAddressV6 / PublicAddressV6 are the same for RFC 6156 IPv6
	// allocations; empty picks the first global unicast IPv6 of the host, and
	// with none IPv6 allocations are refused.
	RelayAddressV6  string `yaml:"relay-address-v6"`
	PublicAddressV6 string `yaml:"public-address-v6"`
	PortRangeMin    int    `yaml:"port-range-min"`
	PortRangeMax    int    `yaml:"port-range-max"`

	// Users are static long-term credentials: name → password.
	Users map[string]string `yaml:"users"`
	// AuthSecrets are TURN REST API secrets (coturn use-auth-secret); every
	// one is accepted, so a secret is rotated by adding the new one, reloading,
	// moving clients over, then removing the old one.
	AuthSecrets []string `yaml:"auth-secrets"`

	// AllowPeers opens subnets the built-in deny list closes (a LAN on purpose).
	AllowPeers []string `yaml:"allow-peers"`
	// DenyPeers closes more subnets; it wins over AllowPeers.
	DenyPeers []string `yaml:"deny-peers"`

	// UserQuota caps concurrent allocations per user; 0 = unlimited.
	UserQuota int `yaml:"user-quota"`
	// TotalQuota caps concurrent allocations on the server; 0 = unlimited.
	TotalQuota int `yaml:"total-quota"`
	// MaxAllocationsPerIP caps concurrent allocations per client IP; 0 = unlimited.
	MaxAllocationsPerIP int `yaml:"max-allocations-per-ip"`
	// BandwidthLimit caps each allocation's relayed bytes per second, each
	// direction; 0 = unlimited.
	BandwidthLimit int64 `yaml:"bandwidth-limit"`
	// Lifetime is the allocation lifetime when a client asks for none
	// (clients may ask for up to one hour).
	Lifetime time.Duration `yaml:"lifetime"`
	// MaxAllocationDuration ends an allocation this long after it was
	// created, however often it is refreshed; 0 = no limit.
	MaxAllocationDuration time.Duration `yaml:"max-allocation-duration"`
	// AuthFailuresPerMinute is how many failed authentications a client IP
	// may make per minute before its requests are refused outright.
	AuthFailuresPerMinute int `yaml:"auth-failures-per-minute"`

	// AlternateAddress ("ip:port") turns on RFC 5780 NAT behaviour discovery:
	// Binding requests may ask for answers from this IP and/or port. Needs a
	// specific Listen IP and a second IP on the host.
	AlternateAddress string `yaml:"alternate-address"`

	// ReadSockets is how many SO_REUSEPORT UDP sockets read Listen (one
	// event loop each, for the socket and its share of the relay sockets);
	// 0 = one per CPU.
	ReadSockets int `yaml:"read-sockets"`
	// SocketBuffer is SO_RCVBUF/SO_SNDBUF for the UDP sockets in bytes.
	// Above net.core.rmem_max it needs root (SO_RCVBUFFORCE) or a higher sysctl.
	SocketBuffer int `yaml:"socket-buffer"`
}

// DefaultConfig is the relay's configuration when the operator sets nothing.
func DefaultConfig() Config {
	return Config{
		Listen:                ":3478",
		TLSListen:             ":5349",
		Realm:                 "rendezvous",
		PortRangeMin:          49152,
		PortRangeMax:          65535,
		UserQuota:             10,
		TotalQuota:            10000,
		MaxAllocationsPerIP:   64,
		BandwidthLimit:        4 << 20, // 4 MiB/s (32 Mbit/s) per allocation and direction
		Lifetime:              10 * time.Minute,
		AuthFailuresPerMinute: 30,
		SocketBuffer:          8 << 20,
	}
}

// TLSEnabled reports whether TURN over TLS is configured.
func (c Config) TLSEnabled() bool { return c.CertFile != "" }

// Validate checks the config; errors name the key.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	checkHostPort := func(key, v string) {
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			add(key, "%q is not host:port", v)
			return
		}
		if host != "" {
			if _, err := netip.ParseAddr(host); err != nil {
				add(key, "%q: host must be an IP address or empty", v)
			}
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			add(key, "port %q out of range", port)
		}
	}
	if c.Listen == "" {
		add("listen", "required")
	} else {
		checkHostPort("listen", c.Listen)
	}
	if c.TLSEnabled() {
		if c.KeyFile == "" {
			add("key-file", "required when cert-file is set")
		}
		if c.TLSListen == "" {
			add("tls-listen", "required when cert-file is set")
		} else {
			checkHostPort("tls-listen", c.TLSListen)
		}
		for key, f := range map[string]string{"cert-file": c.CertFile, "key-file": c.KeyFile} {
			if f == "" {
				continue
			}
			if _, err := os.Stat(f); err != nil {
				add(key, "%v", err)
			}
		}
	} else if c.KeyFile != "" {
		add("cert-file", "required when key-file is set")
	}
	if c.Realm == "" {
		add("realm", "required")
	}
	checkIP := func(key, v string, want4 bool) {
		if v == "" {
			return
		}
		a, err := netip.ParseAddr(v)
		switch {
		case err != nil:
			add(key, "%q is not an IP address", v)
		case want4 && !a.Unmap().Is4():
			add(key, "%q is not an IPv4 address", v)
		case !want4 && (!a.Is6() || a.Is4In6()):
			add(key, "%q is not an IPv6 address", v)
		}
	}
	checkIP("relay-address", c.RelayAddress, true)
	checkIP("public-address", c.PublicAddress, true)
	checkIP("relay-address-v6", c.RelayAddressV6, false)
	checkIP("public-address-v6", c.PublicAddressV6, false)
	if c.PortRangeMin < 1 || c.PortRangeMin > 65535 {
		add("port-range-min", "%d out of range 1..65535", c.PortRangeMin)
	}
	if c.PortRangeMax < 1 || c.PortRangeMax > 65535 {
		add("port-range-max", "%d out of range 1..65535", c.PortRangeMax)
	}
	if c.PortRangeMin > c.PortRangeMax {
		add("port-range-min", "%d is above port-range-max %d", c.PortRangeMin, c.PortRangeMax)
	}
	for name, pw := range c.Users {
		switch {
		case name == "":
			add("users", "empty user name")
		case strings.Contains(name, ":"):
			add("users", "user %q: name must not contain ':' (reserved for REST credentials)", name)
		case pw == "":
			add("users", "user %q: empty password", name)
		}
	}
	for i, s := range c.AuthSecrets {
		if s == "" {
			add("auth-secrets", "secret %d is empty", i)
		}
	}
	if _, err := newPeerFilter(c.AllowPeers, c.DenyPeers, nil, nil); err != nil {
		errs = append(errs, err)
	}
	for key, v := range map[string]int{"user-quota": c.UserQuota, "total-quota": c.TotalQuota,
		"max-allocations-per-ip": c.MaxAllocationsPerIP, "auth-failures-per-minute": c.AuthFailuresPerMinute,
		"read-sockets": c.ReadSockets, "socket-buffer": c.SocketBuffer} {
		if v < 0 {
			add(key, "%d must not be negative", v)
		}
	}
	if c.BandwidthLimit < 0 {
		add("bandwidth-limit", "%d must not be negative", c.BandwidthLimit)
	}
	if c.Lifetime < time.Minute || c.Lifetime > time.Hour {
		add("lifetime", "%v out of range 1m..1h", c.Lifetime)
	}
	if c.MaxAllocationDuration < 0 {
		add("max-allocation-duration", "%v must not be negative", c.MaxAllocationDuration)
	}
	if c.AlternateAddress != "" {
		ap, err := netip.ParseAddrPort(c.AlternateAddress)
		if err != nil {
			add("alternate-address", "%q is not ip:port", c.AlternateAddress)
		} else if host, port, err := net.SplitHostPort(c.Listen); err == nil {
			la, lerr := netip.ParseAddr(host)
			switch {
			case lerr != nil || la.IsUnspecified():
				add("alternate-address", "needs a specific IP in listen (RFC 5780 tells the two IPs apart)")
			case la == ap.Addr():
				add("alternate-address", "IP must differ from the listen IP")
			case la.Unmap().Is4() != ap.Addr().Unmap().Is4():
				add("alternate-address", "IP must be of the listen IP's family")
			case port == strconv.Itoa(int(ap.Port())) && ap.Port() != 0:
				add("alternate-address", "port must differ from the listen port")
			}
		}
	}
	return errors.Join(errs...)
}

// ICEServerURLs returns the RTCIceServer URLs for this relay as clients reach
// it at host (a DNS name or IP): turn over UDP and TCP, turns when TLS is
// configured, and stun.
func (c Config) ICEServerURLs(host string) []string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() && !a.Is4In6() {
		host = "[" + host + "]"
	}
	port := func(hp, def string) string {
		if _, p, err := net.SplitHostPort(hp); err == nil && p != "" && p != "0" {
			return p
		}
		return def
	}
	p := port(c.Listen, "3478")
	urls := []string{
		"turn:" + host + ":" + p + "?transport=udp",
		"turn:" + host + ":" + p + "?transport=tcp",
	}
	if c.TLSEnabled() {
		urls = append(urls, "turns:"+host+":"+port(c.TLSListen, "5349")+"?transport=tcp")
	}
	return append(urls, "stun:"+host+":"+p)
}

// ICEServer is one entry of RTCConfiguration.iceServers, ready for JSON.
type ICEServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

package relay

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"github.com/rendezvous-p2p/rendezvous/internal/stunext"
)

func TestDefaultConfigValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("zero-config default is invalid: %v", err)
	}
}

func TestValidateNamesKeys(t *testing.T) {
	for key, mutate := range map[string]func(*Config){
		"listen":                   func(c *Config) { c.Listen = "nohost" },
		"key-file":                 func(c *Config) { c.CertFile = "/nonexistent.pem" },
		"relay-address":            func(c *Config) { c.RelayAddress = "::1" },
		"public-address-v6":        func(c *Config) { c.PublicAddressV6 = "1.2.3.4" },
		"port-range-min":           func(c *Config) { c.PortRangeMin = 60000; c.PortRangeMax = 50000 },
		"port-range-max":           func(c *Config) { c.PortRangeMax = 70000 },
		"users":                    func(c *Config) { c.Users = map[string]string{"a:b": "pw"} },
		"auth-secrets":             func(c *Config) { c.AuthSecrets = []string{""} },
		"allow-peers":              func(c *Config) { c.AllowPeers = []string{"10.0.0.0/40"} },
		"deny-peers":               func(c *Config) { c.DenyPeers = []string{"x"} },
		"user-quota":               func(c *Config) { c.UserQuota = -1 },
		"bandwidth-limit":          func(c *Config) { c.BandwidthLimit = -1 },
		"lifetime":                 func(c *Config) { c.Lifetime = 2 * time.Hour },
		"alternate-address":        func(c *Config) { c.AlternateAddress = "127.0.0.3:3479" }, // wildcard listen
		"auth-failures-per-minute": func(c *Config) { c.AuthFailuresPerMinute = -5 },
	} {
		c := DefaultConfig()
		mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), key+":") {
			t.Errorf("%s: Validate() = %v, want an error naming %q", key, err, key)
		}
	}
}

func TestICEServerURLs(t *testing.T) {
	c := DefaultConfig()
	got := c.ICEServerURLs("turn.example.org")
	want := []string{"turn:turn.example.org:3478?transport=udp", "turn:turn.example.org:3478?transport=tcp",
		"stun:turn.example.org:3478"}
	if !slices.Equal(got, want) {
		t.Errorf("without TLS: %v, want %v", got, want)
	}
	c.CertFile, c.KeyFile, c.TLSListen = "c", "k", ":443"
	got = c.ICEServerURLs("2001:db8::1")
	want = []string{"turn:[2001:db8::1]:3478?transport=udp", "turn:[2001:db8::1]:3478?transport=tcp",
		"turns:[2001:db8::1]:443?transport=tcp", "stun:[2001:db8::1]:3478"}
	if !slices.Equal(got, want) {
		t.Errorf("with TLS: %v, want %v", got, want)
	}
}

// The relay's STUN port answers Binding for old and new clients, reports
// PEER-TOKEN, and does RFC 5780 with alternate-address.
func TestRelaySTUNBinding(t *testing.T) {
	type seen struct {
		token string
		from  netip.AddrPort
	}
	tokens := make(chan seen, 1)
	r := startRelay(t, func(c *Config) { c.AlternateAddress = "127.0.0.3:0" },
		Options{OnPeerToken: func(tok string, from netip.AddrPort) { tokens <- seen{tok, from} }})
	c := udpPeer(t, "127.0.0.1")
	me := netx.AddrPortOf(c.LocalAddr())

	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, rawAttr{stun.AttrType(stunext.AttrPeerToken), []byte("tok")},
		rawAttr{stun.AttrChangeRequest, []byte{0, 0, 0, 6}}, stun.Fingerprint)
	if _, err := c.WriteToUDPAddrPort(req.Raw, r.addr); err != nil {
		t.Fatal(err)
	}
	b, from := readPeer(t, c)
	if from.Addr().String() != "127.0.0.3" || from.Port() == r.addr.Port() {
		t.Fatalf("CHANGE-REQUEST ip+port answered from %v, want 127.0.0.3 on another port", from)
	}
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err != nil || xor.Port != int(me.Port()) {
		t.Fatalf("XOR-MAPPED-ADDRESS %v (%v), want %v", xor, err, me)
	}
	select {
	case s := <-tokens:
		if s.token != "tok" || s.from != me {
			t.Fatalf("OnPeerToken(%q, %v), want (tok, %v)", s.token, s.from, me)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnPeerToken not called")
	}

	// Classic RFC 3489 request: no magic cookie, 128-bit ID echoed.
	classic := make([]byte, 20)
	classic[1] = 1
	copy(classic[4:], "0123456789abcdef")
	if _, err := c.WriteToUDPAddrPort(classic, r.addr); err != nil {
		t.Fatal(err)
	}
	b, _ = readPeer(t, c)
	if binary.BigEndian.Uint16(b[0:2]) != 0x0101 || string(b[4:20]) != "0123456789abcdef" {
		t.Fatalf("classic Binding answer % x", b[:20])
	}
}

package signaling

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestConfigYAML(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want OpenMode
	}{{"open: true", OpenAll}, {"open: false", OpenNone}, {"open: loopback", OpenLoopback}, {"{}", OpenLoopback}} {
		cfg := DefaultConfig()
		if err := yaml.Unmarshal([]byte(tc.in), &cfg); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if cfg.Open != tc.want {
			t.Errorf("%s: open = %q, want %q", tc.in, cfg.Open, tc.want)
		}
	}
	cfg := DefaultConfig()
	if err := yaml.Unmarshal([]byte("open: sometimes"), &cfg); err == nil || !strings.Contains(err.Error(), "open") {
		t.Fatalf("bad open value: %v", err)
	}
	in := "ping-interval: 5s\nmissed-pings: 2\nresume-grace: 1m\nmax-frame-bytes: 2048\nsend-queue: 16\napi-keys: [abcdefghijklmnopq]\n"
	if err := yaml.Unmarshal([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.PingInterval != 5*time.Second || cfg.MissedPings != 2 || cfg.ResumeGrace != time.Minute || cfg.MaxFrameBytes != 2048 || cfg.SendQueue != 16 {
		t.Fatalf("decoded %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidateNamesKeys(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	for key, mutate := range map[string]func(*Config){
		"api-keys":           func(c *Config) { c.APIKeys = []string{"short"} },
		"join-token-secrets": func(c *Config) { c.JoinTokenSecrets = []string{"short"} },
		"open":               func(c *Config) { c.Open = "maybe" },
		"ping-interval":      func(c *Config) { c.PingInterval = 0 },
		"missed-pings":       func(c *Config) { c.MissedPings = 0 },
		"max-frame-bytes":    func(c *Config) { c.MaxFrameBytes = 10 },
		"msg-rate":           func(c *Config) { c.MsgRate = 0 },
		"max-conns-per-ip":   func(c *Config) { c.MaxConnsPerIP = 0 },
		"max-room-capacity":  func(c *Config) { c.MaxRoomCapacity = 1 },
		"send-queue":         func(c *Config) { c.SendQueue = 1 },
	} {
		cfg := DefaultConfig()
		mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), key+": ") {
			t.Errorf("%s: error %v does not name the key", key, err)
		}
		if _, err := New(cfg, Options{}); err == nil {
			t.Errorf("%s: New accepted an invalid config", key)
		}
	}
}

func TestJoinTokenRoundTrip(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	secret := []byte("0123456789abcdef")
	tok, err := MintJoinToken(secret, JoinClaims{Room: "r1", Name: "n", Subject: "u1"}, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := VerifyJoinToken([][]byte{[]byte("other-secret-xxxxx"), secret}, tok, now.Add(59*time.Second))
	if err != nil || c.Room != "r1" || c.Name != "n" || c.Subject != "u1" || c.Expires != now.Add(time.Minute).Unix() {
		t.Fatalf("claims %+v, err %v", c, err)
	}
	if _, err := VerifyJoinToken([][]byte{secret}, tok, now.Add(time.Minute)); err != errTokenExpired {
		t.Fatalf("at expiry: %v", err)
	}
	if _, err := VerifyJoinToken([][]byte{[]byte("wrong-secret-xxxxx")}, tok, now); err != errTokenSignature {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := MintJoinToken(nil, JoinClaims{}, time.Minute, now); err == nil {
		t.Fatal("minted with an empty secret")
	}
}

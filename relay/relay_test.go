package relay

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"github.com/rendezvous-p2p/rendezvous/internal/turncreds"
)

// pionClient is pion's own TURN client over udp, tcp or tls.
func pionClient(t *testing.T, r *testRelay, transport, user, password string) *turn.Client {
	t.Helper()
	var conn net.PacketConn
	server := r.addr.String()
	switch transport {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	case "tcp":
		c, err := net.Dial("tcp", server)
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(c)
	case "tls":
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.certPEM)
		server = r.tlsAddr.String()
		c, err := tls.Dial("tcp", server, &tls.Config{RootCAs: pool, ServerName: relayIP})
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(c)
	}
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server, Conn: conn,
		Username: user, Password: password, Realm: "rendezvous",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); conn.Close() })
	return client
}

func readRelay(t *testing.T, c net.PacketConn) ([]byte, net.Addr) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("client received nothing through the relay: %v", err)
	}
	return buf[:n], from
}

// Acceptance 1: allocate over UDP, TCP and TLS with pion's client and relay
// both ways with a peer (send indications first, then a channel).
func TestAllocateAndRelayBothWays(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.1/32"} })
	for _, transport := range []string{"udp", "tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			client := pionClient(t, r, transport, "alice", "alice-pw")
			relayConn, err := client.Allocate()
			if err != nil {
				t.Fatalf("Allocate over %s: %v", transport, err)
			}
			defer relayConn.Close()
			relayAP := netx.AddrPortOf(relayConn.LocalAddr())
			if relayAP.Addr().String() != relayIP || int(relayAP.Port()) < r.srv.cfg.PortRangeMin {
				t.Fatalf("relayed address %v: want %s in the relay port range", relayAP, relayIP)
			}
			peer := udpPeer(t, "127.0.0.1")
			peerAddr := peer.LocalAddr()
			for i := range 5 {
				msg := []byte(fmt.Sprintf("%s to peer %d", transport, i))
				if _, err := relayConn.WriteTo(msg, peerAddr); err != nil {
					t.Fatal(err)
				}
				got, from := readPeer(t, peer)
				if !bytes.Equal(got, msg) || from != relayAP {
					t.Fatalf("peer got %q from %v, want %q from %v", got, from, msg, relayAP)
				}
				reply := []byte(fmt.Sprintf("peer to %s %d", transport, i))
				if _, err := peer.WriteToUDPAddrPort(reply, relayAP); err != nil {
					t.Fatal(err)
				}
				back, src := readRelay(t, relayConn)
				if !bytes.Equal(back, reply) || src.String() != peerAddr.String() {
					t.Fatalf("client got %q from %v, want %q from %v", back, src, reply, peerAddr)
				}
			}
			if got := r.metric(t, "rendezvous_relay_permissions", nil); got < 1 {
				t.Errorf("permissions = %v, want ≥ 1", got)
			}
			eventually(t, "pion's client to bind a channel", func() bool {
				return r.metric(t, "rendezvous_relay_channels", nil) >= 1
			})
			msg := []byte("over the channel")
			if _, err := relayConn.WriteTo(msg, peerAddr); err != nil {
				t.Fatal(err)
			}
			if got, _ := readPeer(t, peer); !bytes.Equal(got, msg) {
				t.Fatalf("peer got %q over the channel", got)
			}
		})
	}
	if got := r.metric(t, "rendezvous_relay_bytes_total", map[string]string{"direction": "to_peer"}); got == 0 {
		t.Error("bytes_total{to_peer} did not move")
	}
	if got := r.metric(t, "rendezvous_relay_packets_total", map[string]string{"direction": "from_peer"}); got < 15 {
		t.Errorf("packets_total{from_peer} = %v, want ≥ 15", got)
	}
	if got := r.metric(t, "rendezvous_relay_allocations_created_total", nil); got < 3 {
		t.Errorf("allocations_created_total = %v, want ≥ 3", got)
	}
}

// Acceptance 1: two clients relayed by this same server reach each other
// with the default peer filter (relay to relay, how two symmetric NATs meet).
func TestRelayToRelayDefaultFilter(t *testing.T) {
	r := startRelay(t, nil)
	for _, pair := range [][2]string{{"udp", "udp"}, {"tcp", "udp"}, {"tls", "tcp"}} {
		t.Run(pair[0]+"-"+pair[1], func(t *testing.T) {
			ca := pionClient(t, r, pair[0], "alice", "alice-pw")
			cb := pionClient(t, r, pair[1], "bob", "bob-pw")
			ra, err := ca.Allocate()
			if err != nil {
				t.Fatal(err)
			}
			defer ra.Close()
			rb, err := cb.Allocate()
			if err != nil {
				t.Fatal(err)
			}
			defer rb.Close()
			relayBothWays(t, ra, rb)
		})
	}
}

// relayBothWays sends three messages each way between two allocations of
// this relay and checks content and source.
func relayBothWays(t *testing.T, ra, rb net.PacketConn) {
	t.Helper()
	// b opens its permission for a first (a has none yet, so the relay drops this one).
	if _, err := rb.WriteTo([]byte("opening"), ra.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		msg := []byte(fmt.Sprintf("a to b %d", i))
		if _, err := ra.WriteTo(msg, rb.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		got, from := readRelay(t, rb)
		if !bytes.Equal(got, msg) || from.String() != ra.LocalAddr().String() {
			t.Fatalf("b got %q from %v, want %q from %v", got, from, msg, ra.LocalAddr())
		}
		back := []byte(fmt.Sprintf("b to a %d", i))
		if _, err := rb.WriteTo(back, ra.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		got, from = readRelay(t, ra)
		if string(got) == "opening" { // raced a's permission; legal either way
			got, from = readRelay(t, ra)
		}
		if !bytes.Equal(got, back) || from.String() != rb.LocalAddr().String() {
			t.Fatalf("a got %q from %v, want %q from %v", got, from, back, rb.LocalAddr())
		}
	}
}

// Acceptance 1: refresh, and another user can neither refresh nor use
// someone else's allocation. pion answers such requests with silence; a
// request of the owner sent right after, on the same socket and read loop,
// proves there was no answer to the intruder.
func TestRefreshAndOwnership(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.1/32"} })
	c := dialRaw(t, r, "udp")
	relayed := mustAllocate(t, c, "alice", "alice-pw")

	m := c.do(stun.MethodRefresh, lifetimeAttr(300))
	if code, reason := errorCode(t, m); code != 0 {
		t.Fatalf("Refresh: %d %s", code, reason)
	}
	var lt [4]byte
	if v, err := m.Get(stun.AttrLifetime); err != nil || len(v) != 4 {
		t.Fatalf("Refresh response without LIFETIME: %v", err)
	} else {
		copy(lt[:], v)
	}
	if got := uint32(lt[0])<<24 | uint32(lt[1])<<16 | uint32(lt[2])<<8 | uint32(lt[3]); got != 300 {
		t.Fatalf("LIFETIME = %d, want 300", got)
	}

	// Bob, from alice's own 5-tuple, tries to delete, refresh and extend alice's allocation.
	owner := c.user
	ownerKey := c.key
	c.login("bob", "bob-pw", c.realm, c.nonce)
	bobRefresh := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodRefresh, stun.ClassRequest), lifetimeAttr(0),
		stun.NewUsername("bob"), stun.NewRealm(c.realm), stun.NewNonce(c.nonce), stun.MessageIntegrity(c.key))
	c.send(bobRefresh.Raw)
	bobPerm := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodCreatePermission, stun.ClassRequest),
		peerAttr(netip.MustParseAddrPort("127.0.0.1:9")),
		stun.NewUsername("bob"), stun.NewRealm(c.realm), stun.NewNonce(c.nonce), stun.MessageIntegrity(c.key))
	c.send(bobPerm.Raw)
	c.user, c.key = owner, ownerKey
	peer := udpPeer(t, "127.0.0.1")
	peerAP := netx.AddrPortOf(peer.LocalAddr())
	m = c.do(stun.MethodCreatePermission, peerAttr(peerAP))
	if code, reason := errorCode(t, m); code != 0 {
		t.Fatalf("owner's CreatePermission after bob's attempts: %d %s", code, reason)
	}
	// do() skipped nothing with bob's transaction IDs only if none arrived; check the relay still
	// relays for alice, i.e. bob's zero-lifetime Refresh did not delete it.
	c.sendIndication(peerAP, []byte("still mine"))
	if got, from := readPeer(t, peer); string(got) != "still mine" || from != relayed {
		t.Fatalf("peer got %q from %v, want the allocation at %v alive", got, from, relayed)
	}
	if got := r.metric(t, "rendezvous_relay_allocations", nil); got != 1 {
		t.Fatalf("allocations = %v, want 1", got)
	}

	// A fresh client as bob cannot send through alice's relayed address either: his data
	// goes only through his own allocation, and alice's has no permission for him.
	b := dialRaw(t, r, "udp")
	bobRelay := mustAllocate(t, b, "bob", "bob-pw")
	if bobRelay == relayed {
		t.Fatal("bob got alice's relayed address")
	}

	// Refresh with lifetime 0 by the owner deletes it.
	m = c.do(stun.MethodRefresh, lifetimeAttr(0))
	if code, reason := errorCode(t, m); code != 0 {
		t.Fatalf("Refresh 0: %d %s", code, reason)
	}
	eventually(t, "alice's allocation to end", func() bool {
		return r.metric(t, "rendezvous_relay_allocations", nil) == 1
	})
}

// Acceptance 1: an allocation that is not refreshed expires.
func TestExpiry(t *testing.T) {
	r := startRelay(t, nil)
	c := dialRaw(t, r, "udp")
	mustAllocate(t, c, "alice", "alice-pw", lifetimeAttr(1))
	if got := r.metric(t, "rendezvous_relay_allocations", nil); got != 1 {
		t.Fatalf("allocations = %v, want 1", got)
	}
	eventually(t, "the allocation to expire", func() bool {
		return r.metric(t, "rendezvous_relay_allocations", nil) == 0
	})
	if got := r.metric(t, "rendezvous_relay_allocation_lifetime_seconds", nil); got != 1 {
		t.Fatalf("lifetime histogram count = %v, want 1", got)
	}
	// The 5-tuple is free again: a new Allocate succeeds.
	mustAllocate(t, c, "alice", "alice-pw")
}

// Acceptance 1: quotas answer 486.
func TestQuota486(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.UserQuota = 2; c.TotalQuota = 3 })
	mustAllocate(t, dialRaw(t, r, "udp"), "alice", "alice-pw")
	mustAllocate(t, dialRaw(t, r, "tcp"), "alice", "alice-pw")
	m := dialRaw(t, r, "udp").allocate("alice", "alice-pw")
	if code, _ := errorCode(t, m); code != stun.CodeAllocQuotaReached {
		t.Fatalf("third allocation of alice: code %d, want 486", code)
	}
	mustAllocate(t, dialRaw(t, r, "udp"), "bob", "bob-pw")
	m = dialRaw(t, r, "tls").allocate("bob", "bob-pw")
	if code, _ := errorCode(t, m); code != stun.CodeAllocQuotaReached {
		t.Fatalf("allocation past the total quota: code %d, want 486", code)
	}
	if got := r.metric(t, "rendezvous_relay_allocations_refused_total", map[string]string{"reason": "user_quota"}); got != 1 {
		t.Errorf("refused{user_quota} = %v, want 1", got)
	}
	if got := r.metric(t, "rendezvous_relay_allocations_refused_total", map[string]string{"reason": "total_quota"}); got != 1 {
		t.Errorf("refused{total_quota} = %v, want 1", got)
	}
}

func TestPerIPQuota(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.MaxAllocationsPerIP = 1 })
	mustAllocate(t, dialRaw(t, r, "udp"), "alice", "alice-pw")
	m := dialRaw(t, r, "udp").allocate("bob", "bob-pw")
	if code, _ := errorCode(t, m); code != stun.CodeAllocQuotaReached {
		t.Fatalf("second allocation from 127.0.0.1: code %d, want 486", code)
	}
}

// Acceptance 1: REST credentials — expired ones get 401 with a reason
// phrase, a rotated secret is accepted, a removed one is not.
func TestRESTCredentialsAndRotation(t *testing.T) {
	oldSecret, newSecret := "old-secret", "new-secret"
	r := startRelay(t, func(c *Config) { c.AuthSecrets = []string{oldSecret} })
	now := time.Now()

	mint := func(secret string, ttl time.Duration) turncreds.Credential {
		cr, err := turncreds.Mint([]byte(secret), "carol", ttl, now)
		if err != nil {
			t.Fatal(err)
		}
		return cr
	}
	expired := turncreds.Credential{Username: fmt.Sprintf("%d:carol", now.Add(-time.Minute).Unix())}
	expired.Password = turncreds.Password([]byte(oldSecret), expired.Username)
	for _, transport := range []string{"udp", "tcp"} {
		m := dialRaw(t, r, transport).allocate(expired.Username, expired.Password)
		if code, reason := errorCode(t, m); code != stun.CodeUnauthorized || reason == "" {
			t.Fatalf("%s: expired credential: %d %q, want 401 with a reason phrase", transport, code, reason)
		}
	}
	if got := r.metric(t, "rendezvous_relay_auth_failures_total", map[string]string{"reason": "expired"}); got != 2 {
		t.Errorf("auth_failures{expired} = %v, want 2", got)
	}
	bad := mint(oldSecret, time.Hour)
	if m := dialRaw(t, r, "udp").allocate(bad.Username, "wrong"); func() bool { c, _ := errorCode(t, m); return c != stun.CodeUnauthorized }() {
		t.Fatal("wrong password accepted")
	}
	if got := r.metric(t, "rendezvous_relay_auth_failures_total", map[string]string{"reason": "bad_password"}); got != 1 {
		t.Errorf("auth_failures{bad_password} = %v, want 1", got)
	}

	// Rotation: add the new secret; both work, over UDP and TCP.
	cfg := r.srv.cfg
	cfg.AuthSecrets = []string{newSecret, oldSecret}
	if err := r.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for _, transport := range []string{"udp", "tcp", "tls"} {
		for _, secret := range []string{oldSecret, newSecret} {
			cr := mint(secret, time.Hour)
			c := dialRaw(t, r, transport)
			mustAllocate(t, c, cr.Username, cr.Password)
			// A later request on the allocation also verifies (key picked per request).
			if code, reason := errorCode(t, c.do(stun.MethodRefresh, lifetimeAttr(120))); code != 0 {
				t.Fatalf("%s, secret %s: Refresh %d %s", transport, secret, code, reason)
			}
		}
	}
	// Remove the old one: its credentials now fail, the new ones still work.
	cfg.AuthSecrets = []string{newSecret}
	if err := r.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	old := mint(oldSecret, time.Hour)
	if code, _ := errorCode(t, dialRaw(t, r, "udp").allocate(old.Username, old.Password)); code != stun.CodeUnauthorized {
		t.Fatalf("credential of a removed secret: code %d, want 401", code)
	}
	cr := mint(newSecret, time.Hour)
	mustAllocate(t, dialRaw(t, r, "udp"), cr.Username, cr.Password)
}

func TestUnknownUserGets401NotBadRequest(t *testing.T) {
	r := startRelay(t, nil)
	m := dialRaw(t, r, "udp").allocate("mallory", "guess")
	if code, reason := errorCode(t, m); code != stun.CodeUnauthorized || reason == "" {
		t.Fatalf("unknown user: %d %q, want 401 with a reason phrase", code, reason)
	}
}

func TestFailedAuthRateLimit(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.AuthFailuresPerMinute = 3 })
	for range 3 {
		dialRaw(t, r, "udp").allocate("alice", "wrong")
	}
	// The right password is now refused too, for this IP, until the window refills.
	m := dialRaw(t, r, "udp").allocate("alice", "alice-pw")
	if code, _ := errorCode(t, m); code != stun.CodeUnauthorized {
		t.Fatalf("after 3 failures: code %d, want 401", code)
	}
	if got := r.metric(t, "rendezvous_relay_auth_failures_total", map[string]string{"reason": "rate_limited"}); got < 1 {
		t.Fatalf("auth_failures{rate_limited} = %v, want ≥ 1", got)
	}
}

// Acceptance 1: data to the server's own address is dropped unless it goes
// to a live relay port.
func TestOwnAddressOutsideRelayPortsDropped(t *testing.T) {
	r := startRelay(t, nil)
	c := dialRaw(t, r, "udp")
	relayed := mustAllocate(t, c, "alice", "alice-pw")
	// A service on the relay's own IP (here the relay's TURN port, and a plain socket).
	victim := udpPeer(t, relayIP)
	victimAP := netx.AddrPortOf(victim.LocalAddr())
	if code, reason := errorCode(t, c.do(stun.MethodCreatePermission, peerAttr(victimAP))); code != 0 {
		t.Fatalf("CreatePermission for the relay's own IP: %d %s (permissions carry no port; the check is on send)", code, reason)
	}
	c.sendIndication(victimAP, []byte("ssrf"))
	c.sendIndication(r.addr, []byte("loop"))
	eventually(t, "two own-address drops", func() bool {
		return r.metric(t, "rendezvous_relay_dropped_packets_total", map[string]string{"reason": "own_address"}) == 2
	})
	// A second allocation's relay port on the same IP is reachable.
	c2 := dialRaw(t, r, "udp")
	relayed2 := mustAllocate(t, c2, "bob", "bob-pw")
	if code, _ := errorCode(t, c2.do(stun.MethodCreatePermission, peerAttr(relayed))); code != 0 {
		t.Fatal("CreatePermission to the other relay")
	}
	c.sendIndication(relayed2, []byte("relay to relay"))
	if got, from := c2.recvData(); string(got) != "relay to relay" || from != relayed {
		t.Fatalf("got %q from %v", got, from)
	}
	_ = victim.SetReadDeadline(time.Now())
	if n, _, err := victim.ReadFrom(make([]byte, 64)); err == nil {
		t.Fatalf("the service on the relay's own address received %d bytes", n)
	}
}

func TestReloadNeedsRestart(t *testing.T) {
	r := startRelay(t, nil)
	cfg := r.srv.cfg
	cfg.Listen = relayIP + ":3479"
	err := r.srv.Reload(cfg)
	if err == nil || !strings.Contains(err.Error(), "listen") || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("Reload with a new listen address: %v, want an error naming listen and restart", err)
	}
	cfg = r.srv.cfg
	cfg.AllowPeers = []string{"not-a-cidr"}
	if err := r.srv.Reload(cfg); err == nil || !strings.Contains(err.Error(), "allow-peers") {
		t.Fatalf("Reload with a bad allow-peers: %v", err)
	}
}

// RFC 6156: IPv6 allocations relay both ways (two IPv6 allocations of this
// server, the only IPv6 peers a loopback test has).
func TestIPv6RelayToRelay(t *testing.T) {
	r := startRelay(t, nil)
	a, b := dialRaw(t, r, "udp"), dialRaw(t, r, "tcp")
	ra := mustAllocate(t, a, "alice", "alice-pw", familyAttr(true))
	rb := mustAllocate(t, b, "bob", "bob-pw", familyAttr(true))
	if !ra.Addr().Is6() || !rb.Addr().Is6() {
		t.Fatalf("relayed addresses %v, %v: want IPv6", ra, rb)
	}
	for _, p := range []struct {
		c    *rawClient
		peer netip.AddrPort
	}{{a, rb}, {b, ra}} {
		if code, reason := errorCode(t, p.c.do(stun.MethodCreatePermission, peerAttr(p.peer))); code != 0 {
			t.Fatalf("CreatePermission %v: %d %s", p.peer, code, reason)
		}
	}
	a.sendIndication(rb, []byte("v6 a to b"))
	if got, from := b.recvData(); string(got) != "v6 a to b" || from != ra {
		t.Fatalf("b got %q from %v", got, from)
	}
	b.sendIndication(ra, []byte("v6 b to a"))
	if got, from := a.recvData(); string(got) != "v6 b to a" || from != rb {
		t.Fatalf("a got %q from %v", got, from)
	}
}

// Reload re-reads the certificate files, so a renewed certificate is served
// without a restart.
func TestReloadRenewsCertificate(t *testing.T) {
	r := startRelay(t, nil)
	cfg := r.srv.cfg
	newCert, newKey, newPEM := writeCert(t)
	for dst, src := range map[string]string{cfg.CertFile: newCert, cfg.KeyFile: newKey} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(newPEM)
	c, err := tls.Dial("tcp", r.tlsAddr.String(), &tls.Config{RootCAs: pool, ServerName: relayIP})
	if err != nil {
		t.Fatalf("TLS with the renewed certificate: %v", err)
	}
	c.Close()
}

// The per-allocation bandwidth cap drops what exceeds the token bucket.
func TestBandwidthLimit(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.1/32"}; c.BandwidthLimit = 1000 })
	c := dialRaw(t, r, "udp")
	mustAllocate(t, c, "alice", "alice-pw")
	peer := udpPeer(t, "127.0.0.1")
	peerAP := netx.AddrPortOf(peer.LocalAddr())
	if code, _ := errorCode(t, c.do(stun.MethodCreatePermission, peerAttr(peerAP))); code != 0 {
		t.Fatal("CreatePermission")
	}
	payload := make([]byte, 1000)
	const sent = 100 // 100 kB against a 64 KiB burst and 1 kB/s
	for range sent {
		c.sendIndication(peerAP, payload)
	}
	eventually(t, "the relay to process every packet", func() bool {
		return r.metric(t, "rendezvous_relay_packets_total", map[string]string{"direction": "to_peer"})+
			r.metric(t, "rendezvous_relay_dropped_packets_total", map[string]string{"reason": "bandwidth"}) == sent
	})
	passed := r.metric(t, "rendezvous_relay_packets_total", map[string]string{"direction": "to_peer"})
	if passed < 60 || passed > 70 {
		t.Fatalf("%v of %d packets passed a 64 KiB burst, want about 65", passed, sent)
	}
}

// max-allocation-duration ends an allocation however it is refreshed.
func TestMaxAllocationDuration(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.MaxAllocationDuration = 500 * time.Millisecond })
	mustAllocate(t, dialRaw(t, r, "udp"), "alice", "alice-pw")
	eventually(t, "the allocation to be ended", func() bool {
		return r.metric(t, "rendezvous_relay_allocations", nil) == 0
	})
}

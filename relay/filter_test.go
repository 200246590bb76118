package relay

import (
	"net"
	"net/netip"
	"testing"

	"github.com/pion/stun/v4"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
)

// deniedPeers is every address class of the deny list, in its IPv4, IPv6,
// IPv4-mapped and embedded (NAT64, 6to4, Teredo, IPv4-compatible) spellings.
var deniedPeers = []string{
	"127.0.0.1", "127.255.255.254", "0.0.0.0", "0.1.2.3",
	"10.0.0.1", "172.16.0.1", "172.31.255.254", "192.168.1.1",
	"100.64.0.1", "100.127.255.254",
	"169.254.169.254", "169.254.0.1",
	"192.0.0.8", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
	"::", "fe80::1", "febf::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1", "fec0::1",
	"::ffff:127.0.0.1", "::ffff:0.0.0.0", "::ffff:10.1.2.3", "::ffff:169.254.169.254", "::ffff:192.168.0.1",
	"64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "64:ff9b::c0a8:101",
	"64:ff9b:1::1", "64:ff9b:1:ffff::a00:1",
	"2002:7f00:1::1", "2002:a9fe:a9fe::1", "2002:c0a8:101::",
	"2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1
	"::127.0.0.1", "::10.0.0.1",
}

func TestPeerFilterTable(t *testing.T) {
	f, err := newPeerFilter(nil, nil, []netip.Addr{netip.MustParseAddr("203.0.113.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append([]string{"::1"}, deniedPeers...) { // ::1 is the TURN tests' own IPv6 relay address
		if r := f.check(netip.MustParseAddr(s)); r == "" {
			t.Errorf("%s allowed, want refused", s)
		}
	}
	for _, s := range []string{"8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1",
		"::ffff:8.8.8.8", "203.0.113.1", "100.128.0.1", "172.32.0.1", "192.0.1.1"} {
		if r := f.check(netip.MustParseAddr(s)); r != "" {
			t.Errorf("%s refused (%s), want allowed", s, r)
		}
	}

	f, err = newPeerFilter([]string{"10.0.0.0/8", "::ffff:192.168.7.0/120"}, []string{"10.9.0.0/16", "8.8.8.8"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{
		"10.1.2.3": true, "::ffff:10.1.2.3": true, "64:ff9b::a01:203": true, "192.168.7.9": true,
		"10.9.1.1": false, "8.8.8.8": false, "::ffff:8.8.8.8": false, "192.168.8.1": false, "127.0.0.1": false,
	} {
		if got := f.check(netip.MustParseAddr(s)) == ""; got != want {
			t.Errorf("with allow/deny lists, %s allowed = %v, want %v", s, got, want)
		}
	}
	// The host's own addresses: the relay's pass (port-checked on send), the
	// others are refused even when allow-listed, and no translator reaches either.
	f, err = newPeerFilter([]string{"198.51.100.0/24"}, nil, []netip.Addr{netip.MustParseAddr("203.0.113.1")},
		[]netip.Addr{netip.MustParseAddr("198.51.100.7")})
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{
		"203.0.113.1": true, "::ffff:203.0.113.1": true, "198.51.100.8": true,
		"198.51.100.7": false, "::ffff:198.51.100.7": false, "64:ff9b::cb00:7101": false, "2002:cb00:7101::1": false,
		"64:ff9b::c633:6407": false,
	} {
		if got := f.check(netip.MustParseAddr(s)) == ""; got != want {
			t.Errorf("with own addresses, %s allowed = %v, want %v", s, got, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "nonsense", "::ffff:10.0.0.0/90"} {
		if _, err := newPeerFilter([]string{bad}, nil, nil, nil); err == nil {
			t.Errorf("allow-peers %q accepted", bad)
		}
	}
}

// peerFamily says which allocation family carries peer on the wire: an
// IPv4-mapped address travels as IPv6 bytes but pion treats it as IPv4.
func peerFamily(a netip.Addr) (v6 bool) { return a.Is6() && !a.Is4In6() }

// Acceptance 2: every deny-list class, sent as a peer by UDP, TCP and TLS
// clients in CreatePermission, ChannelBind and (TCP allocations) Connect, is
// refused; an allow-listed subnet works.
func TestPeerFilterThroughTURN(t *testing.T) {
	r := startRelay(t, nil)
	var refused int
	for _, transport := range []string{"udp", "tcp", "tls"} {
		clients := map[bool]*rawClient{}
		for _, v6 := range []bool{false, true} {
			c := dialRaw(t, r, transport)
			mustAllocate(t, c, "alice", "alice-pw", familyAttr(v6))
			clients[v6] = c
		}
		var tcpClients map[bool]*rawClient
		if transport != "udp" {
			tcpClients = map[bool]*rawClient{}
			for _, v6 := range []bool{false, true} {
				c := dialRaw(t, r, transport)
				c.proto = 6
				mustAllocate(t, c, "bob", "bob-pw", familyAttr(v6))
				tcpClients[v6] = c
			}
		}
		for i, s := range deniedPeers {
			peer := netip.AddrPortFrom(netip.MustParseAddr(s), 4000)
			v6 := peerFamily(peer.Addr())
			c := clients[v6]
			if code, _ := errorCode(t, c.do(stun.MethodCreatePermission, peerAttr(peer))); code != stun.CodeForbidden {
				t.Errorf("%s CreatePermission %s: code %d, want 403", transport, s, code)
			}
			refused++
			cb := c.do(stun.MethodChannelBind, channelAttr(0x4000+uint16(i)), peerAttr(peer))
			if code, _ := errorCode(t, cb); code != stun.CodeForbidden {
				t.Errorf("%s ChannelBind %s: code %d, want 403", transport, s, code)
			} else if err := stun.MessageIntegrity(c.key).Check(cb); err != nil {
				t.Errorf("%s ChannelBind %s: 403 not signed with the client's key: %v", transport, s, err)
			}
			refused++
			if tcpClients != nil {
				if code, _ := errorCode(t, tcpClients[v6].do(stun.MethodConnect, peerAttr(peer))); code != stun.CodeForbidden {
					t.Errorf("%s Connect %s: code %d, want 403", transport, s, code)
				}
				refused++
			}
		}
	}
	if got := r.metric(t, "rendezvous_relay_peers_refused_total", nil); int(got) != refused {
		t.Errorf("peers_refused_total = %v, want %d (every refusal counted)", got, refused)
	}
	if got := r.metric(t, "rendezvous_relay_peers_refused_total", map[string]string{"reason": "embedded-loopback"}); got == 0 {
		t.Error("no refusal counted as embedded-loopback")
	}
}

func TestAllowPeersOpensASubnet(t *testing.T) {
	r := startRelay(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.0/8"} })
	peer := udpPeer(t, "127.0.0.1")
	peerAP := netx.AddrPortOf(peer.LocalAddr())
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, transport := range []string{"udp", "tcp", "tls"} {
		c := dialRaw(t, r, transport)
		relayed := mustAllocate(t, c, "alice", "alice-pw")
		if code, reason := errorCode(t, c.do(stun.MethodCreatePermission, peerAttr(peerAP))); code != 0 {
			t.Fatalf("%s: CreatePermission to allow-listed %v: %d %s", transport, peerAP, code, reason)
		}
		if code, reason := errorCode(t, c.do(stun.MethodChannelBind, channelAttr(0x4001), peerAttr(peerAP))); code != 0 {
			t.Fatalf("%s: ChannelBind to allow-listed %v: %d %s", transport, peerAP, code, reason)
		}
		c.sendIndication(peerAP, []byte("hello lan"))
		if got, from := readPeer(t, peer); string(got) != "hello lan" || from != relayed {
			t.Fatalf("%s: peer got %q from %v", transport, got, from)
		}
		if transport == "udp" {
			continue
		}
		tc := dialRaw(t, r, transport)
		tc.proto = 6
		mustAllocate(t, tc, "bob", "bob-pw")
		if code, reason := errorCode(t, tc.do(stun.MethodConnect, peerAttr(netx.AddrPortOf(ln.Addr())))); code != 0 {
			t.Fatalf("%s: Connect to allow-listed TCP peer: %d %s", transport, code, reason)
		}
		pc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		pc.Close()
	}
}

// The host's own addresses other than the relay's are refused even inside an
// allow-listed subnet (here: the TURN listen IP, with relay sockets elsewhere).
func TestHostAddressRefused(t *testing.T) {
	r := startRelay(t, func(c *Config) {
		c.RelayAddress = "127.0.0.4"
		c.AllowPeers = []string{"127.0.0.0/8"}
	})
	c := dialRaw(t, r, "udp")
	relayed := mustAllocate(t, c, "alice", "alice-pw")
	if relayed.Addr().String() != "127.0.0.4" {
		t.Fatalf("relayed address %v, want on 127.0.0.4", relayed)
	}
	if code, _ := errorCode(t, c.do(stun.MethodCreatePermission, peerAttr(r.addr))); code != stun.CodeForbidden {
		t.Fatalf("CreatePermission to the TURN listen address %v: code %d, want 403", r.addr, code)
	}
	if code, _ := errorCode(t, c.do(stun.MethodCreatePermission, peerAttr(netip.MustParseAddrPort("127.0.0.1:9")))); code != 0 {
		t.Fatalf("CreatePermission to allow-listed 127.0.0.1: code %d", code)
	}
	if got := r.metric(t, "rendezvous_relay_peers_refused_total", map[string]string{"reason": "own-address"}); got != 1 {
		t.Fatalf("peers_refused{own-address} = %v, want 1", got)
	}
}

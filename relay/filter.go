package relay

import (
	"fmt"
	"net/netip"
	"slices"
)

// The peer filter decides which peer addresses a client may reach through the
// relay. An open relay on a VPS is an SSRF hole into the operator's network
// (coturn CVE-2020-26262: peer 0.0.0.0 / [::] bypassed the loopback deny;
// CVE-2026-27624: ::ffff:127.0.0.1 bypassed it), so everything that is not a
// public unicast address is refused unless the operator allows it.
//
// Order: deny-peers, then allow-peers, then the built-in deny list. IPv4-mapped
// IPv6 is unmapped first; NAT64 (64:ff9b::/96), 6to4 (2002::/16) and Teredo
// (2001::/32) addresses are judged by the IPv4 address they embed as well.
// The relay's own relay addresses pass here (TURN permissions carry no port)
// and are limited to live relay ports where data is sent (see relayConn); the
// host's other addresses (listen IP, interfaces) are refused outright.

// deniedPrefixes is the built-in deny list, with the refusal reason each maps to.
var deniedPrefixes = []struct {
	prefix netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "cgnat"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "special"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"}, // includes 255.255.255.255
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::/96"), "special"}, // deprecated IPv4-compatible
	{netip.MustParsePrefix("64:ff9b:1::/48"), "nat64"},
	{netip.MustParsePrefix("fc00::/7"), "private"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "link-local"}, // deprecated site-local
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

var (
	nat64Prefix  = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour    = netip.MustParsePrefix("2002::/16")
	teredoPrefix = netip.MustParsePrefix("2001::/32")
)

// peerFilter is immutable; Reload swaps in a new one.
type peerFilter struct {
	allow, deny []netip.Prefix
	relayIPs    []netip.Addr // where relay sockets live: pass here, port-checked on send
	hostIPs     []netip.Addr // the host's other addresses: refused
}

func newPeerFilter(allow, deny []string, relayIPs, hostIPs []netip.Addr) (*peerFilter, error) {
	f := &peerFilter{relayIPs: relayIPs, hostIPs: hostIPs}
	for _, s := range allow {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("allow-peers: %w", err)
		}
		f.allow = append(f.allow, p)
	}
	for _, s := range deny {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("deny-peers: %w", err)
		}
		f.deny = append(f.deny, p)
	}
	return f, nil
}

// parsePrefix accepts a CIDR or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return netip.Prefix{}, fmt.Errorf("%q: an IPv4-mapped prefix needs at least 96 bits", s)
			}
			return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked(), nil
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an IP address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// check returns "" when a client may reach peer, else the refusal reason.
func (f *peerFilter) check(peer netip.Addr) string {
	peer = peer.Unmap()
	if !peer.IsValid() {
		return "invalid"
	}
	for _, p := range f.deny {
		if p.Contains(peer) {
			return "deny-peers"
		}
	}
	for _, o := range f.relayIPs {
		if o == peer {
			return "" // relay to relay; the port is checked when data is sent
		}
	}
	for _, o := range f.hostIPs {
		if o == peer {
			return "own-address"
		}
	}
	for _, p := range f.allow {
		if p.Contains(peer) {
			return ""
		}
	}
	for _, d := range deniedPrefixes {
		if d.prefix.Contains(peer) {
			return d.reason
		}
	}
	if v4, ok := embeddedIPv4(peer); ok {
		// The relay-to-relay exemption is for the relay's own addresses as
		// such; through a translator they would reach any port.
		if slices.Contains(f.relayIPs, v4) {
			return "embedded-own-address"
		}
		if r := f.check(v4); r != "" {
			return "embedded-" + r
		}
	}
	return ""
}

// embeddedIPv4 extracts the IPv4 address a NAT64, 6to4 or Teredo address
// carries, where the network would deliver a packet sent to it.
func embeddedIPv4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	switch {
	case nat64Prefix.Contains(a):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	case teredoPrefix.Contains(a):
		// RFC 4380: the client's IPv4 is the last 32 bits, inverted; data goes there.
		client := netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		return client, true
	}
	return netip.Addr{}, false
}

package natlab

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RouterHost is a built router: a namespace with a WAN interface (rz-wan) on
// the internet segment and a LAN interface (rz-lan) on its LAN bridge.
//
// Its nftables table "inet rzlab" is:
//   - map mappings: public UDP port -> LAN address . port, filled in
//     postrouting from every outbound flow (after masquerade chose the port);
//     full cone DNATs inbound UDP through it, address-restricted only when
//     set peers (public port . remote address) holds the sender, and hairpin
//     DNATs LAN packets to the public address through it.
//   - chain forward/input: on the WAN, only established/related flows and
//     flows DNATed by a mapping pass; everything else new is dropped so that
//     an early packet from a peer creates no conntrack entry (which would make
//     masquerade pick another port for the LAN socket's own flow later).
//   - sets blocked4/6 and blockedudp4/6: runtime cuts (Block, BlockUDP).
//
// IPv6 is routed (no NAT): the same forward chain is the stateful firewall.
type RouterHost struct {
	*Host
	spec       Router
	index      int
	wan, wan6  netip.Addr
	lan, lan6  netip.Prefix
	mapTimeout time.Duration
}

// Spec is the router's topology entry.
func (r *RouterHost) Spec() Router { return r.spec }

// Name is the router's topology name.
func (r *RouterHost) Name() string { return r.spec.Name }

// Public is the router's public IPv4 address (its WAN address).
func (r *RouterHost) Public() netip.Addr { return r.wan }

// Public6 is the router's IPv6 WAN address.
func (r *RouterHost) Public6() netip.Addr { return r.wan6 }

// LAN is the router's IPv4 LAN prefix.
func (r *RouterHost) LAN() netip.Prefix { return r.lan }

// LAN6 is the routed IPv6 prefix of the router's LAN.
func (r *RouterHost) LAN6() netip.Prefix { return r.lan6 }

// Hosts lists the hosts on the router's LAN (not multi-homed ones).
func (r *RouterHost) Hosts() []*Host { return append([]*Host(nil), r.lab.lans[r.spec.Name]...) }

// Expected is the behaviour the router's profile promises.
func (r *RouterHost) Expected() Behavior { return r.spec.NAT.Behavior(r.spec.Hairpin) }

func (r *RouterHost) ruleset() string {
	var s strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&s, format+"\n", args...) }
	timeout := r.spec.UDPTimeout
	if timeout == 0 {
		timeout = 120 * time.Second // the kernel's nf_conntrack_udp_timeout_stream
	}
	r.mapTimeout = timeout
	nat := r.spec.NAT != None
	w("table inet rzlab {")
	w("  set blocked4 { type ipv4_addr; flags interval; }")
	w("  set blocked6 { type ipv6_addr; flags interval; }")
	w("  set blockedudp4 { type ipv4_addr; flags interval; }")
	w("  set blockedudp6 { type ipv6_addr; flags interval; }")
	w("  chain cut { type filter hook forward priority filter - 10; policy accept;")
	w("    ip daddr @blocked4 drop")
	w("    ip saddr @blocked4 drop")
	w("    ip6 daddr @blocked6 drop")
	w("    ip6 saddr @blocked6 drop")
	w("    meta l4proto udp ip daddr @blockedudp4 drop")
	w("    meta l4proto udp ip saddr @blockedudp4 drop")
	w("    meta l4proto udp ip6 daddr @blockedudp6 drop")
	w("    meta l4proto udp ip6 saddr @blockedudp6 drop")
	w("  }")
	if !nat {
		w("}")
		return s.String()
	}
	sec := int(timeout / time.Second)
	w("  map mappings { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout %ds; }", sec)
	if r.spec.NAT == AddressRestricted {
		w("  set peers { type inet_service . ipv4_addr; flags dynamic,timeout; timeout %ds; }", sec)
	}
	w("  chain prerouting { type nat hook prerouting priority dstnat; policy accept;")
	switch r.spec.NAT {
	case FullCone:
		w(`    iifname "rz-wan" ip daddr %s udp dport @mappings dnat ip to udp dport map @mappings`, r.wan)
	case AddressRestricted:
		w(`    iifname "rz-wan" ip daddr %s udp dport . ip saddr @peers dnat ip to udp dport map @mappings`, r.wan)
	}
	if r.spec.Hairpin {
		w(`    iifname "rz-lan" ip daddr %s udp dport @mappings dnat ip to udp dport map @mappings`, r.wan)
	}
	w("  }")
	random := ""
	if r.spec.NAT == Symmetric {
		random = " random"
	}
	w("  chain postrouting { type nat hook postrouting priority srcnat; policy accept;")
	w(`    oifname "rz-wan" meta nfproto ipv4 masquerade%s`, random)
	if r.spec.Hairpin {
		// The hairpinned packet leaves with the router's public address as
		// source, so the receiver answers through the router too.
		w(`    iifname "rz-lan" oifname "rz-lan" ct status dnat meta nfproto ipv4 snat ip to %s%s`, r.wan, random)
	}
	w("  }")
	// Runs after masquerade chose the public port (ct reply proto-dst).
	w("  chain record { type filter hook postrouting priority srcnat + 10; policy accept;")
	w(`    oifname "rz-wan" meta nfproto ipv4 meta l4proto udp ct direction original update @mappings { ct reply proto-dst : ct original ip saddr . ct original proto-src }`)
	w(`    oifname "rz-wan" meta nfproto ipv4 meta l4proto udp ct direction reply ct status dnat update @mappings { ct original proto-dst : ct reply ip saddr . ct reply proto-src }`)
	if r.spec.NAT == AddressRestricted {
		w(`    oifname "rz-wan" meta nfproto ipv4 meta l4proto udp ct direction original update @peers { ct reply proto-dst . ip daddr }`)
	}
	w("  }")
	w("  counter wandrop {}")
	w("  chain forward { type filter hook forward priority filter; policy accept;")
	w(`    iifname "rz-wan" ct state established,related accept`)
	w(`    iifname "rz-wan" ct status dnat accept`)
	w(`    iifname "rz-wan" counter name "wandrop" drop`)
	w("  }")
	w("  chain input { type filter hook input priority filter; policy accept;")
	w(`    iifname "rz-wan" ct state established,related accept`)
	w(`    iifname "rz-wan" meta l4proto { icmp, ipv6-icmp } accept`)
	w(`    iifname "rz-wan" counter name "wandrop" drop`)
	if !r.spec.Hairpin {
		w(`    iifname "rz-lan" ip daddr %s meta l4proto { tcp, udp } drop`, r.wan)
	}
	w("  }")
	w("}")
	return s.String()
}

// NFT runs nft commands in the router's namespace (one command per string,
// as `nft -f` reads them), e.g. "add rule inet rzlab cut ip daddr 203.0.113.1 drop".
// It fails the test on error.
func (r *RouterHost) NFT(t testing.TB, cmds ...string) {
	t.Helper()
	if err := nftApply(r.netns, strings.Join(cmds, "\n")+"\n"); err != nil {
		t.Fatalf("natlab: router %s: %v", r.spec.Name, err)
	}
}

// WANDrops is how many packets the router's firewall has dropped on the WAN
// (new inbound flows matching no mapping). Tests use it to know a packet
// reached the router and was dropped. Always 0 for None.
func (r *RouterHost) WANDrops(t testing.TB) uint64 {
	t.Helper()
	if r.spec.NAT == None {
		return 0
	}
	out, err := exec.Command("ip", "netns", "exec", r.netns, "nft", "list", "counter", "inet", "rzlab", "wandrop").CombinedOutput()
	if err != nil {
		t.Fatalf("natlab: router %s: nft list counter: %v: %s", r.spec.Name, err, out)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "packets" && i+1 < len(f) {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err == nil {
				return n
			}
		}
	}
	t.Fatalf("natlab: router %s: no packet count in %q", r.spec.Name, out)
	return 0
}

// WaitWANDrops waits until WANDrops exceeds n (deadline 5 s).
func (r *RouterHost) WaitWANDrops(t testing.TB, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.WANDrops(t) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("natlab: router %s dropped nothing on its WAN within 5s", r.spec.Name)
		}
		time.Sleep(5 * time.Millisecond) // polling a kernel counter that has no event
	}
}

// Ruleset returns the router's live nftables ruleset, for debugging output.
func (r *RouterHost) Ruleset() string {
	out, err := exec.Command("ip", "netns", "exec", r.netns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}

// Block drops all traffic the router forwards to or from the prefixes (both
// directions, established flows too) until the returned function is called
// (or the test ends). Use it to cut a direct path mid-session.
func (r *RouterHost) Block(t testing.TB, prefixes ...netip.Prefix) (unblock func()) {
	t.Helper()
	return r.block(t, "blocked", prefixes)
}

// BlockUDP is Block for UDP only.
func (r *RouterHost) BlockUDP(t testing.TB, prefixes ...netip.Prefix) (unblock func()) {
	t.Helper()
	return r.block(t, "blockedudp", prefixes)
}

// BlockServerUDP drops all UDP between the router's LAN and the server's
// addresses (a network that blocks STUN/TURN over UDP).
func (r *RouterHost) BlockServerUDP(t testing.TB) (unblock func()) {
	t.Helper()
	var ps []netip.Prefix
	for _, a := range r.lab.server.Addrs() {
		ps = append(ps, netip.PrefixFrom(a, a.BitLen()))
	}
	return r.BlockUDP(t, ps...)
}

func (r *RouterHost) block(t testing.TB, set string, prefixes []netip.Prefix) func() {
	t.Helper()
	var v4, v6 []string
	for _, p := range prefixes {
		if p.Addr().Is4() {
			v4 = append(v4, p.Masked().String())
		} else {
			v6 = append(v6, p.Masked().String())
		}
	}
	cmds := func(verb string) []string {
		var c []string
		if len(v4) > 0 {
			c = append(c, fmt.Sprintf("%s element inet rzlab %s4 { %s }", verb, set, strings.Join(v4, ", ")))
		}
		if len(v6) > 0 {
			c = append(c, fmt.Sprintf("%s element inet rzlab %s6 { %s }", verb, set, strings.Join(v6, ", ")))
		}
		return c
	}
	r.NFT(t, cmds("add")...)
	done := false
	unblock := func() {
		if done {
			return
		}
		done = true
		if err := nftApply(r.netns, strings.Join(cmds("delete"), "\n")+"\n"); err != nil {
			t.Errorf("natlab: router %s: unblock: %v", r.spec.Name, err)
		}
	}
	t.Cleanup(func() {
		if _, err := os.Stat("/run/netns/" + r.netns); err == nil {
			unblock()
		}
	})
	return unblock
}

// SetNetem replaces the netem qdisc on the router's WAN egress (a zero Netem
// removes it). Delay applies to packets leaving towards the internet; for a
// symmetric RTT add the same on the peer's router.
func (r *RouterHost) SetNetem(t testing.TB, n Netem) {
	t.Helper()
	RequireNetem(t)
	if err := r.setNetem(n); err != nil {
		t.Fatalf("natlab: %v", err)
	}
}

func (r *RouterHost) setNetem(n Netem) error {
	if n == (Netem{}) {
		out, err := exec.Command("tc", "-n", r.netns, "qdisc", "del", "dev", "rz-wan", "root").CombinedOutput()
		if err != nil && !bytes.Contains(out, []byte("No such file")) && !bytes.Contains(out, []byte("Cannot delete qdisc with handle of zero")) {
			return fmt.Errorf("router %s: tc qdisc del: %v: %s", r.spec.Name, err, bytes.TrimSpace(out))
		}
		return nil
	}
	args := []string{"-n", r.netns, "qdisc", "replace", "dev", "rz-wan", "root", "netem"}
	if n.Delay > 0 {
		args = append(args, "delay", fmt.Sprintf("%dus", n.Delay.Microseconds()))
		if n.Jitter > 0 {
			args = append(args, fmt.Sprintf("%dus", n.Jitter.Microseconds()))
		}
	}
	if n.Loss > 0 {
		args = append(args, "loss", strconv.FormatFloat(n.Loss, 'f', -1, 64)+"%")
	}
	if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("router %s: tc %s: %v: %s", r.spec.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

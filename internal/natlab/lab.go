package natlab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Lab is a set of network namespaces wired into an internet segment, a
// server, NAT routers with LANs, and hosts. Everything it creates lives in
// namespaces named with Prefix; t.Cleanup removes them.
type Lab struct {
	t        testing.TB
	prefix   string
	top      Topology
	server   *Server
	routers  []*RouterHost
	lans     map[string][]*Host // LAN name -> hosts (router LANs and plain LANs)
	multi    map[string]*Host
	nsNames  []string
	all      []*Host
	measured map[string]Measured
	// BuildTime is how long New took to wire the lab (before the self-check);
	// SelfCheckTime how long the self-check took.
	BuildTime, SelfCheckTime time.Duration
}

// Server is the public host on the internet segment, with two IPv4 and two
// IPv6 addresses (for RFC 5780 tests).
type Server struct {
	*Host
	addrs  [2]netip.Addr
	addrs6 [2]netip.Addr
}

// AltAddr is the server's second IPv4 address.
func (s *Server) AltAddr() netip.Addr { return s.addrs[1] }

// AltAddr6 is the server's second IPv6 address.
func (s *Server) AltAddr6() netip.Addr { return s.addrs6[1] }

// Addrs lists the server's addresses, IPv4 first.
func (s *Server) Addrs() []netip.Addr {
	return []netip.Addr{s.addrs[0], s.addrs[1], s.addrs6[0], s.addrs6[1]}
}

// Fixed addressing of the internet segment (documentation ranges only).
var (
	serverAddrs  = [2]netip.Addr{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")}
	serverAddrs6 = [2]netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")}
	serverNet    = netip.MustParsePrefix("203.0.113.0/24")
	wanNet       = netip.MustParsePrefix("198.51.100.0/24")
	internet6    = netip.MustParsePrefix("2001:db8::/64")
)

// Prefix is the namespace name prefix of this lab ("rzl<pid>-<id>-").
func (l *Lab) Prefix() string { return l.prefix }

// Server is the public server host.
func (l *Lab) Server() *Server { return l.server }

// Routers lists the routers in topology order.
func (l *Lab) Routers() []*RouterHost { return append([]*RouterHost(nil), l.routers...) }

// Router returns the named router; it fails the test when there is none.
func (l *Lab) Router(name string) *RouterHost {
	for _, r := range l.routers {
		if r.spec.Name == name {
			return r
		}
	}
	l.t.Fatalf("natlab: no router %q", name)
	return nil
}

// Host returns host i on the named LAN (a router's LAN or a plain LAN).
func (l *Lab) Host(lan string, i int) *Host {
	hosts, ok := l.lans[lan]
	if !ok || i < 0 || i >= len(hosts) {
		l.t.Fatalf("natlab: no host %d on LAN %q", i, lan)
	}
	return hosts[i]
}

// MultiHomed returns the named multi-homed host.
func (l *Lab) MultiHomed(name string) *Host {
	h, ok := l.multi[name]
	if !ok {
		l.t.Fatalf("natlab: no multi-homed host %q", name)
	}
	return h
}

// Namespaces lists every namespace of the lab.
func (l *Lab) Namespaces() []string { return append([]string(nil), l.nsNames...) }

// New builds the lab described by top, checks each router behaves as its
// profile says (unless top.SkipSelfCheck), and registers its removal with
// t.Cleanup. It first removes stale labs of dead test processes. It skips or
// fails the test through Require when labs cannot run here.
func New(t testing.TB, top Topology) *Lab {
	t.Helper()
	Require(t)
	if err := top.validate(); err != nil {
		t.Fatal(err)
	}
	for _, r := range top.Routers {
		if r.Netem != nil {
			RequireNetem(t)
		}
	}
	if removed, err := CleanStale(); err != nil {
		t.Logf("natlab: removing stale labs: %v", err)
	} else if len(removed) > 0 {
		t.Logf("natlab: removed %d namespaces of stale labs", len(removed))
	}
	start := time.Now()
	l := &Lab{t: t, prefix: newLabPrefix(), top: top, lans: map[string][]*Host{}, multi: map[string]*Host{}}
	b := l.plan()
	t.Cleanup(l.close)
	if err := b.run(l); err != nil {
		t.Fatalf("natlab: building lab %s: %v", l.prefix, err)
	}
	l.BuildTime = time.Since(start)
	if !top.SkipSelfCheck {
		start = time.Now()
		l.selfCheck(t)
		l.SelfCheckTime = time.Since(start)
	}
	for _, r := range l.routers {
		if r.spec.Netem != nil {
			if err := r.setNetem(*r.spec.Netem); err != nil {
				t.Fatalf("natlab: %v", err)
			}
		}
	}
	t.Logf("natlab: lab %s: %d namespaces built in %v, self-check %v", l.prefix, len(l.nsNames),
		l.BuildTime.Round(time.Millisecond), l.SelfCheckTime.Round(time.Millisecond))
	return l
}

// close kills what runs inside the lab and deletes its namespaces.
func (l *Lab) close() {
	for _, h := range l.all {
		if h.nsFile != nil {
			h.nsFile.Close()
		}
	}
	var present []string
	for _, n := range l.nsNames {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			present = append(present, n)
		}
	}
	killInside(present)
	var batch strings.Builder
	for _, n := range present {
		fmt.Fprintf(&batch, "netns del %s\n", n)
	}
	if batch.Len() > 0 {
		if err := ipBatch("", batch.String()); err != nil {
			l.t.Errorf("natlab: removing lab %s: %v", l.prefix, err)
		}
	}
}

// builder collects the commands that wire a lab.
type builder struct {
	netns   []string
	sysctls map[string][][2]string // netns -> (path under /proc/sys, value)
	veths   strings.Builder        // root batch: veths created directly in their namespaces
	perNS   map[string]*strings.Builder
	nft     map[string]string // router netns -> ruleset
	nveth   int
}

func (b *builder) addNS(name string, sysctls ...[2]string) {
	b.netns = append(b.netns, name)
	b.sysctls[name] = append([][2]string{
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_ra", "0"},
	}, sysctls...)
	b.cmd(name, "link set lo up")
}

func (b *builder) cmd(netns, format string, args ...any) {
	sb := b.perNS[netns]
	if sb == nil {
		sb = &strings.Builder{}
		b.perNS[netns] = sb
	}
	fmt.Fprintf(sb, format+"\n", args...)
}

// veth creates a pair with its ends directly in two namespaces (nothing
// appears in the root namespace). The ends get distinct ifindexes: in fresh
// namespaces both would be 2, and the kernel treats a link whose ifindex
// equals its peer's (iflink) as a non-urgent linkwatch event, delaying carrier
// (and bridge forwarding) by up to a second.
func (b *builder) veth(nsA, nameA, nsB, nameB string) {
	b.nveth++
	ia, ib := 2*b.nveth+8, 2*b.nveth+9
	fmt.Fprintf(&b.veths, "link add %s index %d netns %s type veth peer name %s index %d netns %s\n",
		nameA, ia, nsA, nameB, ib, nsB)
}

func (b *builder) bridge(netns string) {
	b.addNS(netns,
		[2]string{"net/bridge/bridge-nf-call-iptables", "0"},
		[2]string{"net/bridge/bridge-nf-call-ip6tables", "0"},
		[2]string{"net/bridge/bridge-nf-call-arptables", "0"})
	b.cmd(netns, "link add rz-br type bridge mcast_snooping 0")
	b.cmd(netns, "link set rz-br up")
}

func (b *builder) port(netns, ifname string) {
	b.cmd(netns, "link set %s master rz-br", ifname)
	b.cmd(netns, "link set %s up", ifname)
}

// nth is the n-th address of p (n small).
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr().As16()
	carry := n
	for i := 15; i >= 0 && carry > 0; i-- {
		s := int(a[i]) + carry
		a[i] = byte(s)
		carry = s >> 8
	}
	addr := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		addr = addr.Unmap()
	}
	return addr
}

func pfx(a netip.Addr, bits int) netip.Prefix { return netip.PrefixFrom(a, bits) }

func (l *Lab) newHost(label, netns string) *Host {
	h := &Host{lab: l, label: label, netns: netns}
	l.all = append(l.all, h)
	l.nsNames = append(l.nsNames, netns)
	return h
}

// plan decides names and addresses and collects the commands.
func (l *Lab) plan() *builder {
	b := &builder{sysctls: map[string][][2]string{}, perNS: map[string]*strings.Builder{}, nft: map[string]string{}}
	p := l.prefix
	top := l.top

	sw := p + "sw"
	b.bridge(sw)
	l.nsNames = append(l.nsNames, sw)

	// Server.
	srv := l.newHost("server", p+"srv")
	l.server = &Server{Host: srv, addrs: serverAddrs, addrs6: serverAddrs6}
	srv.ifaces = []Iface{{Name: "rz-wan", Addr: pfx(serverAddrs[0], 24), Addr6: pfx(serverAddrs6[0], 64)}}
	b.addNS(srv.netns)
	b.veth(sw, "rz-srv", srv.netns, "rz-wan")
	b.port(sw, "rz-srv")
	for i := range 2 {
		b.cmd(srv.netns, "addr add %s/24 dev rz-wan", serverAddrs[i])
		b.cmd(srv.netns, "addr add %s/64 dev rz-wan nodad", serverAddrs6[i])
	}
	b.cmd(srv.netns, "link set rz-wan up")
	b.cmd(srv.netns, "route add default dev rz-wan")
	internetNS := []string{srv.netns}

	// LAN switches: one per router and per plain LAN.
	lanSwitch := map[string]string{}
	lanV4 := map[string]netip.Prefix{}
	lanV6 := map[string]netip.Prefix{}
	lanGW := map[string][2]netip.Addr{}
	lanNext := map[string]int{} // next host address index

	for i, spec := range top.Routers {
		h := l.newHost("router "+spec.Name, p+"r-"+spec.Name)
		r := &RouterHost{Host: h, spec: spec, index: i}
		l.routers = append(l.routers, r)
		r.wan = nth(wanNet, i+1)
		r.wan6 = nth(internet6, 0x100+i)
		r.lan = spec.LAN
		if !r.lan.IsValid() {
			if spec.NAT == None {
				r.lan = netip.PrefixFrom(nth(netip.MustParsePrefix("192.0.2.0/24"), 16*(i%16)), 28)
			} else {
				r.lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i + 1), 0}), 24)
			}
		}
		r.lan = r.lan.Masked()
		r.lan6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, byte(i + 1)}), 64)
		h.ifaces = []Iface{
			{Name: "rz-wan", Addr: pfx(r.wan, 24), Addr6: pfx(r.wan6, 64)},
			{Name: "rz-lan", LAN: spec.Name, Addr: pfx(nth(r.lan, 1), r.lan.Bits()), Addr6: pfx(nth(r.lan6, 1), 64)},
		}
		b.addNS(h.netns,
			[2]string{"net/ipv4/ip_forward", "1"},
			[2]string{"net/ipv6/conf/all/forwarding", "1"})
		b.veth(sw, fmt.Sprintf("rz-r%d", i), h.netns, "rz-wan")
		b.port(sw, fmt.Sprintf("rz-r%d", i))
		b.cmd(h.netns, "addr add %s dev rz-wan", h.ifaces[0].Addr)
		b.cmd(h.netns, "addr add %s dev rz-wan nodad", h.ifaces[0].Addr6)
		b.cmd(h.netns, "link set rz-wan up")
		b.cmd(h.netns, "route add default dev rz-wan")

		lsw := p + "l-" + spec.Name
		b.bridge(lsw)
		l.nsNames = append(l.nsNames, lsw)
		lanSwitch[spec.Name] = lsw
		lanV4[spec.Name] = r.lan
		lanV6[spec.Name] = r.lan6
		lanGW[spec.Name] = [2]netip.Addr{nth(r.lan, 1), nth(r.lan6, 1)}
		lanNext[spec.Name] = 2
		b.veth(lsw, "rz-gw", h.netns, "rz-lan")
		b.port(lsw, "rz-gw")
		b.cmd(h.netns, "addr add %s dev rz-lan", h.ifaces[1].Addr)
		b.cmd(h.netns, "addr add %s dev rz-lan nodad", h.ifaces[1].Addr6)
		b.cmd(h.netns, "link set rz-lan up")
		b.nft[h.netns] = r.ruleset()
		internetNS = append(internetNS, h.netns)
	}
	// Internet routing: every internet node reaches every router's IPv6 LAN
	// prefix, and the IPv4 LAN of routers without NAT, through that router.
	for _, r := range l.routers {
		for _, ns := range internetNS {
			if ns == r.netns {
				continue
			}
			b.cmd(ns, "route add %s via %s dev rz-wan", r.lan6, r.wan6)
			if r.spec.NAT == None {
				b.cmd(ns, "route add %s via %s dev rz-wan onlink", r.lan, r.wan)
			}
		}
	}
	for k, spec := range top.LANs {
		lsw := p + "l-" + spec.Name
		b.bridge(lsw)
		l.nsNames = append(l.nsNames, lsw)
		lanSwitch[spec.Name] = lsw
		v4 := spec.Prefix
		if !v4.IsValid() {
			v4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(k + 1), 0}), 24)
		}
		lanV4[spec.Name] = v4.Masked()
		lanV6[spec.Name] = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, byte(k + 1)}), 64)
		lanNext[spec.Name] = 1
	}

	// Hosts on LANs.
	addLANIface := func(h *Host, lan string, portName string) Iface {
		idx := len(h.ifaces)
		ifname := fmt.Sprintf("rz-lan%d", idx)
		n := lanNext[lan]
		lanNext[lan]++
		ifc := Iface{Name: ifname, LAN: lan,
			Addr:  pfx(nth(lanV4[lan], n), lanV4[lan].Bits()),
			Addr6: pfx(nth(lanV6[lan], n), 64)}
		h.ifaces = append(h.ifaces, ifc)
		b.veth(lanSwitch[lan], portName, h.netns, ifname)
		b.port(lanSwitch[lan], portName)
		b.cmd(h.netns, "addr add %s dev %s", ifc.Addr, ifname)
		b.cmd(h.netns, "addr add %s dev %s nodad", ifc.Addr6, ifname)
		b.cmd(h.netns, "link set %s up", ifname)
		if idx == 0 {
			if gw, ok := lanGW[lan]; ok {
				b.cmd(h.netns, "route add default via %s", gw[0])
				b.cmd(h.netns, "route add default via %s", gw[1])
			}
		}
		return ifc
	}
	lanHosts := func(lan string, n int) {
		for j := range n {
			h := l.newHost(fmt.Sprintf("%s/%d", lan, j), fmt.Sprintf("%sh-%s-%d", p, lan, j))
			b.addNS(h.netns)
			addLANIface(h, lan, fmt.Sprintf("rz-h%d", j))
			l.lans[lan] = append(l.lans[lan], h)
		}
	}
	for _, spec := range top.Routers {
		l.lans[spec.Name] = nil
		lanHosts(spec.Name, spec.Hosts)
	}
	for _, spec := range top.LANs {
		l.lans[spec.Name] = nil
		lanHosts(spec.Name, spec.Hosts)
	}
	for m, spec := range top.MultiHomed {
		h := l.newHost(spec.Name, p+"m-"+spec.Name)
		b.addNS(h.netns)
		for _, lan := range spec.LANs {
			addLANIface(h, lan, fmt.Sprintf("rz-m%d", m))
		}
		l.multi[spec.Name] = h
	}
	return b
}

// netnsMu serialises namespace creation: the first `ip netns add` of a
// machine sets up the /run/netns mount, which concurrent calls can race on.
var netnsMu sync.Mutex

func (b *builder) run(l *Lab) error {
	var add strings.Builder
	for _, n := range b.netns {
		fmt.Fprintf(&add, "netns add %s\n", n)
	}
	netnsMu.Lock()
	err := ipBatch("", add.String())
	netnsMu.Unlock()
	if err != nil {
		return err
	}
	// Per-namespace sysctls go first: accept_dad=0 must be the default before
	// interfaces appear, so addresses (link-local too) are usable at once.
	for _, h := range l.all {
		f, err := os.Open(filepath.Join("/run/netns", h.netns))
		if err != nil {
			return err
		}
		h.nsFile = f
	}
	for _, n := range b.netns {
		if err := writeSysctls(n, b.sysctls[n]); err != nil {
			return err
		}
	}
	if err := ipBatch("", b.veths.String()); err != nil {
		return err
	}
	// Wire every namespace and load router rulesets in parallel.
	var wg sync.WaitGroup
	errs := make(chan error, len(b.perNS)+len(b.nft))
	errs2 := make(chan error, len(b.netns))
	for ns, cmds := range b.perNS {
		wg.Go(func() {
			if err := ipBatch(ns, cmds.String()); err != nil {
				errs <- err
			}
		})
	}
	for ns, rules := range b.nft {
		wg.Go(func() {
			if err := nftApply(ns, rules); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	if err := errors.Join(all...); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, ns := range b.netns {
		wg.Go(func() {
			if err := linksUp(ns, deadline); err != nil {
				errs2 <- err
			}
		})
	}
	wg.Wait()
	close(errs2)
	for err := range errs2 {
		return err
	}
	for _, r := range l.routers {
		if r.spec.UDPTimeout > 0 {
			s := strconv.Itoa(int(r.spec.UDPTimeout / time.Second))
			if err := writeSysctls(r.netns, [][2]string{
				{"net/netfilter/nf_conntrack_udp_timeout", s},
				{"net/netfilter/nf_conntrack_udp_timeout_stream", s},
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeSysctls writes /proc/sys entries from inside a namespace: net.* sysctls
// are per namespace and resolved by the writing thread's namespace. Missing
// bridge-netfilter entries mean br_netfilter is not loaded: nothing to turn off.
func writeSysctls(netns string, kv [][2]string) error {
	h := &Host{netns: netns}
	f, err := os.Open(filepath.Join("/run/netns", netns))
	if err != nil {
		return err
	}
	defer f.Close()
	h.nsFile = f
	return h.Do(func() error {
		for _, e := range kv {
			err := os.WriteFile(filepath.Join("/proc/sys", e[0]), []byte(e[1]), 0)
			if err != nil && !(errors.Is(err, os.ErrNotExist) && strings.HasPrefix(e[0], "net/bridge/")) {
				return fmt.Errorf("sysctl %s=%s in %s: %w", e[0], e[1], netns, err)
			}
		}
		return nil
	})
}

// ipBatch runs `ip [-n netns] -batch -` with cmds on stdin.
func ipBatch(netns, cmds string) error {
	if cmds == "" {
		return nil
	}
	args := []string{"-batch", "-"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdin = strings.NewReader(cmds)
	if out, err := cmd.CombinedOutput(); err != nil {
		where := "root namespace"
		if netns != "" {
			where = netns
		}
		return fmt.Errorf("ip -batch in %s: %v: %s\ncommands:\n%s", where, err, bytes.TrimSpace(out), cmds)
	}
	return nil
}

// nftApply loads an nft script inside a namespace.
func nftApply(netns, script string) error {
	cmd := exec.Command("ip", "netns", "exec", netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s\nscript:\n%s", netns, err, bytes.TrimSpace(out), script)
	}
	return nil
}

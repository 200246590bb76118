package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/sys/unix"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
)

func channelData(number uint16, payload []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, number)
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	return append(b, payload...)
}

// recvChannelData returns the next ChannelData frame's channel and payload.
func (c *rawClient) recvChannelData() (uint16, []byte) {
	c.t.Helper()
	for {
		b := c.recv()
		if b[0] < 0x40 {
			continue // a STUN message
		}
		n := int(binary.BigEndian.Uint16(b[2:4]))
		if 4+n > len(b) {
			c.t.Fatalf("ChannelData of %d bytes declares %d", len(b), n)
		}
		return binary.BigEndian.Uint16(b[0:2]), b[4 : 4+n]
	}
}

// channelToPeer starts a relay open to loopback peers, allocates for a UDP
// client and binds channel ch to a peer socket on 127.0.0.1.
func channelToPeer(t *testing.T, ch uint16) (r *testRelay, c *rawClient, relayAP netip.AddrPort, peer *net.UDPConn) {
	t.Helper()
	r = startRelay(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.1/32"} })
	c = dialRaw(t, r, "udp")
	relayAP = mustAllocate(t, c, "alice", "alice-pw")
	peer = udpPeer(t, "127.0.0.1")
	if code, reason := errorCode(t, c.do(stun.MethodChannelBind, channelAttr(ch), peerAttr(netx.AddrPortOf(peer.LocalAddr())))); code != 0 {
		t.Fatalf("ChannelBind: %d %s", code, reason)
	}
	return r, c, relayAP, peer
}

// Channel data takes the relay's own path (fastpath.go), outside pion: both
// directions arrive intact, an unbound channel number relays nothing, the
// counters move, and a deleted allocation's relay socket is closed.
func TestChannelDataBothWays(t *testing.T) {
	const ch = 0x4001
	r, c, relayAP, peer := channelToPeer(t, ch)
	const rounds = 20
	for i := range rounds {
		// An unbound channel first: the relay must drop it, so the peer's
		// next datagram is the bound channel's.
		c.send(channelData(0x4002, []byte("unbound")))
		msg := []byte(fmt.Sprintf("to peer %d%s", i, "xyz"[:i%4])) // lengths not all multiples of 4
		c.send(channelData(ch, msg))
		got, from := readPeer(t, peer)
		if !bytes.Equal(got, msg) || from != relayAP {
			t.Fatalf("peer got %q from %v, want %q from %v", got, from, msg, relayAP)
		}
		reply := []byte(fmt.Sprintf("to client %d%s", i, "ab"[:i%3]))
		if _, err := peer.WriteToUDPAddrPort(reply, relayAP); err != nil {
			t.Fatal(err)
		}
		number, back := c.recvChannelData()
		if number != ch || !bytes.Equal(back, reply) {
			t.Fatalf("client got channel %#x %q, want %#x %q", number, back, ch, reply)
		}
	}
	eventually(t, "the packet counters", func() bool {
		return r.metric(t, "rendezvous_relay_packets_total", map[string]string{"direction": "to_peer"}) == rounds &&
			r.metric(t, "rendezvous_relay_packets_total", map[string]string{"direction": "from_peer"}) == rounds
	})

	// Deallocate: the relay socket is closed (its port can be bound again).
	if code, reason := errorCode(t, c.do(stun.MethodRefresh, lifetimeAttr(0))); code != 0 {
		t.Fatalf("Refresh 0: %d %s", code, reason)
	}
	eventually(t, "the allocation to end", func() bool {
		return r.metric(t, "rendezvous_relay_allocations", nil) == 0
	})
	again, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(relayAP))
	if err != nil {
		t.Fatalf("relay port still bound after the allocation ended: %v", err)
	}
	again.Close()
}

// The event loops must never keep the runtime from stopping the world: a
// garbage collection has to finish while channel data flows and while the
// loops wait for it. A loop blocked in a system call the runtime does not
// know about hangs every collection, and with it the whole process, timers
// included, so the scenario runs in a child process that this test kills.
func TestChannelDataDuringGarbageCollection(t *testing.T) {
	if os.Getenv("RELAY_TEST_GC_CHILD") != "" {
		channelDataDuringGC(t)
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChannelDataDuringGarbageCollection$", "-test.v")
	cmd.Env = append(os.Environ(), "RELAY_TEST_GC_CHILD=1")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("relaying during garbage collections hung for 2 minutes (a relay loop keeps the world from stopping):\n%s", out)
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func channelDataDuringGC(t *testing.T) {
	const ch = 0x4001
	r, c, relayAP, peer := channelToPeer(t, ch)
	roundTrip := func(msg []byte) {
		t.Helper()
		c.send(channelData(ch, msg))
		if got, _ := readPeer(t, peer); !bytes.Equal(got, msg) {
			t.Fatalf("peer got %q, want %q", got, msg)
		}
		if _, err := peer.WriteToUDPAddrPort(msg, relayAP); err != nil {
			t.Fatal(err)
		}
		if number, back := c.recvChannelData(); number != ch || !bytes.Equal(back, msg) {
			t.Fatalf("client got channel %#x %q, want %#x %q", number, back, ch, msg)
		}
	}
	collected := make(chan struct{})
	go func() { // while the round trips run
		defer close(collected)
		for range 100 {
			runtime.GC()
		}
	}()
	for i := range 200 {
		roundTrip([]byte(fmt.Sprintf("round trip %d", i)))
	}
	<-collected
	for range 20 { // while the loops wait for traffic in raw waits
		runtime.GC()
	}
	roundTrip([]byte("after the collections"))
	// Idle for a second, the loops sleep in blocking waits; collections go
	// on, and traffic wakes them.
	for _, p := range r.srv.pollers {
		for !p.asleep.Load() {
			runtime.GC()
			time.Sleep(10 * time.Millisecond) // a collection every 10 ms until the loop sleeps
		}
	}
	roundTrip([]byte("after sleeping"))
}

// A dual-stack listening socket ([::]) sees IPv4 clients as ::ffff:a.b.c.d,
// and the fast path sends their ChannelData from an AF_INET6 socket: two
// IPv4 clients relayed to each other (relay to relay) over channels.
func TestChannelDataDualStackListener(t *testing.T) {
	r := startRelay(t, func(c *Config) {
		c.Listen = "[::]:0"
		c.TLSListen, c.CertFile, c.KeyFile = "", "", ""
	})
	r.addr = netip.AddrPortFrom(netip.MustParseAddr(relayIP), r.addr.Port()) // clients send only to loopback
	a, b := dialRaw(t, r, "udp"), dialRaw(t, r, "udp")
	ra := mustAllocate(t, a, "alice", "alice-pw")
	rb := mustAllocate(t, b, "bob", "bob-pw")
	const ch = 0x4010
	for _, p := range []struct {
		c    *rawClient
		peer netip.AddrPort
	}{{a, rb}, {b, ra}} {
		if code, reason := errorCode(t, p.c.do(stun.MethodChannelBind, channelAttr(ch), peerAttr(p.peer))); code != 0 {
			t.Fatalf("ChannelBind %v: %d %s", p.peer, code, reason)
		}
	}
	for i := range 5 {
		msg := []byte(fmt.Sprintf("a to b %d", i))
		a.send(channelData(ch, msg))
		if number, got := b.recvChannelData(); number != ch || !bytes.Equal(got, msg) {
			t.Fatalf("b got channel %#x %q, want %#x %q", number, got, ch, msg)
		}
		back := []byte(fmt.Sprintf("b to a %d", i))
		b.send(channelData(ch, back))
		if number, got := a.recvChannelData(); number != ch || !bytes.Equal(got, back) {
			t.Fatalf("a got channel %#x %q, want %#x %q", number, got, ch, back)
		}
	}
}

// The bandwidth cap applies to channel data in both directions.
func TestBandwidthLimitChannelData(t *testing.T) {
	for _, dir := range []string{"to_peer", "from_peer"} {
		t.Run(dir, func(t *testing.T) {
			r := startRelay(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.1/32"}; c.BandwidthLimit = 1000 })
			c := dialRaw(t, r, "udp")
			relayAP := mustAllocate(t, c, "alice", "alice-pw")
			peer := udpPeer(t, "127.0.0.1")
			peerAP := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(peer.LocalAddr().(*net.UDPAddr).Port))
			if code, _ := errorCode(t, c.do(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peerAP))); code != 0 {
				t.Fatal("ChannelBind")
			}
			payload := make([]byte, 1000)
			const sent = 100 // 100 kB against a 64 KiB burst and 1 kB/s
			for range sent {
				if dir == "to_peer" {
					c.send(channelData(0x4000, payload))
				} else if _, err := peer.WriteToUDPAddrPort(payload, relayAP); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "the relay to process every packet", func() bool {
				return r.metric(t, "rendezvous_relay_packets_total", map[string]string{"direction": dir})+
					r.metric(t, "rendezvous_relay_dropped_packets_total", map[string]string{"reason": "bandwidth"}) == sent
			})
			passed := r.metric(t, "rendezvous_relay_packets_total", map[string]string{"direction": dir})
			if passed < 60 || passed > 70 {
				t.Fatalf("%v of %d packets passed a 64 KiB burst, want about 65", passed, sent)
			}
		})
	}
}

// openFds counts this process's open file descriptors.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// Every UDP client gets a socket of its own (connected to it) in one of the
// event loops, possibly not the loop of the listening socket the kernel
// hashes its address to, whose pion holds its allocation. Many clients at
// once: each one's channel data goes both ways, and its requests (Refresh,
// CreatePermission, ChannelBind), which now arrive on its own socket, reach
// the pion that holds its allocation. When the allocations end, the relay
// holds no descriptor for them.
func TestManyUDPClientsOwnSockets(t *testing.T) {
	const clients = 16
	r := startRelay(t, func(c *Config) {
		c.AllowPeers = []string{"127.0.0.1/32"}
		c.UserQuota = clients
	})
	peer := udpPeer(t, "127.0.0.1")
	peerAP := netx.AddrPortOf(peer.LocalAddr())
	const ch = 0x4001
	cs := make([]*rawClient, clients)
	for i := range cs {
		cs[i] = dialRaw(t, r, "udp")
	}
	baseline := openFds(t)
	relays := make([]netip.AddrPort, clients)
	for i := range cs {
		relays[i] = mustAllocate(t, cs[i], "alice", "alice-pw")
		if code, reason := errorCode(t, cs[i].do(stun.MethodChannelBind, channelAttr(ch), peerAttr(peerAP))); code != 0 {
			t.Fatalf("client %d: ChannelBind: %d %s", i, code, reason)
		}
	}
	for i, c := range cs {
		msg := []byte(fmt.Sprintf("from client %d", i))
		c.send(channelData(ch, msg))
		got, from := readPeer(t, peer)
		if !bytes.Equal(got, msg) || from != relays[i] {
			t.Fatalf("peer got %q from %v, want %q from %v", got, from, msg, relays[i])
		}
		reply := []byte(fmt.Sprintf("to client %d", i))
		if _, err := peer.WriteToUDPAddrPort(reply, relays[i]); err != nil {
			t.Fatal(err)
		}
		if number, back := c.recvChannelData(); number != ch || !bytes.Equal(back, reply) {
			t.Fatalf("client %d got channel %#x %q, want %#x %q", i, number, back, ch, reply)
		}
		for _, req := range []struct {
			method stun.Method
			attrs  []stun.Setter
		}{
			{stun.MethodRefresh, []stun.Setter{lifetimeAttr(600)}},
			{stun.MethodCreatePermission, []stun.Setter{peerAttr(peerAP)}},
			{stun.MethodChannelBind, []stun.Setter{channelAttr(ch), peerAttr(peerAP)}}, // a refresh of the binding
		} {
			if code, reason := errorCode(t, c.do(req.method, req.attrs...)); code != 0 {
				t.Fatalf("client %d: %v: %d %s", i, req.method, code, reason)
			}
		}
	}
	if opened := openFds(t) - baseline; opened < 2*clients {
		t.Errorf("%d descriptors opened for %d UDP allocations, want a relay socket and a client socket each", opened, clients)
	}
	for i, c := range cs {
		if code, reason := errorCode(t, c.do(stun.MethodRefresh, lifetimeAttr(0))); code != 0 {
			t.Fatalf("client %d: Refresh 0: %d %s", i, code, reason)
		}
	}
	eventually(t, "the allocations to end", func() bool {
		return r.metric(t, "rendezvous_relay_allocations", nil) == 0
	})
	eventually(t, "the allocations' descriptors to be closed", func() bool { return openFds(t) <= baseline })
}

// A UDP client read on the listening sockets (its own socket could not be
// opened) keeps its allocation when the kernel hands its datagrams to another
// listening socket than the one it allocated on, as older kernels do when a
// connected socket joins or leaves the SO_REUSEPORT group. pion knows an
// allocation only on the socket where it was made, so the relay routes the
// client's requests there. A reuseport program steers the datagrams here.
func TestClientOnAnotherListeningSocketKeepsItsAllocation(t *testing.T) {
	r := startRelay(t, nil) // two listening sockets
	listenFd := -1
	for _, p := range r.srv.pollers {
		if p.listen != nil {
			listenFd = p.sendFd
		}
	}
	if listenFd < 0 {
		t.Fatal("no listening socket read by an event loop")
	}
	steer := func(index uint32) {
		t.Helper()
		prog := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: index}}
		if err := unix.SetsockoptSockFprog(listenFd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
			t.Fatalf("steering the listening sockets: %v", err)
		}
	}
	steer(0)
	c := dialRaw(t, r, "udp")
	mustAllocate(t, c, "alice", "alice-pw")
	rc := r.srv.clients.get(netx.AddrPortOf(c.pc.LocalAddr()))
	if rc == nil || rc.poller == nil {
		t.Fatal("no fast-path allocation for the client")
	}
	rc.poller.mu.Lock()
	rc.poller.closeClientSocket(rc)
	rc.poller.mu.Unlock()
	steer(1)
	for _, lifetime := range []uint32{600, 0} {
		if code, reason := errorCode(t, c.do(stun.MethodRefresh, lifetimeAttr(lifetime))); code != 0 {
			t.Fatalf("Refresh %d on the other listening socket: %d %s", lifetime, code, reason)
		}
	}
	eventually(t, "the allocation to end", func() bool {
		return r.metric(t, "rendezvous_relay_allocations", nil) == 0
	})
}

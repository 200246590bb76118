package relay

// The UDP data path, without a goroutine or a system call per packet where
// the kernel allows it.
//
// pion/turn reads every allocation's relay socket on a goroutine of its own
// and handles every ChannelData on the listening socket's goroutine; under
// load most of a relayed packet's cost was that machinery (a goroutine woken
// per packet, a recvfrom that finds the socket empty after each one, an
// allocation or two per packet), not the copying. So for allocations on the
// host network rendezvous moves the channel traffic out of pion:
//
//	client ─ChannelData─► client socket ─► relayPoller ──sendto──► relay socket ─► peer
//	                      (its own, connected; channel table mirrored from pion's events)
//	peer ─► relay socket ─► relayPoller ──sendmmsg──► listening socket ─ChannelData─► client
//	                        (one datagram per ready socket per round)
//
// One relayPoller per listening socket is an epoll loop (level-triggered) over
// that socket and its share of the relay sockets, so both directions of an
// allocation are handled on one goroutine, like one of coturn's relay
// threads: handing packets between two goroutines cost a wake-up on another
// thread per packet and showed in the tail latency (p90 0.95 ms against
// 0.73 ms merged, 200 clients, docs/benchmarks.md).
//
// Like coturn, each UDP client with an allocation gets a socket of its own,
// bound beside the listening socket (SO_REUSEPORT) and connected to the
// client, so the kernel delivers its datagrams there: epoll then reports
// clients' and peers' sockets in the order their data arrived, one datagram
// each per round. Read from the listening socket in batches of 32, a
// client's request waited behind the batch's other requests and the peers'
// replies of the round before (probe RTT at 200 clients: p99 1.15× coturn's,
// 1.07× with client sockets; p99.9 5.3 ms against 2.7). Clients without an
// allocation (and every client when there is only one listening socket, so
// no SO_REUSEPORT) are read on the listening socket in batches.
//
// Everything that is not channel data (STUN, Send and Data indications,
// datagrams from peers without a channel) still goes through pion, so
// authentication, permissions and the allocation state stay pion's. The
// channel table is a copy kept by pion's OnChannelCreated/OnChannelDeleted
// events, so it holds exactly the bindings pion holds; like pion, channel data
// needs a channel, not a permission. Relay sockets here are plain
// non-blocking file descriptors, never registered with Go's netpoller.

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"golang.org/x/sys/unix"
)

// chanEntry is one channel binding: number and peer (as the client knows it).
type chanEntry struct {
	number uint16
	peer   netip.AddrPort
}

// channelTable is an allocation's channel bindings, replaced whole on change
// (bindings change rarely; lookups are per packet and lock-free).
type channelTable []chanEntry

func (t channelTable) byNumber(n uint16) (netip.AddrPort, bool) {
	for i := range t {
		if t[i].number == n {
			return t[i].peer, true
		}
	}
	return netip.AddrPort{}, false
}

func (t channelTable) byPeer(p netip.AddrPort) (uint16, bool) {
	for i := range t {
		if t[i].peer == p {
			return t[i].number, true
		}
	}
	return 0, false
}

// isChannelData: first byte 0x40..0x7F (RFC 8656 §12).
func isChannelData(b []byte) bool { return len(b) >= 4 && b[0]&0xC0 == 0x40 }

// parseChannelData splits a ChannelData message (RFC 8656 §12.4):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Channel Number        |            Length             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                 Application Data (Length bytes)               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Bytes after Length (padding) are ignored; a Length past the end is malformed.
func parseChannelData(b []byte) (number uint16, payload []byte, ok bool) {
	if !isChannelData(b) {
		return 0, nil, false
	}
	length := int(binary.BigEndian.Uint16(b[2:4]))
	if channelHdr+length > len(b) {
		return 0, nil, false
	}
	return binary.BigEndian.Uint16(b[0:2]), b[channelHdr : channelHdr+length], true
}

// rawSockaddr is room for an IPv4 or IPv6 socket address.
type rawSockaddr struct {
	unix.RawSockaddrInet6
}

func (r *rawSockaddr) ptr() unsafe.Pointer { return unsafe.Pointer(&r.RawSockaddrInet6) }

// set writes ap as an AF_INET (v4 socket) or AF_INET6 address and returns its length.
func (r *rawSockaddr) set(ap netip.AddrPort, v6 bool) uint32 {
	port := ap.Port()
	if !v6 {
		sa := (*unix.RawSockaddrInet4)(r.ptr())
		*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().Unmap().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], port)
		return unix.SizeofSockaddrInet4
	}
	r.RawSockaddrInet6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&r.Port))[:], port)
	return unix.SizeofSockaddrInet6
}

func (r *rawSockaddr) addrPort() (netip.AddrPort, bool) {
	switch r.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(r.ptr())
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), true
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&r.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(r.Addr).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}

// openRelaySocket opens a non-blocking UDP socket bound to ap, outside Go's netpoller.
func openRelaySocket(ap netip.AddrPort, bufSize int) (int, error) {
	family, v6 := unix.AF_INET, false
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		family, v6 = unix.AF_INET6, true
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, err
	}
	if v6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if bufSize > 0 {
		setBuffer(fd, unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, bufSize)
		setBuffer(fd, unix.SO_SNDBUF, unix.SO_SNDBUFFORCE, bufSize)
	}
	var sa unix.Sockaddr
	if v6 {
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// sendTo sends one datagram on a non-blocking socket; no allocation.
func sendTo(fd int, b []byte, to netip.AddrPort, v6 bool) error {
	var sa rawSockaddr
	l := sa.set(to, v6)
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(p), uintptr(len(b)), 0, uintptr(sa.ptr()), uintptr(l))
	if e != 0 {
		return e
	}
	return nil
}

// recvFrom reads one datagram from a non-blocking socket; no allocation.
func recvFrom(fd int, b []byte, sa *rawSockaddr) (int, error) {
	l := uint32(unsafe.Sizeof(*sa))
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_TRUNC, uintptr(sa.ptr()), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// mmsghdr is struct mmsghdr (linux/socket.h).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// mmsgBatch is a set of datagrams with addresses for recvmmsg/sendmmsg.
type mmsgBatch struct {
	msgs  []mmsghdr
	iovs  []unix.Iovec
	addrs []rawSockaddr
	bufs  [][]byte
}

func newMmsgBatch(n, bufSize int) *mmsgBatch {
	b := &mmsgBatch{msgs: make([]mmsghdr, n), iovs: make([]unix.Iovec, n), addrs: make([]rawSockaddr, n), bufs: make([][]byte, n)}
	for i := range n {
		b.bufs[i] = make([]byte, bufSize)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(bufSize)
		b.msgs[i].hdr.Iov = &b.iovs[i]
		b.msgs[i].hdr.SetIovlen(1)
		b.msgs[i].hdr.Name = (*byte)(b.addrs[i].ptr())
	}
	return b
}

// prepareRecv resets the first n entries to receive.
func (b *mmsgBatch) prepareRecv(n int) {
	for i := range n {
		b.iovs[i].SetLen(len(b.bufs[i]))
		b.msgs[i].hdr.Namelen = uint32(unsafe.Sizeof(b.addrs[i]))
		b.msgs[i].hdr.Flags = 0
		b.msgs[i].len = 0
	}
}

// recvmmsg fills the batch from fd; EAGAIN when empty.
func (b *mmsgBatch) recvmmsg(fd uintptr) (int, syscall.Errno) {
	b.prepareRecv(len(b.msgs))
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(len(b.msgs)),
		unix.MSG_DONTWAIT, 0, 0)
	return int(n), e
}

// sendmmsg sends the first n entries (each with iov length and name set) on
// fd; datagrams the socket will not take now are dropped, as a full UDP
// socket would, and counted in failed.
func (b *mmsgBatch) sendmmsg(fd int, n int) (failed int) {
	for sent := 0; sent < n; {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[sent])), uintptr(n-sent), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			// The first datagram of the rest failed (EAGAIN, or this
			// destination refused it): skip it and go on with the others.
			sent++
			failed++
			continue
		}
		sent += int(r)
	}
	return failed
}

// relayPoller is the event loop of one listening socket and its share of
// the relay sockets: it relays clients' ChannelData to peers, and peers'
// datagrams to clients as ChannelData in sendmmsg batches through the
// listening socket.
type relayPoller struct {
	s      *Server
	epfd   int // never registered with Go's netpoller (see run)
	wakeFd int // eventfd: stop
	sendFd int // a listening socket (all share address and port)
	v6     bool

	asleep atomic.Bool // in a blocking wait (the loop was idle for a second)

	mu      sync.Mutex // held while a round reads its relay sockets; Close takes it to unregister
	stopped bool       // epfd is closed
	slots   []*relayConn
	free    []uint32

	out  *mmsgBatch
	done chan struct{}

	listen *batchReader // the listening socket's reader, fed by this loop; nil: pion reads it
	in     []byte       // a client socket's datagram
}

const (
	pollBatch   = 64
	wakeSlot    = ^uint32(0)
	listenSlot  = wakeSlot - 1
	clientSlot  = 1 << 30 // ORed into a slot: the allocation's client socket, not its relay socket
	channelHdr  = 4
	maxDatagram = inboundMTU
)

func newRelayPoller(s *Server, sendFd int, v6 bool) (*relayPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1} // wakeSlot
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, err
	}
	return &relayPoller{s: s, epfd: epfd, wakeFd: wfd, sendFd: sendFd, v6: v6,
		out: newMmsgBatch(pollBatch, channelHdr+maxDatagram+3), done: make(chan struct{})}, nil
}

// readListener makes this loop read its listening socket too: channel data
// is relayed here, the rest queued for pion's read through br. Call before run.
func (p *relayPoller) readListener(br *batchReader) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -2} // listenSlot
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, p.sendFd, &ev); err != nil {
		return err
	}
	br.fed = &slowQueue{limit: maxListenBacklog, signal: make(chan struct{}, 1)}
	br.fedDone = make(chan struct{})
	p.listen = br
	p.in = make([]byte, inboundMTU)
	return nil
}

// addClientSocket gives a UDP client its own socket, connected to it and
// bound beside the listening socket (SO_REUSEPORT), and reads it in this
// loop. The kernel then queues that client's datagrams apart from the
// others', and epoll reports its socket among the relay sockets in the
// order data arrived, so a request waits for the datagrams that came
// before it, not behind a batch of the listening socket (coturn's model).
// Without it (no SO_REUSEPORT on the listening socket: one read socket; or
// any failure) the client is read on the listening socket, as before.
func (p *relayPoller) addClientSocket(rc *relayConn, client netip.AddrPort) error {
	if p.listen == nil {
		return errors.ErrUnsupported
	}
	fd, err := openClientSocket(p.sendFd, client, p.v6, min(p.s.sockBuf, relaySocketBuffer))
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.slots[rc.slot] != rc || rc.clientFd >= 0 {
		unix.Close(fd)
		return net.ErrClosed
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(rc.slot | clientSlot)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return err
	}
	rc.clientFd = fd
	return nil
}

// openClientSocket opens a non-blocking UDP socket on the listening socket's
// address and connects it to client. Until connect, the kernel may hash
// another client's datagram to it; the loop handles every datagram by its
// source, so such a one is relayed all the same.
func openClientSocket(listenFd int, client netip.AddrPort, v6 bool, bufSize int) (int, error) {
	local, err := unix.Getsockname(listenFd)
	if err != nil {
		return -1, err
	}
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, err
	}
	var peer unix.Sockaddr
	if v6 {
		only, _ := unix.GetsockoptInt(listenFd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, only)
		peer = &unix.SockaddrInet6{Port: int(client.Port()), Addr: client.Addr().As16()}
	} else {
		peer = &unix.SockaddrInet4{Port: int(client.Port()), Addr: client.Addr().Unmap().As4()}
	}
	if err == nil {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}
	if err == nil && bufSize > 0 {
		setBuffer(fd, unix.SO_RCVBUF, unix.SO_RCVBUFFORCE, bufSize)
	}
	if err == nil {
		err = unix.Bind(fd, local)
	}
	if err == nil {
		err = unix.Connect(fd, peer)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// closeClientSocket unregisters and closes rc's client socket (p.mu held).
// What it still holds goes to pion, which answers it or drops it as it
// would have on the listening socket (a new Allocate from the same address,
// say, right after the old allocation ended).
func (p *relayPoller) closeClientSocket(rc *relayConn) {
	fd := rc.clientFd
	if fd < 0 {
		return
	}
	rc.clientFd = -1
	if !p.stopped {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		for range maxSlowBacklog {
			var sa rawSockaddr
			n, err := recvFrom(fd, p.in, &sa) // p.in is readClients', also under p.mu
			if err == unix.EAGAIN {
				break
			}
			from, ok := sa.addrPort()
			if err != nil || !ok || n >= inboundMTU {
				continue
			}
			if !p.s.pionQueueOf(from, p.listen.fed).push(p.in[:n], from) {
				p.s.metrics.droppedBacklog.Inc()
			}
		}
	}
	unix.Close(fd)
}

// add registers a relay socket.
func (p *relayPoller) add(rc *relayConn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return net.ErrClosed
	}
	var slot uint32
	if n := len(p.free); n > 0 {
		slot = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		slot = uint32(len(p.slots))
		p.slots = append(p.slots, nil)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(slot)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, rc.fd, &ev); err != nil {
		p.free = append(p.free, slot)
		return err
	}
	p.slots[slot] = rc
	rc.slot = slot
	return nil
}

// remove unregisters a relay socket; once it returns the loop no longer
// touches it.
func (p *relayPoller) remove(rc *relayConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.slots[rc.slot] != rc {
		return
	}
	if !p.stopped {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, rc.fd, nil)
	}
	p.closeClientSocket(rc)
	p.slots[rc.slot] = nil
	p.free = append(p.free, rc.slot)
}

// stop ends the loop and waits for it; the listening socket may be closed after.
func (p *relayPoller) stop() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(p.wakeFd, one[:])
	<-p.done
	p.close()
}

// close releases the descriptors of a poller whose loop has ended or never ran.
func (p *relayPoller) close() {
	p.mu.Lock()
	p.stopped = true
	unix.Close(p.epfd)
	unix.Close(p.wakeFd)
	p.mu.Unlock()
}

// How the loop waits (measured at 100 and 200 clients, docs/benchmarks.md):
// each way that let the Go scheduler run the wait lost to coturn's p99.
//   - A blocking epoll_wait (the runtime's Syscall) makes the runtime hand
//     the loop's P to another thread on every wait, and sysmon wakes every
//     20 µs to do it: a quarter of the CPU at 15k packets/s.
//   - Parking the epoll descriptor in the netpoller: each new event wakes
//     the netpoller on one thread, which readies the loop on another (p99
//     1.01-1.86× coturn's at 200 clients in four A/Bs on this noisy host).
//
// So the loop owns its P and waits in a raw epoll_wait, which the runtime
// does not see: the thread sleeps in the kernel and wakes on the loop's own
// events, as a coturn relay thread does. (That pays only with the listening
// socket out of the netpoller as well, loopUDPConn.)
// A goroutine the runtime cannot stop would deadlock every stop-the-world
// (garbage collection), so the wait stays stoppable:
//   - preemptPoint runs after every round, timeout and signal. When the
//     runtime wants the P (a stop-the-world, or sysmon after 10 ms of
//     running) it has marked the goroutine and sent its thread a signal; the
//     signal ends epoll_wait with EINTR and the check in preemptPoint
//     yields.
//   - A signal that lands between that check and the system call ends
//     nothing, so the wait has a timeout: a stop-the-world waits at most
//     waitMillis for a loop.
//   - After idleWaits empty waits in a row the loop blocks in an
//     ordinary epoll_wait (the runtime takes the P back while it sleeps), so
//     an idle relay does not wake 200 times a second.
//
// Holding a P, each running loop takes one more from the runtime
// (holdLoopProc) so the rest of the process keeps what it had.
func (p *relayPoller) run() {
	defer close(p.done)
	holdLoopProc(1)
	defer holdLoopProc(-1)
	events := make([]unix.EpollEvent, pollBatch)
	idle := 0
	for {
		var n int
		var err error
		if idle < idleWaits {
			r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(p.epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), waitMillis, 0, 0)
			n = int(r)
			if e != 0 {
				err = e
			}
		} else {
			p.asleep.Store(true)
			n, err = unix.EpollWait(p.epfd, events, -1)
			p.asleep.Store(false)
		}
		switch {
		case err == unix.EINTR:
			preemptPoint()
			continue
		case err != nil:
			p.s.log.Error("relay: epoll_wait failed; relay sockets are no longer read", "error", err)
			return
		case n == 0:
			idle++
			preemptPoint()
			continue
		}
		idle = 0
		if !p.round(events[:n]) {
			return
		}
		preemptPoint()
	}
}

const (
	waitMillis = 5   // the raw wait's timeout: a stop-the-world's worst wait for a loop
	idleWaits  = 200 // empty raw waits (1 s) before a loop sleeps in a blocking wait
)

// preemptPoint yields if the runtime has asked this goroutine to (a
// stop-the-world, or sysmon's 10 ms time slice). The check is the stack-bound
// test in the prologue of a function that calls another: a leaf function
// with a small frame has none, so preemptPoint must not be one and neither
// may be inlined. (runtime.Gosched would yield every time, and each yield
// sends the loop through the run queue to whichever thread is free.)
//
//go:noinline
func preemptPoint() { preemptNop() }

//go:noinline
func preemptNop() {}

// loopProcs is how many Ps the running loops hold (holdLoopProc).
var loopProcs struct {
	sync.Mutex
	n int
}

// holdLoopProc adds delta to GOMAXPROCS, for loops starting (1) or ending
// (-1). Setting GOMAXPROCS ends Go's automatic updates of it from the
// cgroup's CPU limit; the relay runs under its own systemd unit.
func holdLoopProc(delta int) {
	loopProcs.Lock()
	defer loopProcs.Unlock()
	loopProcs.n += delta
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + delta)
}

// procsBesideLoops is GOMAXPROCS without the Ps that running loops hold.
func procsBesideLoops() int {
	loopProcs.Lock()
	defer loopProcs.Unlock()
	return max(1, runtime.GOMAXPROCS(0)-loopProcs.n)
}

// fromPeer accumulates one round's counters (one atomic add per round, not per packet).
type fromPeer struct{ packets, bytes, dropped, backlog, failed uint64 }

// round handles one epoll_wait's worth of ready sockets: one datagram from
// each relay socket, then one from each client socket, then a batch from the
// listening socket.
//
// Peers' datagrams go first and are sent to the clients before clients'
// sockets are read: they finish round trips already under way, while a
// drain starts new ones and costs a sendto per datagram (up to batchSize).
// In epoll's order a reply read early in a round waited in the send batch
// behind a whole drain; during the load's bursts that put probe RTT p99 at
// 200 clients 25% above coturn's, against 2% with replies first on a quiet host
// (docs/benchmarks.md).
func (p *relayPoller) round(events []unix.EpollEvent) bool {
	var st fromPeer
	out := 0
	listenReady, fromClients := false, false
	p.mu.Lock()
	for i := range events {
		slot := uint32(events[i].Fd)
		if slot == wakeSlot {
			p.mu.Unlock()
			return false
		}
		if slot == listenSlot {
			listenReady = true
			continue
		}
		if slot&clientSlot != 0 {
			fromClients = true
			continue
		}
		if int(slot) >= len(p.slots) {
			continue
		}
		rc := p.slots[slot]
		if rc == nil {
			continue
		}
		buf := p.out.bufs[out]
		var sa rawSockaddr
		n, err := recvFrom(rc.fd, buf[channelHdr:channelHdr+maxDatagram], &sa)
		if err != nil || n >= maxDatagram {
			continue // EAGAIN (raced), an ICMP error, or a truncated datagram
		}
		from, ok := sa.addrPort()
		if !ok {
			continue
		}
		if l := rc.limiter.Load(); l != nil && !l.AllowN(time.Now(), n) {
			st.dropped++
			continue
		}
		from = rc.s.own.Load().publicOf(from)
		rc.bytesIn.Add(uint64(n))
		st.packets++
		st.bytes += uint64(n)
		client := rc.udpClient.Load()
		number, ok := rc.chans().byPeer(from)
		if !ok || client == nil {
			p.countFromPeer(&st) // before pion can deliver it (the slow path: no batch to save)
			if !rc.toPion(buf[channelHdr:channelHdr+n], from) {
				st.backlog++
			}
			continue
		}
		binary.BigEndian.PutUint16(buf[0:2], number)
		binary.BigEndian.PutUint16(buf[2:4], uint16(n))
		size := channelHdr + n
		for size%4 != 0 { // pad like pion (RFC 8656 §12.5)
			buf[size] = 0
			size++
		}
		p.out.iovs[out].SetLen(size)
		p.out.msgs[out].hdr.Namelen = p.out.addrs[out].set(*client, p.v6)
		out++
		if out == len(p.out.msgs) {
			p.sendReplies(&st, out)
			out = 0
		}
	}
	p.mu.Unlock()
	if out > 0 {
		p.sendReplies(&st, out)
	}
	if fromClients {
		p.readClients(events)
	}
	if listenReady {
		p.listen.drain(p.sendFd)
	}
	p.countFromPeer(&st)
	m := p.s.metrics
	if st.dropped > 0 {
		m.droppedBandwidth.Add(float64(st.dropped))
	}
	if st.backlog > 0 {
		m.droppedBacklog.Add(float64(st.backlog))
	}
	if st.failed > 0 {
		m.droppedSendFailed.Add(float64(st.failed))
	}
	return true
}

// pionQueueOf is where a datagram from a client that is not relayed goes:
// pion's read of the listening socket whose allocation manager holds the
// sender's allocation (pion keeps one manager per socket), else home, the
// queue of the socket it arrived on. A client's datagram can arrive away from
// its allocation's socket: a client socket may get another client's datagram
// between its bind and its connect; and a client read on the listening
// sockets (its own socket could not be opened) moves among them on kernels
// whose pick in the SO_REUSEPORT group scales the flow's hash by the group's
// size, connected members included (6.18 keeps a flow where it was; older
// kernels may move it each time a client socket opens or closes).
func (s *Server) pionQueueOf(from netip.AddrPort, home *slowQueue) *slowQueue {
	if rc := s.clients.get(from); rc != nil && rc.poller != nil && rc.poller.listen != nil {
		return rc.poller.listen.fed
	}
	return home
}

// readClients reads one datagram from each ready client socket, in the
// order epoll reported them (the order their data arrived).
func (p *relayPoller) readClients(events []unix.EpollEvent) {
	br := p.listen
	backlog := 0
	p.mu.Lock() // a client socket is closed under it
	for i := range events {
		slot := uint32(events[i].Fd)
		if slot >= listenSlot || slot&clientSlot == 0 {
			continue
		}
		slot &^= clientSlot
		if int(slot) >= len(p.slots) || p.slots[slot] == nil || p.slots[slot].clientFd < 0 {
			continue
		}
		var sa rawSockaddr
		n, err := recvFrom(p.slots[slot].clientFd, p.in, &sa)
		if err != nil || n >= inboundMTU {
			continue // EAGAIN (raced), an ICMP error from the client, or a truncated datagram
		}
		from, ok := sa.addrPort()
		if !ok {
			continue
		}
		if !br.relayed(p.in[:n], from) && !p.s.pionQueueOf(from, br.fed).push(p.in[:n], from) {
			backlog++
		}
	}
	p.mu.Unlock()
	br.flush()
	if backlog > 0 {
		p.s.metrics.droppedBacklog.Add(float64(backlog))
	}
}

// sendReplies sends the first out datagrams of the send batch to their
// clients, counting the round's datagrams from peers first: a client that
// holds a reply finds it in packets_total{from_peer}.
func (p *relayPoller) sendReplies(st *fromPeer, out int) {
	p.countFromPeer(st)
	st.failed += uint64(p.out.sendmmsg(p.sendFd, out))
}

// countFromPeer adds the datagrams from peers counted in st so far to the metrics.
func (p *relayPoller) countFromPeer(st *fromPeer) {
	if st.packets == 0 {
		return
	}
	p.s.metrics.packetsFromPeer.Add(float64(st.packets))
	p.s.metrics.bytesFromPeer.Add(float64(st.bytes))
	st.packets, st.bytes = 0, 0
}

// slowPacket is a datagram for pion's read of a relay socket.
type slowPacket struct {
	buf  *[]byte
	n    int
	from *net.UDPAddr
}

var slowBufs = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// slowQueue holds datagrams the poller hands to pion: on a relay socket, from
// peers without a channel (Data indications) and everything for TCP/TLS
// clients; on a listening socket, everything but channel data (STUN, TURN
// requests, Send indications). It grows with the backlog (idle allocations
// cost nothing) up to limit datagrams, about what the socket's own buffer
// would have held.
type slowQueue struct {
	mu     sync.Mutex
	q      []slowPacket
	head   int
	limit  int           // 0: maxSlowBacklog
	signal chan struct{} // capacity 1: "the queue may have something"
}

// maxSlowBacklog is a relay socket's (1 MiB buffer); maxListenBacklog a
// listening socket's, where an allocation storm of thousands of clients
// queues its requests (pion answers each in tens of µs).
const (
	maxSlowBacklog   = 512
	maxListenBacklog = 8192
)

func (q *slowQueue) push(b []byte, from netip.AddrPort) bool {
	q.mu.Lock()
	limit := q.limit
	if limit == 0 {
		limit = maxSlowBacklog
	}
	if len(q.q)-q.head >= limit {
		q.mu.Unlock()
		return false
	}
	buf := slowBufs.Get().(*[]byte)
	n := copy(*buf, b)
	q.q = append(q.q, slowPacket{buf: buf, n: n, from: net.UDPAddrFromAddrPort(from)})
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
	return true
}

// pop waits for a datagram until done is closed.
func (q *slowQueue) pop(done <-chan struct{}) (slowPacket, bool) {
	for {
		q.mu.Lock()
		if q.head < len(q.q) {
			p := q.q[q.head]
			q.q[q.head] = slowPacket{}
			q.head++
			if q.head == len(q.q) {
				q.q, q.head = q.q[:0], 0
			}
			q.mu.Unlock()
			return p, true
		}
		q.mu.Unlock()
		select {
		case <-q.signal:
		case <-done:
			return slowPacket{}, false
		}
	}
}

// readFrom is pion's read of a queue: it waits for a datagram until done is
// closed (net.ErrClosed).
func (q *slowQueue) readFrom(b []byte, done <-chan struct{}) (int, net.Addr, error) {
	p, ok := q.pop(done)
	if !ok {
		return 0, nil, net.ErrClosed
	}
	n := copy(b, (*p.buf)[:p.n])
	slowBufs.Put(p.buf)
	return n, p.from, nil
}

// toPion queues a datagram for pion's read of this relay socket; when pion
// is that far behind, it is dropped as a full socket would (false).
func (rc *relayConn) toPion(b []byte, from netip.AddrPort) bool {
	return rc.slow.push(b, from)
}

// clientRelays maps a UDP client address to its allocation's relay socket,
// for ChannelData arriving on the listening sockets.
type clientRelays struct {
	mu  sync.RWMutex
	m   map[netip.AddrPort]*relayConn
	gen atomic.Uint64 // bumped on every removal, so readers' caches drop stale entries
}

func (c *clientRelays) put(client netip.AddrPort, rc *relayConn) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[netip.AddrPort]*relayConn{}
	}
	c.m[client] = rc
	c.mu.Unlock()
}

func (c *clientRelays) remove(client netip.AddrPort, rc *relayConn) {
	c.mu.Lock()
	if c.m[client] == rc {
		delete(c.m, client)
	}
	c.gen.Add(1)
	c.mu.Unlock()
}

func (c *clientRelays) get(client netip.AddrPort) *relayConn {
	c.mu.RLock()
	rc := c.m[client]
	c.mu.RUnlock()
	return rc
}

// batchReader reads up to batchSize datagrams per recvmmsg(2) from a
// listening socket. It relays ChannelData of known allocations itself and
// hands everything else to pion one datagram at a time. Either pion's read
// loop for this socket reads through it, or (fed) the socket's relayPoller
// drains it and pion's read takes what is queued; one goroutine each way,
// so it needs no lock.
type batchReader struct {
	fed     *slowQueue    // non-nil: the relayPoller reads the socket
	fedDone chan struct{} // closed when the listening socket closes
	s       *Server
	rc      syscall.RawConn
	batch   *mmsgBatch
	n, next int
	errno   syscall.Errno
	readFn  func(fd uintptr) bool // allocated once: RawConn.Read's callback
	cache   map[netip.AddrPort]*relayConn
	gen     uint64
	toPeer  toPeer
}

// toPeer accumulates counters for one batch.
type toPeer struct{ packets, bytes uint64 }

const batchSize = 32

// newBatchReader reads a listening socket through rc, or, with rc nil, takes
// what its relayPoller queues (readListener must follow).
func newBatchReader(rc syscall.RawConn, s *Server) *batchReader {
	br := &batchReader{s: s, rc: rc, batch: newMmsgBatch(batchSize, inboundMTU), cache: map[netip.AddrPort]*relayConn{}}
	br.readFn = func(fd uintptr) bool {
		br.n, br.errno = br.batch.recvmmsg(fd)
		return br.errno != unix.EAGAIN
	}
	return br
}

// inboundMTU matches pion's read buffer: a datagram this long or longer is truncated.
const inboundMTU = 1600

func (br *batchReader) readFrom(b []byte) (int, net.Addr, error) {
	if br.fed != nil {
		return br.fed.readFrom(b, br.fedDone)
	}
	for {
		if br.next >= br.n {
			br.flush()
			br.n, br.next = 0, 0
			if err := br.rc.Read(br.readFn); err != nil {
				return 0, nil, err
			}
			if br.errno != 0 {
				if br.errno == unix.EINTR {
					continue
				}
				return 0, nil, &net.OpError{Op: "recvmmsg", Net: "udp", Err: br.errno}
			}
		}
		i := br.next
		br.next++
		if p, from, ok := br.take(i); ok {
			return copy(b, p), net.UDPAddrFromAddrPort(from), nil
		}
	}
}

// drain is the relayPoller's read of a ready listening socket (fed mode):
// one recvmmsg; what take leaves goes to pion's queue (dropped when pion is
// maxListenBacklog behind, as a full socket would).
func (br *batchReader) drain(fd int) {
	n, errno := br.batch.recvmmsg(uintptr(fd))
	if errno != 0 {
		return // EAGAIN (raced) or EINTR: level-triggered, the next round tries again
	}
	backlog := 0
	for i := range n {
		if p, from, ok := br.take(i); ok && !br.s.pionQueueOf(from, br.fed).push(p, from) {
			backlog++
		}
	}
	br.flush()
	if backlog > 0 {
		br.s.metrics.droppedBacklog.Add(float64(backlog))
	}
}

// take looks at datagram i of the batch: channel data of a known channel is
// relayed; anything else is returned for pion.
func (br *batchReader) take(i int) ([]byte, netip.AddrPort, bool) {
	m := &br.batch.msgs[i]
	size := int(m.len)
	if size >= inboundMTU || m.hdr.Flags&unix.MSG_TRUNC != 0 {
		return nil, netip.AddrPort{}, false
	}
	from, ok := br.batch.addrs[i].addrPort()
	if !ok {
		return nil, netip.AddrPort{}, false
	}
	p := br.batch.bufs[i][:size]
	if br.relayed(p, from) {
		return nil, netip.AddrPort{}, false
	}
	return p, from, true
}

// relayed: p was channel data of a known channel and went to its peer.
func (br *batchReader) relayed(p []byte, from netip.AddrPort) bool {
	return isChannelData(p) && br.relay(p, from)
}

// relay sends one ChannelData to its peer if the allocation and channel are
// known here; false hands it to pion.
func (br *batchReader) relay(p []byte, from netip.AddrPort) bool {
	if g := br.s.clients.gen.Load(); g != br.gen {
		clear(br.cache)
		br.gen = g
	}
	rc := br.cache[from]
	if rc == nil {
		if rc = br.s.clients.get(from); rc == nil {
			return false
		}
		br.cache[from] = rc
	}
	number, payload, ok := parseChannelData(p)
	if !ok {
		return false // pion drops malformed data
	}
	peer, ok := rc.chans().byNumber(number)
	if !ok {
		return false
	}
	if n, _ := rc.writeToPeer(payload, peer); n > 0 {
		br.toPeer.packets++
		br.toPeer.bytes += uint64(n)
	}
	return true
}

func (br *batchReader) flush() {
	if br.toPeer.packets == 0 {
		return
	}
	m := br.s.metrics
	m.packetsToPeer.Add(float64(br.toPeer.packets))
	m.bytesToPeer.Add(float64(br.toPeer.bytes))
	br.toPeer = toPeer{}
}

// loopUDPConn is a listening UDP socket read by its relayPoller, as pion and
// the STUN server see it: they write to it, and read what the loop queues for
// them (batchReader.fed). Like every socket of the fast path it is kept out of
// Go's netpoller. Registered there (edge-triggered, for writing too), it woke
// the netpoller's thread each time a datagram the loop had sent through it
// left the socket, whenever a P was idle, which the loops' extra Ps
// (holdLoopProc) mostly are: 512-548k context switches per run at 300
// clients against 115-124k without the registration (coturn 109-134k), and
// a probe RTT p99 of 5-165 ms against 6-8 ms (docs/benchmarks.md).
type loopUDPConn struct {
	fd    int
	v6    bool
	laddr net.Addr

	mu     sync.RWMutex // writers hold it shared, so Close cannot free fd under a write
	closed bool
}

// newLoopUDPConn takes c's socket out of the netpoller: it keeps a
// duplicate descriptor and closes c, which unregisters the original.
func newLoopUDPConn(c net.PacketConn) (*loopUDPConn, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, domain := -1, 0
	var derr error
	if err := raw.Control(func(f uintptr) {
		if domain, derr = unix.GetsockoptInt(int(f), unix.SOL_SOCKET, unix.SO_DOMAIN); derr == nil {
			fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
		}
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	lc := &loopUDPConn{fd: fd, v6: domain == unix.AF_INET6, laddr: c.LocalAddr()}
	c.Close()
	return lc, nil
}

var errReadByLoop = errors.New("relay: this socket is read by its relay loop")

func (c *loopUDPConn) ReadFrom([]byte) (int, net.Addr, error) { return 0, nil, errReadByLoop }

func (c *loopUDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	to := netx.AddrPortOf(addr)
	if !to.IsValid() {
		return 0, &net.OpError{Op: "write", Net: "udp", Addr: addr, Err: errors.New("not a UDP address")}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	err := sendTo(c.fd, b, to, c.v6)
	if err == unix.EINTR {
		err = sendTo(c.fd, b, to, c.v6)
	}
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: c.laddr, Addr: addr, Err: err}
	}
	return len(b), nil
}

func (c *loopUDPConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	c.closed = true
	return unix.Close(c.fd)
}

func (c *loopUDPConn) LocalAddr() net.Addr { return c.laddr }

// Reads never block (they come through the loop's queue) and writes to a
// UDP socket do not wait; deadlines have nothing to bound.
func (c *loopUDPConn) SetDeadline(time.Time) error      { return nil }
func (c *loopUDPConn) SetReadDeadline(time.Time) error  { return nil }
func (c *loopUDPConn) SetWriteDeadline(time.Time) error { return nil }

package natlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
)

// Host is a network namespace of the lab: a client host, a router, or the
// server. It implements netx.Network: sockets it opens live in its namespace.
type Host struct {
	lab    *Lab
	label  string // "a/0", "server", "router a", "m"
	netns  string // namespace name
	nsFile *os.File
	ifaces []Iface
}

// Iface is one interface of a host and its addresses.
type Iface struct {
	Name string
	// LAN is the name of the LAN it is on ("" for the internet segment).
	LAN   string
	Addr  netip.Prefix // IPv4
	Addr6 netip.Prefix // global IPv6 (zero when none)
}

var _ netx.Network = (*Host)(nil)

// String names the host for logs.
func (h *Host) String() string { return h.label }

// Netns is the network namespace name, for `ip netns exec`.
func (h *Host) Netns() string { return h.netns }

// Ifaces lists the host's interfaces.
func (h *Host) Ifaces() []Iface { return append([]Iface(nil), h.ifaces...) }

// Addr is the IPv4 address of the host's first interface.
func (h *Host) Addr() netip.Addr { return h.ifaces[0].Addr.Addr() }

// Addr6 is the global IPv6 address of the host's first interface (on a plain
// LAN an address of an unrouted 2001:db8:2:<n>::/64 prefix).
func (h *Host) Addr6() netip.Addr { return h.ifaces[0].Addr6.Addr() }

// Do runs fn on an OS thread switched into the host's namespace. Sockets
// created inside fn stay in the namespace. fn must not start goroutines that
// expect to be in the namespace.
func (h *Host) Do(fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("natlab: open own netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(h.nsFile.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("natlab: setns into %s: %w", h.netns, err)
	}
	// Deferred, so that a panic in fn also switches the thread back.
	defer func() {
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			// Leave the thread locked: the runtime ends it with this
			// goroutine rather than reuse a thread stuck in the lab.
			err = errors.Join(err, fmt.Errorf("natlab: setns back from %s: %w", h.netns, serr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// ListenPacket opens a packet socket in the host's namespace.
func (h *Host) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.Do(func() (err error) {
		c, err = (&net.ListenConfig{}).ListenPacket(ctx, network, address)
		return err
	})
	return c, err
}

// Listen opens a stream listener in the host's namespace.
func (h *Host) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() (err error) {
		l, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	return l, err
}

// Dial connects from the host's namespace; address must be an IP literal
// with port (no name resolution happens inside a lab).
func (h *Host) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// DialUDP opens a connected UDP socket from the host's namespace to raddr.
func (h *Host) DialUDP(raddr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := h.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(raddr))
		return err
	})
	return c, err
}

// Command prepares name to run inside the host's namespace (through
// `ip netns exec`). The process gets SIGKILL when the test process dies
// (Pdeathsig), runs in its own process group, and ctx's end kills the whole
// group. Prefer Start, which also registers cleanup.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.netns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Start starts name inside the host's namespace and registers a cleanup that
// kills its process group (by pgid) and waits for it. Output goes to the
// test log unless cmd.Stdout/Stderr are set by configure (which may be nil).
func (h *Host) Start(t testing.TB, configure func(*exec.Cmd), name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := h.Command(context.Background(), name, args...)
	if configure != nil {
		configure(cmd)
	}
	if cmd.Stdout == nil {
		cmd.Stdout = tlogWriter{t, h.label + " " + name + ": "}
	}
	if cmd.Stderr == nil {
		cmd.Stderr = tlogWriter{t, h.label + " " + name + ": "}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("natlab: start %s in %s: %v", name, h.label, err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	return cmd
}

type tlogWriter struct {
	t      testing.TB
	prefix string
}

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s%s", w.prefix, p)
	return len(p), nil
}

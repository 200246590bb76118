// Package netx is the seam through which services open sockets, so that a test
// can hand a service loopback port 0 or a socket inside a network namespace
// (internal/natlab hosts implement Network), and so that every bind error tells
// the operator what went wrong in one line.
package netx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
)

// Network opens listening sockets.
type Network interface {
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
	Listen(ctx context.Context, network, address string) (net.Listener, error)
}

// Host is the host's own network stack. Its zero value is ready to use; set
// Config to add socket options (SO_REUSEPORT, buffer sizes) through Control.
type Host struct {
	Config net.ListenConfig
}

// ListenPacket opens a packet socket on the host.
func (h Host) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	return h.Config.ListenPacket(ctx, network, address)
}

// Listen opens a stream listener on the host.
func (h Host) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	return h.Config.Listen(ctx, network, address)
}

// Or returns n, or Host{} when n is nil.
func Or(n Network) Network {
	if n == nil {
		return Host{}
	}
	return n
}

// BindError rewrites a listen error into one line naming the address and the
// likely cause, e.g. "udp :3478: address already in use — is another TURN
// server running?". who names what usually holds the port ("another TURN
// server"); it may be empty.
func BindError(network, address, who string, err error) error {
	if err == nil {
		return nil
	}
	var cause string
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		cause = "address already in use"
		if who != "" {
			cause += " — is " + who + " running?"
		}
	case errors.Is(err, syscall.EACCES):
		cause = "permission denied — ports below 1024 need root or CAP_NET_BIND_SERVICE"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		cause = "address not available — is this address assigned to a local interface?"
	default:
		cause = err.Error()
	}
	return &BindErr{Network: network, Address: address, Cause: cause, Err: err}
}

// BindErr is a listen failure with an operator-facing explanation.
type BindErr struct {
	Network, Address, Cause string
	Err                     error
}

func (e *BindErr) Error() string { return fmt.Sprintf("%s %s: %s", e.Network, e.Address, e.Cause) }
func (e *BindErr) Unwrap() error { return e.Err }

// CheckListenAddr validates a listen address of the form "host:port", ":port"
// or "[v6]:port" with a port in 0..65535. Port 0 picks a free port (tests).
func CheckListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. \":8080\" or \"127.0.0.1:8080\")", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port %q in %q is out of range 0-65535", port, addr)
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("host %q in %q is not an IP address (use an address of a local interface, or leave it empty for all)", host, addr)
		}
	}
	return nil
}

// IsLoopbackListen reports whether addr binds only loopback ("127.0.0.1:6060",
// "[::1]:6060", "localhost:6060").
func IsLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// AddrPortOf converts a socket address (UDP, TCP, or anything whose String
// is "ip:port") to a netip.AddrPort; the zero value when it is not one.
// IPv4-mapped IPv6 addresses stay as they are: callers that compare
// addresses Unmap them.
func AddrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

package punch

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// virtualConn is the PacketConn quic-go's Transport runs on (the approach of
// Tailscale's magicsock). The endpoint reads the real sockets itself (its UDP
// socket and every TURN allocation), keeps our probes and STUN, and hands QUIC
// packets here. A packet from a path that belongs to a session is presented
// as coming from that session's virtual address, which never changes, so
// quic-go never sees a path switch: a WriteTo to a virtual address goes out
// over whichever path the session's ladder has chosen. Packets from addresses
// no session knows (a handshake from a stranger) keep their real address and
// answers to them go straight out of the UDP socket.
type virtualConn struct {
	e      *Endpoint
	in     chan inPacket
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed when the deadline changes
}

type inPacket struct {
	b    []byte
	from net.Addr
}

func newVirtualConn(e *Endpoint) *virtualConn {
	return &virtualConn{e: e, in: make(chan inPacket, 1024), closed: make(chan struct{}), wake: make(chan struct{})}
}

// deliver queues a QUIC packet (copied) for quic-go; a full queue drops it,
// as a full socket buffer would.
func (c *virtualConn) deliver(b []byte, from net.Addr) {
	select {
	case c.in <- inPacket{b: append([]byte(nil), b...), from: from}:
	case <-c.closed:
	default:
	}
}

func (c *virtualConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl, wake := c.deadline, c.wake
		c.mu.Unlock()
		var timer *time.Timer
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			timeout = timer.C
		}
		stop := func() {
			if timer != nil {
				timer.Stop()
			}
		}
		select {
		case pk := <-c.in:
			stop()
			return copy(p, pk.b), pk.from, nil
		case <-c.closed:
			stop()
			return 0, nil, net.ErrClosed
		case <-timeout:
			return 0, nil, os.ErrDeadlineExceeded
		case <-wake: // the deadline moved: wait again with the new one
			stop()
		}
	}
}

func (c *virtualConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.AddrError{Err: "not a UDP address", Addr: addr.String()}
	}
	ap := ua.AddrPort()
	if a := c.e.attemptByVirtual(ap); a != nil {
		a.sendQUIC(p)
		return len(p), nil
	}
	return c.e.conn.WriteTo(p, addr)
}

func (c *virtualConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *virtualConn) LocalAddr() net.Addr { return c.e.conn.LocalAddr() }

func (c *virtualConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *virtualConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
	return nil
}

func (c *virtualConn) SetWriteDeadline(time.Time) error { return nil }

var virtualCounter atomic.Uint32

// newVirtualAddr makes a session's virtual peer address: in a ULA prefix
// (fd00::/8 is never routed on the internet), port 9 (discard). It never
// leaves the process: virtualConn maps it to the session's active path.
func newVirtualAddr() netip.AddrPort {
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0xfd, 0x72, 0x7a, 0x76 // "rzv"
	binary.BigEndian.PutUint32(b[12:], virtualCounter.Add(1))
	return netip.AddrPortFrom(netip.AddrFrom16(b), 9)
}

// SetReadBuffer and SetWriteBuffer size the real socket (quic-go asks).
func (c *virtualConn) SetReadBuffer(n int) error {
	if s, ok := c.e.conn.(interface{ SetReadBuffer(int) error }); ok {
		return s.SetReadBuffer(n)
	}
	return nil
}

func (c *virtualConn) SetWriteBuffer(n int) error {
	if s, ok := c.e.conn.(interface{ SetWriteBuffer(int) error }); ok {
		return s.SetWriteBuffer(n)
	}
	return nil
}

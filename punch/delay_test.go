package punch

import (
	"net"
	"sync"
	"time"
)

// delayLine delivers writes after a fixed delay, in order: what netem on a
// router's WAN egress adds, for kernels without netem. Each write is copied
// and handed to one goroutine that sends it when due.
type delayLine struct {
	delay time.Duration
	queue chan delayed
	once  sync.Once
	done  chan struct{}
}

type delayed struct {
	due  time.Time
	b    []byte
	send func([]byte)
}

func newDelayLine(d time.Duration) *delayLine {
	l := &delayLine{delay: d, queue: make(chan delayed, 4096), done: make(chan struct{})}
	go func() {
		for {
			select {
			case w := <-l.queue:
				if wait := time.Until(w.due); wait > 0 {
					time.Sleep(wait) // the delay being emulated, not synchronisation
				}
				w.send(w.b)
			case <-l.done:
				return
			}
		}
	}()
	return l
}

func (l *delayLine) push(b []byte, send func([]byte)) {
	select {
	case l.queue <- delayed{due: time.Now().Add(l.delay), b: append([]byte(nil), b...), send: send}:
	default: // a full queue drops, like a full qdisc
	}
}

func (l *delayLine) close() { l.once.Do(func() { close(l.done) }) }

// delayedPacketConn delays every WriteTo.
type delayedPacketConn struct {
	net.PacketConn
	line *delayLine
}

func (c *delayedPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.line.push(b, func(b []byte) { c.PacketConn.WriteTo(b, addr) })
	return len(b), nil
}

func (c *delayedPacketConn) Close() error { c.line.close(); return c.PacketConn.Close() }

// delayedConn delays every Write of a stream connection, keeping order.
type delayedConn struct {
	net.Conn
	line *delayLine
}

func (c *delayedConn) Write(b []byte) (int, error) {
	c.line.push(b, func(b []byte) { c.Conn.Write(b) })
	return len(b), nil
}

func (c *delayedConn) Close() error { c.line.close(); return c.Conn.Close() }

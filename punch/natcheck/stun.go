package natcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v4"
)

// conn runs STUN transactions over one packet socket: a single reader
// dispatches responses by transaction ID, and also hands over Binding
// requests the client sent to itself (hairpin probes).
type conn struct {
	pc    net.PacketConn
	owned bool // close on stop (false: only unblock the read)

	mu      sync.Mutex
	pending map[[stun.TransactionIDSize]byte]chan reply
	done    chan struct{}
}

type reply struct {
	msg  *stun.Message
	from netip.AddrPort
}

func newConn(pc net.PacketConn, owned bool) *conn {
	c := &conn{pc: pc, owned: owned, pending: map[[stun.TransactionIDSize]byte]chan reply{}, done: make(chan struct{})}
	// A deadline the caller left on its socket would make every read fail.
	pc.SetReadDeadline(time.Time{})
	go c.read()
	return c
}

func (c *conn) read() {
	defer close(c.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := c.pc.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !c.stopping() {
				continue
			}
			return
		}
		if !stun.IsMessage(buf[:n]) {
			continue
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if m.Decode() != nil {
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.TransactionID]
		c.mu.Unlock()
		if ch == nil {
			continue
		}
		select {
		case ch <- reply{msg: m, from: addrPortOf(from)}:
		default:
		}
	}
}

func (c *conn) stopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending == nil
}

// stop ends the reader; a borrowed socket gets its read deadline cleared.
func (c *conn) stop() {
	c.mu.Lock()
	c.pending = nil
	c.mu.Unlock()
	if c.owned {
		c.pc.Close()
	} else {
		c.pc.SetReadDeadline(time.Unix(1, 0))
	}
	<-c.done
	if !c.owned {
		c.pc.SetReadDeadline(time.Time{})
	}
}

func (c *conn) localPort() uint16 { return addrPortOf(c.pc.LocalAddr()).Port() }

// expect registers a transaction ID and returns its channel.
func (c *conn) expect(id [stun.TransactionIDSize]byte) chan reply {
	ch := make(chan reply, 4)
	c.mu.Lock()
	if c.pending != nil {
		c.pending[id] = ch
	}
	c.mu.Unlock()
	return ch
}

func (c *conn) forget(id [stun.TransactionIDSize]byte) {
	c.mu.Lock()
	if c.pending != nil {
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

var errTimeout = errors.New("no response")

// roundTrip sends a Binding request (with extra attributes) to `to`,
// retransmitting with a doubling interval from rto, until a response arrives
// or timeout passes (errTimeout).
func (c *conn) roundTrip(ctx context.Context, to netip.AddrPort, rto, timeout time.Duration, extra ...stun.Setter) (reply, error) {
	req, err := bindingRequest(extra...)
	if err != nil {
		return reply{}, err
	}
	ch := c.expect(req.TransactionID)
	defer c.forget(req.TransactionID)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	dst := net.UDPAddrFromAddrPort(to)
	for {
		if _, err := c.pc.WriteTo(req.Raw, dst); err != nil {
			return reply{}, fmt.Errorf("send to %v: %w", to, err)
		}
		resend := time.NewTimer(rto)
		select {
		case r := <-ch:
			resend.Stop()
			if r.msg.Type.Class == stun.ClassRequest {
				continue // our own request looped back; not an answer
			}
			return r, nil
		case <-resend.C:
			rto *= 2
		case <-deadline.C:
			resend.Stop()
			return reply{}, errTimeout
		case <-ctx.Done():
			resend.Stop()
			return reply{}, ctx.Err()
		}
	}
}

// changeRequest is the RFC 5780 CHANGE-REQUEST attribute.
type changeRequest struct{ ip, port bool }

func (r changeRequest) AddTo(m *stun.Message) error {
	var v byte
	if r.ip {
		v |= 0x4
	}
	if r.port {
		v |= 0x2
	}
	m.Add(stun.AttrChangeRequest, []byte{0, 0, 0, v})
	return nil
}

// responsePort is the RFC 5780 RESPONSE-PORT attribute.
type responsePort uint16

func (p responsePort) AddTo(m *stun.Message) error {
	m.Add(stun.AttrResponsePort, []byte{byte(p >> 8), byte(p), 0, 0})
	return nil
}

// binding is what a Binding success response says.
type binding struct {
	mapped, other, origin netip.AddrPort
	from                  netip.AddrPort
}

func parseBinding(r reply) (binding, error) {
	b := binding{from: r.from}
	if r.msg.Type.Class == stun.ClassErrorResponse {
		var ec stun.ErrorCodeAttribute
		if err := ec.GetFrom(r.msg); err == nil {
			return b, &stunError{Code: int(ec.Code), Reason: string(ec.Reason)}
		}
		return b, &stunError{Code: 0, Reason: "error response"}
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(r.msg); err == nil {
		b.mapped = udpAddrPort(xor.IP, xor.Port)
	} else {
		var ma stun.MappedAddress
		if err := ma.GetFrom(r.msg); err != nil {
			return b, errors.New("response has no (XOR-)MAPPED-ADDRESS")
		}
		b.mapped = udpAddrPort(ma.IP, ma.Port)
	}
	var other stun.OtherAddress
	if err := other.GetFrom(r.msg); err == nil {
		b.other = udpAddrPort(other.IP, other.Port)
	}
	var origin stun.ResponseOrigin
	if err := origin.GetFrom(r.msg); err == nil {
		b.origin = udpAddrPort(origin.IP, origin.Port)
	}
	return b, nil
}

type stunError struct {
	Code   int
	Reason string
}

func (e *stunError) Error() string { return fmt.Sprintf("STUN error %d %s", e.Code, e.Reason) }

func udpAddrPort(ip net.IP, port int) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// bindingRequest builds a Binding request with a fresh transaction ID.
func bindingRequest(extra ...stun.Setter) (*stun.Message, error) {
	return stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, append(extra, stun.Fingerprint)...)...)
}

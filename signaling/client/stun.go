package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v4"

	"github.com/rendezvous-p2p/rendezvous/internal/stunext"
)

// BindPeerToken sends STUN Binding requests carrying the PEER-TOKEN attribute
// (Registered.PeerToken) from pc to the server's STUN address, retransmitting
// (RFC 8489: 100ms doubling) until an answer arrives or ctx ends, and returns
// the reflexive address the server saw. The signaling server learns the same
// address through the relay and sends a "reflexive" event.
//
// It reads from pc: do not read pc concurrently while it runs.
func BindPeerToken(ctx context.Context, pc net.PacketConn, server net.Addr, token string) (netip.AddrPort, error) {
	if len(token) == 0 {
		return netip.AddrPort{}, errors.New("signaling: empty peer token")
	}
	req, err := NewBindingRequest(token)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer pc.SetReadDeadline(time.Time{})
	buf := make([]byte, 1500)
	rto := 100 * time.Millisecond
	for {
		if _, err := pc.WriteTo(req.Raw, server); err != nil {
			return netip.AddrPort{}, err
		}
		deadline := time.Now().Add(rto)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		pc.SetReadDeadline(deadline)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return netip.AddrPort{}, err
			}
			resp, err := ParseBindingResponse(buf[:n])
			if resp.ID != req.ID {
				continue // not our answer (or not STUN at all)
			}
			return resp.Mapped, err
		}
		if ctx.Err() != nil {
			return netip.AddrPort{}, ctx.Err()
		}
		rto = min(rto*2, 1600*time.Millisecond)
	}
}

// BindingRequest is an encoded STUN Binding request.
type BindingRequest struct {
	Raw []byte
	ID  [12]byte // transaction id
}

// NewBindingRequest encodes a Binding request with a fresh transaction id
// and, when token is not empty, the PEER-TOKEN attribute. Callers that read
// their socket some other way (punch's endpoint) send Raw themselves and hand
// answers to ParseBindingResponse.
func NewBindingRequest(token string) (BindingRequest, error) {
	if len(token) > stunext.MaxPeerTokenLen {
		return BindingRequest{}, fmt.Errorf("signaling: peer token length %d over %d", len(token), stunext.MaxPeerTokenLen)
	}
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if token != "" {
		setters = append(setters, stun.RawAttribute{Type: stun.AttrType(stunext.AttrPeerToken), Value: []byte(token)})
	}
	m, err := stun.Build(append(setters, stun.Fingerprint)...)
	if err != nil {
		return BindingRequest{}, err
	}
	return BindingRequest{Raw: m.Raw, ID: m.TransactionID}, nil
}

// BindingResponse is a decoded STUN Binding answer.
type BindingResponse struct {
	ID [12]byte // transaction id
	// Mapped is the reflexive address (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS
	// from an old server).
	Mapped netip.AddrPort
	// Other is the server's RFC 5780 OTHER-ADDRESS (alternate IP and port),
	// when it has one: a second destination that shows whether the NAT maps
	// per destination.
	Other netip.AddrPort
}

// ParseBindingResponse reads a STUN Binding answer. The id is zero when b is
// not a STUN message; an error response, or an answer without an address,
// returns its id with an error.
func ParseBindingResponse(b []byte) (resp BindingResponse, err error) {
	if !stun.IsMessage(b) {
		return resp, errors.New("signaling: not a STUN message")
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return resp, fmt.Errorf("signaling: malformed STUN message: %w", err)
	}
	resp.ID = m.TransactionID
	if m.Type.Class == stun.ClassErrorResponse {
		var code stun.ErrorCodeAttribute
		code.GetFrom(m)
		return resp, fmt.Errorf("signaling: STUN error %d %s", code.Code, code.Reason)
	}
	var other stun.OtherAddress
	if other.GetFrom(m) == nil {
		if ip, ok := netip.AddrFromSlice(other.IP); ok && other.Port > 0 && other.Port < 1<<16 {
			resp.Other = netip.AddrPortFrom(ip.Unmap(), uint16(other.Port))
		}
	}
	var ip net.IP
	var port int
	var xor stun.XORMappedAddress
	if xerr := xor.GetFrom(m); xerr == nil {
		ip, port = xor.IP, xor.Port
	} else {
		var mapped stun.MappedAddress
		if merr := mapped.GetFrom(m); merr != nil {
			return resp, fmt.Errorf("signaling: STUN answer without an address: %w", xerr)
		}
		ip, port = mapped.IP, mapped.Port
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return resp, errors.New("signaling: STUN answer with a bad address")
	}
	resp.Mapped = netip.AddrPortFrom(a.Unmap(), uint16(port))
	return resp, nil
}

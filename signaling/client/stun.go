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
	if len(token) == 0 || len(token) > stunext.MaxPeerTokenLen {
		return netip.AddrPort{}, fmt.Errorf("signaling: peer token length %d out of range 1..%d", len(token), stunext.MaxPeerTokenLen)
	}
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest,
		stun.RawAttribute{Type: stun.AttrType(stunext.AttrPeerToken), Value: []byte(token)}, stun.Fingerprint)
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
			if !stun.IsMessage(buf[:n]) {
				continue
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() != nil || m.TransactionID != req.TransactionID {
				continue
			}
			var xor stun.XORMappedAddress
			if err := xor.GetFrom(m); err != nil {
				return netip.AddrPort{}, fmt.Errorf("signaling: STUN answer without XOR-MAPPED-ADDRESS: %w", err)
			}
			ip, ok := netip.AddrFromSlice(xor.IP)
			if !ok {
				return netip.AddrPort{}, errors.New("signaling: STUN answer with a bad address")
			}
			return netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port)), nil
		}
		if ctx.Err() != nil {
			return netip.AddrPort{}, ctx.Err()
		}
		rto = min(rto*2, 1600*time.Millisecond)
	}
}

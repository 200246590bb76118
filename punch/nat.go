package punch

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// NATType is the mapping behaviour of the NAT in front of a socket (RFC 4787
// §4.1), in signaling's words (client.NATReport.Type). It decides how a pair
// punches: two endpoint-independent mappings punch plainly; an
// endpoint-dependent ("symmetric") mapping against an endpoint-independent
// one needs birthday probing (birthday.go) unless the easy side's filtering
// lets plain punching through.
type NATType string

// The NAT types DiscoverNAT tells apart ("open" comes from natcheck).
const (
	NATUnknown              NATType = "unknown"
	NATOpen                 NATType = "open"
	NATEndpointIndependent  NATType = "endpoint-independent"
	NATAddressDependent     NATType = "address-dependent"
	NATAddressPortDependent NATType = "address-port-dependent"
)

// hard is a NAT that gives every destination its own public port: the
// peer cannot know which port to send to.
func (t NATType) hard() bool { return t == NATAddressDependent || t == NATAddressPortDependent }

// NATInfo is what STUN showed about the NAT in front of the endpoint's socket.
type NATInfo struct {
	Reflexive netip.AddrPort
	Type      NATType
}

// mappingTestTimeout bounds RFC 5780 tests II and III: a server that does
// not answer them leaves the type unknown rather than holding up startup.
const mappingTestTimeout = time.Second

// DiscoverNAT asks server for this socket's reflexive address (token, when
// not empty, rides in a PEER-TOKEN attribute so the rendezvous server ties
// that address to this peer) and, when the server names an RFC 5780 other
// address, tests the NAT's mapping (RFC 5780 §4.3 tests II and III: the same
// request to the alternate IP, then to the alternate IP and port). The type is
// remembered: Connect chooses how to punch from it and the peer's type.
func (e *Endpoint) DiscoverNAT(ctx context.Context, server netip.AddrPort, token string) (NATInfo, error) {
	first, err := e.bind(ctx, server, token)
	if err != nil {
		return NATInfo{}, err
	}
	info := NATInfo{Reflexive: first.Mapped, Type: NATUnknown}
	other := first.Other
	if other.IsValid() && other.Addr() != server.Addr() && other.Addr().Is4() == server.Addr().Is4() {
		tctx, cancel := context.WithTimeout(ctx, mappingTestTimeout)
		defer cancel()
		var (
			ii, iii       client.BindingResponse
			errII, errIII error
			wg            sync.WaitGroup
		)
		wg.Go(func() { ii, errII = e.bind(tctx, netip.AddrPortFrom(other.Addr(), server.Port()), "") })
		wg.Go(func() { iii, errIII = e.bind(tctx, other, "") })
		wg.Wait()
		switch {
		case errII != nil || errIII != nil:
			// A filter or server that drops one test: say unknown, punch plainly.
		case ii.Mapped == first.Mapped:
			info.Type = NATEndpointIndependent
		case iii.Mapped == ii.Mapped:
			info.Type = NATAddressDependent
		default:
			info.Type = NATAddressPortDependent
		}
	}
	e.SetNATType(info.Type)
	return info, nil
}

// SetNATType sets this endpoint's NAT type, e.g. from a natcheck report,
// overriding what DiscoverNAT found.
func (e *Endpoint) SetNATType(t NATType) {
	e.mu.Lock()
	e.nat = t
	e.mu.Unlock()
}

// NATType is this endpoint's NAT type, NATUnknown before DiscoverNAT.
func (e *Endpoint) NATType() NATType {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.nat == "" {
		return NATUnknown
	}
	return e.nat
}

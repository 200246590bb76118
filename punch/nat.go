package punch

import (
	"context"
	"fmt"
	"net"
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

// ParseNATType reads a NAT type by its name.
func ParseNATType(s string) (NATType, error) {
	for _, t := range []NATType{NATUnknown, NATOpen, NATEndpointIndependent, NATAddressDependent, NATAddressPortDependent} {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("NAT type %q is not one of open, endpoint-independent, address-dependent, address-port-dependent, unknown", s)
}

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
// that address to this peer) and tests the NAT's mapping: when the server
// names an RFC 5780 other address, with RFC 5780 §4.3 tests II and III (the
// same request to the alternate IP, then to the alternate IP and port);
// otherwise, when the endpoint has a UDP TURN allocation (AllocateRelays),
// through it (see mappingViaRelay). The type is remembered: Connect chooses
// how to punch from it and the peer's type.
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
	} else if !other.IsValid() {
		info.Type = e.mappingViaRelay(ctx, first.Mapped)
	}
	e.SetNATType(info.Type)
	return info, nil
}

// mappingViaRelay tests the mapping with a server that has one address: a
// STUN Binding request sent from the endpoint's socket to our own TURN
// relayed address comes back through the allocation from the public address
// our NAT chose for that destination (another port of the same server). A
// port other than the reflexive one means the NAT maps per destination
// ("address-port-dependent"); the same port, endpoint-independent (an
// address-dependent NAT also keeps it here: only the port changed, and such
// a pair then punches plainly).
func (e *Endpoint) mappingViaRelay(ctx context.Context, reflexive netip.AddrPort) NATType {
	var al *allocation
	e.mu.Lock()
	for _, a := range e.allocs {
		if a.transport == relayUDP && a.relayed.Addr().Is4() == reflexive.Addr().Is4() {
			al = a
			break
		}
	}
	e.mu.Unlock()
	perm, ok := al.permitter()
	if !ok {
		return NATUnknown
	}
	if err := perm.CreatePermissions(net.UDPAddrFromAddrPort(reflexive)); err != nil {
		e.log.Debug("mapping test: TURN permission for our own address", "err", err)
		return NATUnknown
	}
	tctx, cancel := context.WithTimeout(ctx, mappingTestTimeout)
	defer cancel()
	echo, err := e.bind(tctx, al.relayed, "")
	switch {
	case err != nil:
		return NATUnknown
	case echo.Mapped == reflexive:
		return NATEndpointIndependent
	}
	return NATAddressPortDependent
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

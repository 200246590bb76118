// Package stunserver answers STUN Binding requests for old and new clients:
// RFC 8489 (and RFC 5389) Binding with XOR-MAPPED-ADDRESS, classic RFC 3489
// Binding without the magic cookie, and RFC 5780 NAT behaviour discovery
// (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST). It also reports the
// rendezvous PEER-TOKEN attribute (internal/stunext) with the address the
// request came from.
//
// The core is a pure function pair, ParseRequest and AppendResponse, fuzzed
// in this package. Server owns up to four UDP sockets (RFC 5780 §4.1):
//
//	                 primary port      alternate port
//	primary IP       Primary (0)       AltPort (1)
//	alternate IP     AltIP   (2)       AltBoth (3)
//
// A CHANGE-REQUEST flips the IP bit, the port bit or both of the socket the
// request arrived on, and the response leaves from that socket.
//
// Header of a Binding request (20 bytes, then attributes):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|0 0|  Type = 0x0001 (Binding)  |   Length (multiple of 4)      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   Magic cookie 0x2112A442 (RFC 5389+) — or, in RFC 3489, the  |
//	|   first 32 bits of a 128-bit transaction ID                   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                Transaction ID (96 bits)                       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// CHANGE-REQUEST (0x0003) value: 32 bits, 0x4 = change IP, 0x2 = change port.
//
// Responses: RFC 8489 clients get XOR-MAPPED-ADDRESS, MAPPED-ADDRESS,
// RESPONSE-ORIGIN, OTHER-ADDRESS (when an alternate is configured) and
// FINGERPRINT. RFC 3489 clients get MAPPED-ADDRESS, SOURCE-ADDRESS and
// CHANGED-ADDRESS (when known), and the response echoes their 128-bit ID.
package stunserver

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"github.com/pion/stun/v4"

	"github.com/rendezvous-p2p/rendezvous/internal/stunext"
)

// magicCookie is the fixed RFC 5389 value in bytes 4..8 of the header.
const magicCookie = 0x2112A442

// headerSize is the STUN header length.
const headerSize = 20

// Socket names one of the server's up to four sockets. Bit 0 is "alternate
// port", bit 1 is "alternate IP".
type Socket uint8

// The four sockets of an RFC 5780 server.
const (
	Primary Socket = 0 // primary IP, primary port
	AltPort Socket = 1 // primary IP, alternate port
	AltIP   Socket = 2 // alternate IP, primary port
	AltBoth Socket = 3 // alternate IP, alternate port
)

// Addrs are the server's addresses as clients see them.
type Addrs struct {
	Primary netip.AddrPort
	// Alternate has an IP and a port that both differ from Primary's; it is
	// the zero value when RFC 5780 behaviour discovery is off.
	Alternate netip.AddrPort
}

// HasAlternate reports whether RFC 5780 behaviour discovery is on.
func (a Addrs) HasAlternate() bool { return a.Alternate.IsValid() }

// Of returns the address of socket s. Without an alternate, only Primary has one.
func (a Addrs) Of(s Socket) netip.AddrPort {
	if s == Primary {
		return a.Primary
	}
	if !a.HasAlternate() {
		return netip.AddrPort{}
	}
	ip, port := a.Primary.Addr(), a.Primary.Port()
	if s&AltIP != 0 {
		ip = a.Alternate.Addr()
	}
	if s&AltPort != 0 {
		port = a.Alternate.Port()
	}
	return netip.AddrPortFrom(ip, port)
}

// Request is a parsed Binding request.
type Request struct {
	// Classic is true for an RFC 3489 request (no magic cookie).
	Classic bool
	// ID is bytes 4..20 of the header: the magic cookie and 96-bit
	// transaction ID, or RFC 3489's 128-bit transaction ID.
	ID [16]byte
	// ChangeIP and ChangePort are the CHANGE-REQUEST flags.
	ChangeIP, ChangePort bool
	// PeerToken is the PEER-TOKEN value, empty when absent or malformed.
	PeerToken string
	// Unknown lists comprehension-required attributes this server does not
	// understand; the answer is then 420 (Unknown Attribute).
	Unknown []uint16
}

// Errors from ParseRequest. A caller drops the datagram on any of them.
var (
	ErrNotBinding     = errors.New("stunserver: not a STUN Binding request")
	ErrMalformed      = errors.New("stunserver: malformed STUN message")
	ErrBadFingerprint = errors.New("stunserver: FINGERPRINT mismatch")
)

// IsBindingRequest is the cheap test a packet demultiplexer runs on every
// datagram: header type Binding request, a plausible length, nothing else.
func IsBindingRequest(b []byte) bool {
	if len(b) < headerSize || b[0] != 0x00 || b[1] != 0x01 {
		return false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	return n%4 == 0 && headerSize+n <= len(b)
}

// knownRequired are the comprehension-required attributes a Binding request
// may carry that need no action here (ICE and authentication attributes are
// accepted and ignored: a Binding to a public STUN server is unauthenticated).
func knownRequired(t uint16) bool {
	switch stun.AttrType(t) {
	case stun.AttrMappedAddress, stun.AttrChangeRequest, stun.AttrSourceAddress, stun.AttrChangedAddress,
		stun.AttrUsername, stun.AttrMessageIntegrity, stun.AttrErrorCode, stun.AttrUnknownAttributes,
		stun.AttrRealm, stun.AttrNonce, stun.AttrXORMappedAddress, stun.AttrPriority, stun.AttrUseCandidate,
		stun.AttrPadding, stun.AttrMessageIntegritySHA256, stun.AttrPasswordAlgorithm, stun.AttrUserhash:
		return true
	}
	return false
}

// ParseRequest parses a Binding request. It does not keep b.
func ParseRequest(b []byte) (Request, error) {
	var req Request
	if !IsBindingRequest(b) {
		return req, ErrNotBinding
	}
	n := headerSize + int(binary.BigEndian.Uint16(b[2:4]))
	b = b[:n]
	req.Classic = binary.BigEndian.Uint32(b[4:8]) != magicCookie
	copy(req.ID[:], b[4:20])

	// pion's decoder insists on the magic cookie; give a classic request one
	// in a copy so its attributes can be read the same way.
	m := &stun.Message{Raw: append(make([]byte, 0, n), b...)}
	if req.Classic {
		binary.BigEndian.PutUint32(m.Raw[4:8], magicCookie)
	}
	if err := m.Decode(); err != nil {
		return Request{}, ErrMalformed
	}
	if !req.Classic && m.Contains(stun.AttrFingerprint) {
		if err := stun.Fingerprint.Check(m); err != nil {
			return Request{}, ErrBadFingerprint
		}
	}
	for _, a := range m.Attributes {
		t := uint16(a.Type)
		switch {
		case a.Type == stun.AttrChangeRequest:
			if len(a.Value) != 4 {
				return Request{}, ErrMalformed
			}
			flags := binary.BigEndian.Uint32(a.Value)
			req.ChangeIP = flags&0x4 != 0
			req.ChangePort = flags&0x2 != 0
		case t == stunext.AttrPeerToken:
			if len(a.Value) >= 1 && len(a.Value) <= stunext.MaxPeerTokenLen {
				req.PeerToken = string(a.Value)
			}
		case t < 0x8000 && !knownRequired(t):
			req.Unknown = append(req.Unknown, t)
		}
	}
	return req, nil
}

// Reply says which socket a request arriving on socket on must be answered
// from, and false when the request asks for a change this server cannot
// make (no alternate address configured).
func (r *Request) Reply(on Socket, addrs Addrs) (via Socket, ok bool) {
	via = on
	if r.ChangeIP {
		via ^= AltIP
	}
	if r.ChangePort {
		via ^= AltPort
	}
	if via != on && !addrs.HasAlternate() {
		return on, false
	}
	return via, true
}

// AppendResponse appends to dst the answer to req, which arrived from from
// on socket on, and returns it with the socket it must leave from. from is
// unmapped (an IPv4-mapped IPv6 source is reported as IPv4).
func AppendResponse(dst []byte, req *Request, from netip.AddrPort, on Socket, addrs Addrs) (resp []byte, via Socket) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	m := &stun.Message{Raw: dst[:0]}
	copy(m.TransactionID[:], req.ID[4:])

	via, ok := req.Reply(on, addrs)
	unknown := req.Unknown
	if !ok {
		// RFC 5780 §6.1: no alternate address → 420 naming CHANGE-REQUEST.
		unknown = append(unknown[:len(unknown):len(unknown)], uint16(stun.AttrChangeRequest))
	}

	var setters []stun.Setter
	if len(unknown) > 0 {
		ua := make(stun.UnknownAttributes, len(unknown))
		for i, t := range unknown {
			ua[i] = stun.AttrType(t)
		}
		setters = append(setters, stun.NewType(stun.MethodBinding, stun.ClassErrorResponse),
			stun.ErrorCodeAttribute{Code: stun.CodeUnknownAttribute, Reason: []byte("Unknown Attribute")}, ua)
	} else {
		mapped := net.IP(from.Addr().AsSlice())
		setters = append(setters, stun.BindingSuccess)
		if !req.Classic {
			setters = append(setters, &stun.XORMappedAddress{IP: mapped, Port: int(from.Port())})
		}
		setters = append(setters, &stun.MappedAddress{IP: mapped, Port: int(from.Port())})
		origin := addrs.Of(via)
		other := addrs.Of(on ^ AltBoth)
		if origin.IsValid() && !origin.Addr().IsUnspecified() {
			a := stun.MappedAddress{IP: origin.Addr().Unmap().AsSlice(), Port: int(origin.Port())}
			if req.Classic {
				setters = append(setters, attrAs{a, stun.AttrSourceAddress})
			} else {
				setters = append(setters, &stun.ResponseOrigin{IP: a.IP, Port: a.Port})
			}
		}
		if other.IsValid() {
			a := stun.MappedAddress{IP: other.Addr().Unmap().AsSlice(), Port: int(other.Port())}
			if req.Classic {
				setters = append(setters, attrAs{a, stun.AttrChangedAddress})
			} else {
				setters = append(setters, &stun.OtherAddress{IP: a.IP, Port: a.Port})
			}
		}
	}
	if !req.Classic {
		setters = append(setters, stun.Fingerprint)
	}
	if err := m.Build(setters...); err != nil {
		// Only oversized values fail to build, and every value here is bounded.
		panic("stunserver: building response: " + err.Error())
	}
	if req.Classic {
		copy(m.Raw[4:8], req.ID[:4])
	}
	return m.Raw, via
}

// attrAs adds an address with a type pion has no named struct for
// (SOURCE-ADDRESS, CHANGED-ADDRESS share MAPPED-ADDRESS's encoding).
type attrAs struct {
	addr stun.MappedAddress
	typ  stun.AttrType
}

func (a attrAs) AddTo(m *stun.Message) error { return a.addr.AddToAs(m, a.typ) }

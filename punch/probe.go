package punch

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"net/netip"
)

// Probe wire format (all integers big-endian). A probe is signed by its
// sender's ed25519 key, which both peers learned from the signaling server, so
// nobody else can make a peer adopt a path:
//
//	 0               1               2               3
//	+---------------+---------------+---------------+---------------+
//	| magic 0x1D    | version 1     | type 1=ping   | addr family   |
//	|               |               |      2=pong   | 0, 4 or 6     |
//	+---------------+---------------+---------------+---------------+
//	|                 session id (8 bytes, from signaling)          |
//	+---------------------------------------------------------------+
//	|                 sender public key (32 bytes, ed25519)         |
//	+---------------------------------------------------------------+
//	|                 tx id (12 bytes; a pong echoes its ping's)    |
//	+---------------------------------------------------------------+
//	|                 send time (8 bytes, unix ns, sender's clock)  |
//	+---------------------------------------------------------------+
//	| observed port (2 bytes) | observed IP (0, 4 or 16 bytes)      |
//	|   pong only: where the ping came from, as the responder saw it|
//	+---------------------------------------------------------------+
//	|                 ed25519 signature (64 bytes) over all above    |
//	+---------------------------------------------------------------+
//
// The magic's first byte is below 0x40, so quic-go, sharing the socket, hands
// probes to us (Transport.ReadNonQUICPacket), and it is not a STUN message
// type (STUN's first byte is 0x00 or 0x01).
const (
	probeMagic   = 0x1D
	probeVersion = 1

	probePing = 1
	probePong = 2

	probeHeaderLen = 4 + 8 + 32 + 12 + 8 // up to and including send time
	probeMaxLen    = probeHeaderLen + 2 + 16 + ed25519.SignatureSize
)

// probe is one decoded ping or pong.
type probe struct {
	typ      byte
	session  [8]byte
	sender   PublicKey
	txid     [12]byte
	sentUnix int64
	observed netip.AddrPort // pong only
}

var (
	errNotProbe     = errors.New("punch: not a probe")
	errBadProbe     = errors.New("punch: malformed probe")
	errBadSignature = errors.New("punch: probe signature does not verify")
)

// marshal appends the signed probe to b.
func (p *probe) marshal(b []byte, key ed25519.PrivateKey) []byte {
	start := len(b)
	b = p.appendBody(b)
	return append(b, ed25519.Sign(key, b[start:])...)
}

// appendBody appends everything the signature covers.
func (p *probe) appendBody(b []byte) []byte {
	fam := byte(0)
	switch {
	case p.observed.Addr().Is4() || p.observed.Addr().Is4In6():
		fam = 4
	case p.observed.Addr().Is6():
		fam = 6
	}
	b = append(b, probeMagic, probeVersion, p.typ, fam)
	b = append(b, p.session[:]...)
	b = append(b, p.sender[:]...)
	b = append(b, p.txid[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(p.sentUnix))
	if fam != 0 {
		b = binary.BigEndian.AppendUint16(b, p.observed.Port())
		if fam == 4 {
			ip4 := p.observed.Addr().Unmap().As4()
			b = append(b, ip4[:]...)
		} else {
			ip16 := p.observed.Addr().As16()
			b = append(b, ip16[:]...)
		}
	}
	return b
}

// isProbe says whether b looks like a probe (before any parsing).
func isProbe(b []byte) bool { return len(b) > 0 && b[0] == probeMagic }

// parseProbe decodes and verifies b. The signature is checked against the
// sender key carried in the probe; the caller must then check that key is a
// peer it expects.
func parseProbe(b []byte) (probe, error) {
	var p probe
	if !isProbe(b) {
		return p, errNotProbe
	}
	if len(b) < probeHeaderLen+ed25519.SignatureSize || len(b) > probeMaxLen || b[1] != probeVersion {
		return p, errBadProbe
	}
	p.typ = b[2]
	if p.typ != probePing && p.typ != probePong {
		return p, errBadProbe
	}
	fam := b[3]
	body := b[4:]
	copy(p.session[:], body[0:8])
	copy(p.sender[:], body[8:40])
	copy(p.txid[:], body[40:52])
	p.sentUnix = int64(binary.BigEndian.Uint64(body[52:60]))
	rest := body[60:]
	var ipLen int
	switch fam {
	case 0:
	case 4:
		ipLen = 4
	case 6:
		ipLen = 16
	default:
		return p, errBadProbe
	}
	if fam != 0 {
		if p.typ != probePong || len(rest) != 2+ipLen+ed25519.SignatureSize {
			return p, errBadProbe
		}
		port := binary.BigEndian.Uint16(rest[0:2])
		ip, _ := netip.AddrFromSlice(rest[2 : 2+ipLen])
		if ip.Is4In6() { // IPv4 travels as family 4: one encoding per address
			return p, errBadProbe
		}
		p.observed = netip.AddrPortFrom(ip, port)
		rest = rest[2+ipLen:]
	}
	if len(rest) != ed25519.SignatureSize {
		return p, errBadProbe
	}
	signed := b[:len(b)-ed25519.SignatureSize]
	if !ed25519.Verify(ed25519.PublicKey(p.sender[:]), signed, rest) {
		return p, errBadSignature
	}
	return p, nil
}

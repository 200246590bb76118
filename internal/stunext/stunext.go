// Package stunext holds the STUN extensions rendezvous defines on top of
// RFC 8489, shared by the relay (which answers them) and the peer side (which
// sends them).
//
// PEER-TOKEN (0xC0A1, comprehension-optional so other servers ignore it):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|        Type = 0xC0A1          |     Length (1..64 bytes)      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     opaque token issued by the signaling server at register   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// A peer puts it in a Binding request to the server's STUN port; the relay
// reports (token, observed source address) to the signaling server through a
// callback, so the server learns the peer's server-reflexive address without an
// extra round trip.
package stunext

// AttrPeerToken is the STUN attribute type of PEER-TOKEN.
const AttrPeerToken uint16 = 0xC0A1

// MaxPeerTokenLen bounds PEER-TOKEN's value.
const MaxPeerTokenLen = 64

package punch

import (
	"crypto/sha256"
	"net/netip"
	"time"
)

// LANPeer is the Peer to connect to for a player found on the local network
// (the LAN beacon) rather than through signaling: both sides derive the same
// session id from the room code and the two keys, and start at once. addrs
// are where the peer's beacons came from, with its announced port.
func LANPeer(roomCode string, self, other PublicKey, addrs []netip.AddrPort) Peer {
	lo, hi := self, other
	if hi.Less(lo) {
		lo, hi = hi, lo
	}
	h := sha256.New()
	h.Write([]byte("rendezvous lan session\x00" + roomCode + "\x00"))
	h.Write(lo[:])
	h.Write(hi[:])
	p := Peer{Key: other, Start: time.Now()}
	copy(p.Session[:], h.Sum(nil))
	for _, a := range addrs {
		p.Candidates = append(p.Candidates, Candidate{Addr: a, Kind: Host})
	}
	return p
}

package stunserver_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/pion/stun/v4"

	"github.com/rendezvous-p2p/rendezvous/internal/stunext"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
)

// FuzzBinding feeds arbitrary datagrams through the parser and, when they
// parse, checks that the answer is a well-formed STUN message for the same
// transaction that reports the sender's address.
func FuzzBinding(f *testing.F) {
	f.Add(bindingRequest(f, stun.Fingerprint))
	f.Add(bindingRequest(f, changeRequest(true, true), rawAttr{stun.AttrType(stunext.AttrPeerToken), []byte("t")}))
	f.Add(bindingRequest(f, rawAttr{stun.AttrResponsePort, []byte{1, 2, 0, 0}}))
	f.Add(classicRequest([16]byte{1, 2, 3}, changeRequest(false, true)))
	f.Add([]byte{0, 1, 0, 0})
	addrs := stunserver.Addrs{Primary: primary, Alternate: alt}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := stunserver.ParseRequest(b)
		if err != nil {
			return
		}
		for _, on := range []stunserver.Socket{stunserver.Primary, stunserver.AltBoth} {
			for _, a := range []stunserver.Addrs{addrs, {Primary: primary}} {
				if on != stunserver.Primary && !a.HasAlternate() {
					continue
				}
				resp, via := stunserver.AppendResponse(nil, &req, client, on, a)
				if !a.HasAlternate() && via != stunserver.Primary {
					t.Fatalf("answer via %d without an alternate", via)
				}
				m := decode(t, resp, req.Classic)
				if string(resp[4:20]) != string(req.ID[:]) {
					t.Fatal("transaction ID not echoed")
				}
				if int(binary.BigEndian.Uint16(resp[2:4]))+20 != len(resp) {
					t.Fatal("length field does not match")
				}
				if m.Type.Class == stun.ClassSuccessResponse {
					if got := addrAttr(t, m, stun.AttrMappedAddress); got != client {
						t.Fatalf("MAPPED-ADDRESS = %v", got)
					}
				} else if len(req.Unknown) == 0 && !(req.ChangeIP || req.ChangePort) {
					t.Fatal("error answer to a plain request")
				}
			}
		}
		_ = netip.AddrPort{}
	})
}

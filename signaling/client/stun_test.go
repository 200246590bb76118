package client

import (
	"net/netip"
	"testing"

	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
)

// answer is what our STUN responder says to req from `from`.
func answer(t testing.TB, req BindingRequest, from netip.AddrPort) []byte {
	parsed, err := stunserver.ParseRequest(req.Raw)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := stunserver.AppendResponse(nil, &parsed, from, stunserver.Primary, stunserver.Addrs{Primary: netip.MustParseAddrPort("192.0.2.1:3478")})
	return resp
}

func TestBindingRoundTrip(t *testing.T) {
	for _, from := range []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:40000"), netip.MustParseAddrPort("[2001:db8::7]:1")} {
		req, err := NewBindingRequest("tok-123")
		if err != nil {
			t.Fatal(err)
		}
		id, addr, err := ParseBindingResponse(answer(t, req, from))
		if err != nil || id != req.ID || addr != from {
			t.Fatalf("answer to %v: id match %v, addr %v, err %v", from, id == req.ID, addr, err)
		}
	}
	if _, err := NewBindingRequest(string(make([]byte, 65))); err == nil {
		t.Error("a 65-byte peer token was accepted")
	}
	if id, _, err := ParseBindingResponse([]byte("not stun at all, just text....")); err == nil || id != ([12]byte{}) {
		t.Errorf("non-STUN input: id %x err %v", id, err)
	}
}

func FuzzParseBindingResponse(f *testing.F) {
	req, _ := NewBindingRequest("seed")
	f.Add(answer(f, req, netip.MustParseAddrPort("198.51.100.2:5000")))
	f.Add(answer(f, req, netip.MustParseAddrPort("[2001:db8::2]:5000")))
	f.Add(req.Raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		id, addr, err := ParseBindingResponse(b)
		if err == nil && !addr.IsValid() {
			t.Fatalf("accepted %x without an address (id %x)", b, id)
		}
	})
}

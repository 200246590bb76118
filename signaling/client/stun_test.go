package client

import (
	"net/netip"
	"testing"

	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
)

// answer is what our STUN responder says to req from `from`.
func answer(t testing.TB, req BindingRequest, from netip.AddrPort) []byte {
	return answerFrom(t, req, from, stunserver.Addrs{Primary: netip.MustParseAddrPort("192.0.2.1:3478")})
}

func answerFrom(t testing.TB, req BindingRequest, from netip.AddrPort, server stunserver.Addrs) []byte {
	parsed, err := stunserver.ParseRequest(req.Raw)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := stunserver.AppendResponse(nil, &parsed, from, stunserver.Primary, server)
	return resp
}

func TestBindingRoundTrip(t *testing.T) {
	for _, from := range []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:40000"), netip.MustParseAddrPort("[2001:db8::7]:1")} {
		req, err := NewBindingRequest("tok-123")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := ParseBindingResponse(answer(t, req, from))
		if err != nil || resp.ID != req.ID || resp.Mapped != from || resp.Other.IsValid() {
			t.Fatalf("answer to %v: id match %v, %+v, err %v", from, resp.ID == req.ID, resp, err)
		}
	}
	// An RFC 5780 server names its other address: where a client tests its NAT's mapping.
	req, _ := NewBindingRequest("")
	rfc5780 := stunserver.Addrs{Primary: netip.MustParseAddrPort("192.0.2.1:3478"), Alternate: netip.MustParseAddrPort("192.0.2.2:3479")}
	if resp, err := ParseBindingResponse(answerFrom(t, req, netip.MustParseAddrPort("203.0.113.7:40000"), rfc5780)); err != nil || resp.Other != rfc5780.Alternate {
		t.Fatalf("other address %v (err %v), want %v", resp.Other, err, rfc5780.Alternate)
	}
	if _, err := NewBindingRequest(string(make([]byte, 65))); err == nil {
		t.Error("a 65-byte peer token was accepted")
	}
	if resp, err := ParseBindingResponse([]byte("not stun at all, just text....")); err == nil || resp.ID != ([12]byte{}) {
		t.Errorf("non-STUN input: id %x err %v", resp.ID, err)
	}
}

func FuzzParseBindingResponse(f *testing.F) {
	req, _ := NewBindingRequest("seed")
	f.Add(answer(f, req, netip.MustParseAddrPort("198.51.100.2:5000")))
	f.Add(answer(f, req, netip.MustParseAddrPort("[2001:db8::2]:5000")))
	f.Add(req.Raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := ParseBindingResponse(b)
		if err == nil && !resp.Mapped.IsValid() {
			t.Fatalf("accepted %x without an address (id %x)", b, resp.ID)
		}
	})
}

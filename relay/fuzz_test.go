package relay

import (
	"bytes"
	"net"
	"testing"

	"github.com/pion/stun/v4"
)

// FuzzReasonPhrase: whatever the relay rewrites is a valid STUN error response
// for the same transaction, with a reason phrase.
func FuzzReasonPhrase(f *testing.F) {
	m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse),
		stun.ErrorCodeAttribute{Code: stun.CodeUnauthorized}, stun.NewNonce("n"), stun.NewRealm("r"))
	f.Add(m.Raw)
	m = stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodRefresh, stun.ClassErrorResponse),
		stun.ErrorCodeAttribute{Code: stun.CodeStaleNonce, Reason: []byte("x")})
	f.Add(m.Raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		in := append([]byte(nil), b...)
		out, ok := withReasonPhrase(b)
		if !bytes.Equal(in, b) {
			t.Fatal("input modified")
		}
		if !ok {
			return
		}
		m := &stun.Message{Raw: out}
		if err := m.Decode(); err != nil {
			t.Fatalf("rewritten response does not decode: %v", err)
		}
		if !bytes.Equal(out[:2], b[:2]) || !bytes.Equal(out[4:20], b[4:20]) {
			t.Fatal("type or transaction changed")
		}
		var ec stun.ErrorCodeAttribute
		if err := ec.GetFrom(m); err != nil || len(ec.Reason) == 0 {
			t.Fatalf("no reason phrase: %v", err)
		}
	})
}

// FuzzTCPObserve: the TCP framing copy never panics, whatever the stream and
// however it is cut.
func FuzzTCPObserve(f *testing.F) {
	req := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		stun.NewUsername("1:u"), stun.NewRealm("rendezvous"), stun.NewNonce("n"), stun.MessageIntegrity([]byte("k")))
	f.Add(append(append([]byte{}, req.Raw...), 0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0), uint8(7))
	f.Add([]byte{0x00, 0x0b, 0x00, 0x00}, uint8(1))
	s, err := New(func() Config {
		c := DefaultConfig()
		c.AuthSecrets = []string{"a", "b"}
		return c
	}(), Options{})
	if err != nil {
		f.Fatal(err)
	}
	conn, peer := net.Pipe()
	defer conn.Close()
	defer peer.Close()
	f.Fuzz(func(t *testing.T, b []byte, cut uint8) {
		c := &turnConn{s: s, Conn: conn}
		step := int(cut%32) + 1
		for i := 0; i < len(b) && !c.raw; i += step {
			c.observe(b[i:min(i+step, len(b))])
		}
	})
}

// FuzzChannelData: the fast path's ChannelData parser accepts exactly the
// messages whose first byte is 0x40..0x7F and whose Length fits, and returns
// the channel number and Length bytes of data from inside the input.
func FuzzChannelData(f *testing.F) {
	f.Add([]byte{0x40, 0x00, 0x00, 0x03, 'a', 'b', 'c', 0})
	f.Add([]byte{0x7f, 0xff, 0x00, 0x00})
	f.Add([]byte{0x40, 0x01, 0x00, 0x09, 'x'})
	f.Add([]byte{0x00, 0x01, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		number, payload, ok := parseChannelData(b)
		declared := -1
		if len(b) >= 4 {
			declared = int(b[2])<<8 | int(b[3])
		}
		want := len(b) >= 4 && b[0] >= 0x40 && b[0] <= 0x7f && 4+declared <= len(b)
		if ok != want {
			t.Fatalf("parseChannelData(%x) ok=%v, want %v", b, ok, want)
		}
		if !ok {
			return
		}
		if number != uint16(b[0])<<8|uint16(b[1]) || len(payload) != declared || !bytes.Equal(payload, b[4:4+declared]) {
			t.Fatalf("parseChannelData(%x) = %#x %x", b, number, payload)
		}
	})
}

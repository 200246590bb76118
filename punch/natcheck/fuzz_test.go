package natcheck

import (
	"net/netip"
	"testing"

	"github.com/pion/stun/v4"
)

// FuzzParseBinding feeds arbitrary datagrams through the response path
// (pion's decoder, then ours): no panics, and a parsed mapped address is valid.
func FuzzParseBinding(f *testing.F) {
	ok, _ := stun.Build(stun.TransactionID, stun.BindingSuccess,
		&stun.XORMappedAddress{IP: []byte{198, 51, 100, 1}, Port: 4000},
		&stun.OtherAddress{IP: []byte{203, 0, 113, 2}, Port: 3479}, stun.Fingerprint)
	f.Add(ok.Raw)
	bad, _ := stun.Build(stun.TransactionID, stun.BindingError, stun.CodeUnknownAttribute, stun.Fingerprint)
	f.Add(bad.Raw)
	f.Add([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Fuzz(func(t *testing.T, b []byte) {
		if !stun.IsMessage(b) {
			return
		}
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if m.Decode() != nil {
			return
		}
		got, err := parseBinding(reply{msg: m, from: netip.MustParseAddrPort("203.0.113.1:3478")})
		if err == nil && !got.mapped.IsValid() {
			t.Fatalf("parsed without a valid mapped address: %+v", got)
		}
	})
}

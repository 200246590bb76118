package stunserver_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/rendezvous-p2p/rendezvous/internal/stunext"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver"
	"github.com/rendezvous-p2p/rendezvous/internal/stunserver/stunservertest"
)

var (
	client   = netip.MustParseAddrPort("203.0.113.7:40000")
	primary  = netip.MustParseAddrPort("198.51.100.1:3478")
	alt      = netip.MustParseAddrPort("198.51.100.2:3479")
	with5780 = stunserver.Addrs{Primary: primary, Alternate: alt}
)

// bindingRequest builds an RFC 8489 Binding request with extra attributes.
func bindingRequest(t testing.TB, setters ...stun.Setter) []byte {
	t.Helper()
	all := append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)
	m, err := stun.Build(all...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

type rawAttr struct {
	typ stun.AttrType
	val []byte
}

func (a rawAttr) AddTo(m *stun.Message) error { m.Add(a.typ, a.val); return nil }

func changeRequest(ip, port bool) rawAttr {
	var v uint32
	if ip {
		v |= 4
	}
	if port {
		v |= 2
	}
	return rawAttr{stun.AttrChangeRequest, binary.BigEndian.AppendUint32(nil, v)}
}

// classicRequest builds an RFC 3489 Binding request: no magic cookie, a 128-bit ID.
func classicRequest(id [16]byte, attrs ...rawAttr) []byte {
	var body []byte
	for _, a := range attrs {
		body = binary.BigEndian.AppendUint16(body, uint16(a.typ))
		body = binary.BigEndian.AppendUint16(body, uint16(len(a.val)))
		body = append(body, a.val...)
	}
	b := []byte{0x00, 0x01}
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	b = append(b, id[:]...)
	return append(b, body...)
}

func decode(t testing.TB, raw []byte, classic bool) *stun.Message {
	t.Helper()
	b := append([]byte(nil), raw...)
	if classic {
		binary.BigEndian.PutUint32(b[4:8], 0x2112A442)
	}
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		t.Fatalf("response does not decode: %v", err)
	}
	return m
}

func addrAttr(t testing.TB, m *stun.Message, typ stun.AttrType) netip.AddrPort {
	t.Helper()
	var a stun.MappedAddress
	if err := a.GetFromAs(m, typ); err != nil {
		t.Fatalf("%v: %v", typ, err)
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}

func respond(t testing.TB, raw []byte, from netip.AddrPort, on stunserver.Socket, addrs stunserver.Addrs) ([]byte, stunserver.Socket, stunserver.Request) {
	t.Helper()
	req, err := stunserver.ParseRequest(raw)
	if err != nil {
		t.Fatalf("ParseRequest: %v", err)
	}
	resp, via := stunserver.AppendResponse(nil, &req, from, on, addrs)
	return resp, via, req
}

func TestModernBinding(t *testing.T) {
	raw := bindingRequest(t, stun.Fingerprint)
	resp, via, _ := respond(t, raw, client, stunserver.Primary, stunserver.Addrs{Primary: primary})
	if via != stunserver.Primary {
		t.Fatalf("via = %d, want primary", via)
	}
	m := decode(t, resp, false)
	if m.Type != stun.BindingSuccess {
		t.Fatalf("type = %v, want Binding success", m.Type)
	}
	if !bytes.Equal(m.Raw[8:20], raw[8:20]) {
		t.Fatal("transaction ID not echoed")
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err != nil {
		t.Fatal(err)
	}
	if got := netip.AddrPortFrom(netip.MustParseAddr(xor.IP.String()), uint16(xor.Port)); got != client {
		t.Errorf("XOR-MAPPED-ADDRESS = %v, want %v", got, client)
	}
	if got := addrAttr(t, m, stun.AttrMappedAddress); got != client {
		t.Errorf("MAPPED-ADDRESS = %v, want %v", got, client)
	}
	if got := addrAttr(t, m, stun.AttrResponseOrigin); got != primary {
		t.Errorf("RESPONSE-ORIGIN = %v, want %v", got, primary)
	}
	if m.Contains(stun.AttrOtherAddress) {
		t.Error("OTHER-ADDRESS present without an alternate address")
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Errorf("FINGERPRINT: %v", err)
	}
}

func TestMappedIPv4InIPv6IsUnmapped(t *testing.T) {
	from := netip.MustParseAddrPort("[::ffff:203.0.113.9]:5000")
	resp, _, _ := respond(t, bindingRequest(t), from, stunserver.Primary, stunserver.Addrs{Primary: primary})
	m := decode(t, resp, false)
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err != nil {
		t.Fatal(err)
	}
	if xor.IP.To4() == nil || xor.IP.String() != "203.0.113.9" || xor.Port != 5000 {
		t.Fatalf("XOR-MAPPED-ADDRESS = %v, want 203.0.113.9:5000 as IPv4", xor)
	}
}

func TestIPv6Binding(t *testing.T) {
	from := netip.MustParseAddrPort("[2001:db8::5]:6000")
	p6 := netip.MustParseAddrPort("[2001:db8::1]:3478")
	resp, _, _ := respond(t, bindingRequest(t), from, stunserver.Primary, stunserver.Addrs{Primary: p6})
	m := decode(t, resp, false)
	if got := addrAttr(t, m, stun.AttrMappedAddress); got != from {
		t.Fatalf("MAPPED-ADDRESS = %v, want %v", got, from)
	}
	if got := addrAttr(t, m, stun.AttrResponseOrigin); got != p6 {
		t.Fatalf("RESPONSE-ORIGIN = %v, want %v", got, p6)
	}
}

func TestClassicBinding(t *testing.T) {
	id := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	raw := classicRequest(id)
	resp, via, req := respond(t, raw, client, stunserver.AltPort, with5780)
	if !req.Classic {
		t.Fatal("request without magic cookie not recognised as RFC 3489")
	}
	if via != stunserver.AltPort {
		t.Fatalf("via = %d, want the receiving socket", via)
	}
	if !bytes.Equal(resp[4:20], id[:]) {
		t.Fatalf("response ID % x, want the request's 128-bit ID % x", resp[4:20], id)
	}
	m := decode(t, resp, true)
	if m.Type != stun.BindingSuccess {
		t.Fatalf("type = %v", m.Type)
	}
	if got := addrAttr(t, m, stun.AttrMappedAddress); got != client {
		t.Errorf("MAPPED-ADDRESS = %v, want %v", got, client)
	}
	// Arrived on primary IP, alternate port: that is its SOURCE-ADDRESS, and the
	// CHANGED-ADDRESS is the opposite corner.
	if got, want := addrAttr(t, m, stun.AttrSourceAddress), netip.AddrPortFrom(primary.Addr(), alt.Port()); got != want {
		t.Errorf("SOURCE-ADDRESS = %v, want %v", got, want)
	}
	if got, want := addrAttr(t, m, stun.AttrChangedAddress), netip.AddrPortFrom(alt.Addr(), primary.Port()); got != want {
		t.Errorf("CHANGED-ADDRESS = %v, want %v", got, want)
	}
	for _, a := range []stun.AttrType{stun.AttrXORMappedAddress, stun.AttrFingerprint, stun.AttrResponseOrigin} {
		if m.Contains(a) {
			t.Errorf("classic response carries %v, which RFC 3489 clients may reject", a)
		}
	}
}

func TestChangeRequest(t *testing.T) {
	for _, tc := range []struct {
		ip, port bool
		on, want stunserver.Socket
	}{
		{false, false, stunserver.Primary, stunserver.Primary},
		{true, false, stunserver.Primary, stunserver.AltIP},
		{false, true, stunserver.Primary, stunserver.AltPort},
		{true, true, stunserver.Primary, stunserver.AltBoth},
		{true, true, stunserver.AltBoth, stunserver.Primary},
		{false, true, stunserver.AltIP, stunserver.AltBoth},
	} {
		resp, via, _ := respond(t, bindingRequest(t, changeRequest(tc.ip, tc.port)), client, tc.on, with5780)
		if via != tc.want {
			t.Errorf("ip=%v port=%v on %d: via %d, want %d", tc.ip, tc.port, tc.on, via, tc.want)
			continue
		}
		m := decode(t, resp, false)
		if got := addrAttr(t, m, stun.AttrResponseOrigin); got != with5780.Of(tc.want) {
			t.Errorf("RESPONSE-ORIGIN = %v, want %v", got, with5780.Of(tc.want))
		}
		if got := addrAttr(t, m, stun.AttrOtherAddress); got != with5780.Of(tc.on^stunserver.AltBoth) {
			t.Errorf("OTHER-ADDRESS = %v, want %v", got, with5780.Of(tc.on^stunserver.AltBoth))
		}
	}
}

func unknownAttrs(t testing.TB, m *stun.Message) []stun.AttrType {
	t.Helper()
	if m.Type != stun.NewType(stun.MethodBinding, stun.ClassErrorResponse) {
		t.Fatalf("type = %v, want Binding error", m.Type)
	}
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(m); err != nil {
		t.Fatal(err)
	}
	if code.Code != stun.CodeUnknownAttribute || len(code.Reason) == 0 {
		t.Fatalf("error = %v %q, want 420 with a reason", code.Code, code.Reason)
	}
	var ua stun.UnknownAttributes
	if err := ua.GetFrom(m); err != nil {
		t.Fatal(err)
	}
	return ua
}

func TestChangeRequestWithoutAlternateIs420(t *testing.T) {
	resp, via, _ := respond(t, bindingRequest(t, changeRequest(true, false)), client, stunserver.Primary, stunserver.Addrs{Primary: primary})
	if via != stunserver.Primary {
		t.Fatalf("via = %d, want primary (no alternate exists)", via)
	}
	ua := unknownAttrs(t, decode(t, resp, false))
	if len(ua) != 1 || ua[0] != stun.AttrChangeRequest {
		t.Fatalf("UNKNOWN-ATTRIBUTES = %v, want [CHANGE-REQUEST]", ua)
	}
}

func TestUnknownRequiredAttributeIs420(t *testing.T) {
	raw := bindingRequest(t, rawAttr{stun.AttrResponsePort, []byte{0x12, 0x34, 0, 0}}, rawAttr{0xC0FF, []byte("optional")})
	resp, _, _ := respond(t, raw, client, stunserver.Primary, with5780)
	ua := unknownAttrs(t, decode(t, resp, false))
	if len(ua) != 1 || ua[0] != stun.AttrResponsePort {
		t.Fatalf("UNKNOWN-ATTRIBUTES = %v, want only RESPONSE-PORT (0xC0FF is comprehension-optional)", ua)
	}
}

func TestRejects(t *testing.T) {
	good := bindingRequest(t, stun.Fingerprint)
	badFP := append([]byte(nil), good...)
	badFP[len(badFP)-1] ^= 0xFF
	alloc := bindingRequest(t)
	alloc[1] = 0x03 // Allocate request
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"bad fingerprint": {badFP, stunserver.ErrBadFingerprint},
		"not binding":     {alloc, stunserver.ErrNotBinding},
		"short":           {good[:19], stunserver.ErrNotBinding},
		"length beyond":   {good[:len(good)-4], stunserver.ErrNotBinding},
		"channel data":    {[]byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4}, stunserver.ErrNotBinding},
		"truncated attr":  {truncatedAttr(), stunserver.ErrMalformed},
		"short change":    {classicRequest([16]byte{1}, rawAttr{stun.AttrChangeRequest, []byte{0, 0, 0, 4, 0, 0, 0, 0}}), stunserver.ErrMalformed},
	} {
		if _, err := stunserver.ParseRequest(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
}

// truncatedAttr is a request whose one attribute claims more bytes than the message holds.
func truncatedAttr() []byte {
	b := classicRequest([16]byte{1}, rawAttr{stun.AttrChangeRequest, []byte{0, 0, 0, 4}})
	binary.BigEndian.PutUint16(b[22:24], 8)
	return b
}

func xorAttr(t testing.TB, m *stun.Message) netip.AddrPort {
	t.Helper()
	var a stun.XORMappedAddress
	if err := a.GetFrom(m); err != nil {
		t.Fatalf("XOR-MAPPED-ADDRESS: %v", err)
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}

func TestPeerTokenParsed(t *testing.T) {
	req, err := stunserver.ParseRequest(bindingRequest(t, rawAttr{stun.AttrType(stunext.AttrPeerToken), []byte("tok-123")}))
	if err != nil {
		t.Fatal(err)
	}
	if req.PeerToken != "tok-123" {
		t.Fatalf("PeerToken = %q", req.PeerToken)
	}
	long := bytes.Repeat([]byte("x"), stunext.MaxPeerTokenLen+1)
	req, err = stunserver.ParseRequest(bindingRequest(t, rawAttr{stun.AttrType(stunext.AttrPeerToken), long}))
	if err != nil || req.PeerToken != "" {
		t.Fatalf("oversized token: PeerToken=%q err=%v, want ignored", req.PeerToken, err)
	}
}

// exchange sends raw from c to dst and returns the response and where it came from.
func exchange(t *testing.T, c *net.UDPConn, dst netip.AddrPort, raw []byte) ([]byte, netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(raw, dst); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no response from %v: %v", dst, err)
	}
	return buf[:n], from
}

func TestServerRFC5780OnLoopback(t *testing.T) {
	type seen struct {
		token string
		from  netip.AddrPort
	}
	tokens := make(chan seen, 4)
	addrs := stunservertest.StartRFC5780(t, stunserver.Options{
		OnPeerToken: func(token string, from netip.AddrPort) { tokens <- seen{token, from} },
	})
	if addrs.Primary.Addr() == addrs.Alternate.Addr() || addrs.Primary.Port() == addrs.Alternate.Port() {
		t.Fatalf("addresses %v: alternate must differ in IP and port", addrs)
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	me := c.LocalAddr().(*net.UDPAddr).AddrPort()

	for _, tc := range []struct {
		ip, port bool
		want     stunserver.Socket
	}{
		{false, false, stunserver.Primary},
		{true, false, stunserver.AltIP},
		{false, true, stunserver.AltPort},
		{true, true, stunserver.AltBoth},
	} {
		raw := bindingRequest(t, changeRequest(tc.ip, tc.port), rawAttr{stun.AttrType(stunext.AttrPeerToken), []byte("peer-A")})
		resp, from := exchange(t, c, addrs.Primary, raw)
		if want := addrs.Of(tc.want); from != want {
			t.Errorf("change ip=%v port=%v: response came from %v, want %v", tc.ip, tc.port, from, want)
		}
		m := decode(t, resp, false)
		if got := xorAttr(t, m); got != me {
			t.Errorf("XOR-MAPPED-ADDRESS = %v, want %v", got, me)
		}
		if got := addrAttr(t, m, stun.AttrResponseOrigin); got != from {
			t.Errorf("RESPONSE-ORIGIN = %v, but the packet came from %v", got, from)
		}
		if got := addrAttr(t, m, stun.AttrOtherAddress); got != addrs.Alternate {
			t.Errorf("OTHER-ADDRESS = %v, want %v", got, addrs.Alternate)
		}
		select {
		case s := <-tokens:
			if s.token != "peer-A" || s.from != me {
				t.Errorf("OnPeerToken(%q, %v), want (peer-A, %v)", s.token, s.from, me)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("OnPeerToken not called")
		}
	}

	// A classic client asking the alternate socket gets an answer from there too.
	resp, from := exchange(t, c, addrs.Alternate, classicRequest([16]byte{9, 9, 9}))
	if from != addrs.Alternate {
		t.Fatalf("classic answer from %v, want %v", from, addrs.Alternate)
	}
	if got := addrAttr(t, decode(t, resp, true), stun.AttrChangedAddress); got != addrs.Primary {
		t.Fatalf("CHANGED-ADDRESS = %v, want %v", got, addrs.Primary)
	}
}

func TestConfigValidate(t *testing.T) {
	for name, cfg := range map[string]stunserver.Config{
		"no primary":     {},
		"wildcard 5780":  {Primary: netip.MustParseAddrPort("0.0.0.0:3478"), Alternate: netip.MustParseAddrPort("127.0.0.2:3479")},
		"same IP":        {Primary: netip.MustParseAddrPort("127.0.0.1:3478"), Alternate: netip.MustParseAddrPort("127.0.0.1:3479")},
		"same port":      {Primary: netip.MustParseAddrPort("127.0.0.1:3478"), Alternate: netip.MustParseAddrPort("127.0.0.2:3478")},
		"mixed families": {Primary: netip.MustParseAddrPort("127.0.0.1:3478"), Alternate: netip.MustParseAddrPort("[::1]:3479")},
	} {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, cfg)
		}
	}
}

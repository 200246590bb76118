package lanbeacon

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Wire limits. A beacon never exceeds MaxPacketSize bytes, so it fits one
// unfragmented datagram on any LAN (IPv6 minimum MTU 1280 minus headers).
const (
	MaxPacketSize     = 1200
	MaxTextLen        = 64  // app, name, room: bytes of UTF-8
	MaxPorts          = 8   // service ports
	MaxFingerprintLen = 32  // bytes (a SHA-256 of the announcer's public key)
	MaxMeta           = 16  // metadata entries
	MaxMetaKeyLen     = 32  // bytes
	MaxMetaValueLen   = 255 // bytes
	// Announced intervals a listener accepts.
	MinWireInterval = 10 * time.Millisecond
	MaxWireInterval = time.Hour
)

// magic opens every beacon. Its first byte is below 0x40 so quic-go's
// Transport hands it over as a non-QUIC packet, and differs from punch's 0x1D.
var magic = [4]byte{0x1E, 'R', 'Z', 'B'}

const (
	wireVersion = 1

	flagGoodbye = 1 << 0
	flagSigned  = 1 << 1
	knownFlags  = flagGoodbye | flagSigned

	headerLen = 4 + 1 + 1 + 4 + 8     // magic, version, flags, interval, instance id
	nonceLen  = 8                     // random per datagram
	macLen    = sha256.Size           // HMAC-SHA256
	authLen   = 8 + nonceLen + macLen // timestamp, nonce, mac

	// keyContext separates the beacon HMAC key from other uses of the same
	// passphrase: key = SHA-256(keyContext || lan key).
	keyContext = "rendezvous lanbeacon v1 hmac key\x00"
)

// Protocol is the transport of a service port (IANA protocol number).
type Protocol uint8

const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto" + strconv.Itoa(int(p))
}

// Port is a service port the announcer listens on.
type Port struct {
	Protocol Protocol
	Port     uint16
}

// String is "udp/7777".
func (p Port) String() string { return p.Protocol.String() + "/" + strconv.Itoa(int(p.Port)) }

// MarshalText is String, for JSON output.
func (p Port) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText parses "udp/7777" or "tcp/27015" (a bare "7777" means UDP).
func (p *Port) UnmarshalText(b []byte) error {
	s := string(b)
	proto, num, ok := strings.Cut(s, "/")
	if !ok {
		proto, num = "udp", s
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("port %q: want udp/N or tcp/N with N in 1-65535", s)
	}
	switch proto {
	case "udp":
		p.Protocol = UDP
	case "tcp":
		p.Protocol = TCP
	default:
		return fmt.Errorf("port %q: protocol must be udp or tcp", s)
	}
	p.Port = uint16(n)
	return nil
}

// InstanceID identifies one running announcer; it is random per start.
type InstanceID [8]byte

func (id InstanceID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText is the hex form, for JSON output.
func (id InstanceID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// Fingerprint is the announcer's public key fingerprint (at most 32 bytes).
type Fingerprint []byte

func (f Fingerprint) String() string { return hex.EncodeToString(f) }

// MarshalText is the hex form, for JSON output.
func (f Fingerprint) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText parses the hex form.
func (f *Fingerprint) UnmarshalText(b []byte) error {
	v, err := hex.DecodeString(string(b))
	if err != nil || len(v) > MaxFingerprintLen {
		return fmt.Errorf("fingerprint: want at most %d bytes of hex", MaxFingerprintLen)
	}
	*f = v
	return nil
}

// Announcement is what an announcer tells the LAN.
type Announcement struct {
	// App identifies the game or application ("minetest"); listeners filter on it.
	App string `json:"app"`
	// Name is the display name ("Alice's server").
	Name string `json:"name"`
	// Room is a room name or join code.
	Room        string            `json:"room,omitempty"`
	Ports       []Port            `json:"ports,omitempty"`
	Fingerprint Fingerprint       `json:"fingerprint,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
}

// Validate checks a against the wire limits; texts must be printable UTF-8
// (no control or bidi characters: listeners print them in terminals).
func (a Announcement) Validate() error {
	for _, f := range []struct{ name, v string }{{"app", a.App}, {"name", a.Name}, {"room", a.Room}} {
		if err := checkText(f.v, MaxTextLen); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if len(a.Ports) > MaxPorts {
		return fmt.Errorf("ports: %d ports, at most %d", len(a.Ports), MaxPorts)
	}
	for _, p := range a.Ports {
		if (p.Protocol != UDP && p.Protocol != TCP) || p.Port == 0 {
			return fmt.Errorf("ports: %v: want udp or tcp and a port in 1-65535", p)
		}
	}
	if len(a.Fingerprint) > MaxFingerprintLen {
		return fmt.Errorf("fingerprint: %d bytes, at most %d", len(a.Fingerprint), MaxFingerprintLen)
	}
	if len(a.Meta) > MaxMeta {
		return fmt.Errorf("meta: %d entries, at most %d", len(a.Meta), MaxMeta)
	}
	for k, v := range a.Meta {
		if k == "" {
			return errors.New("meta: empty key")
		}
		if err := checkText(k, MaxMetaKeyLen); err != nil {
			return fmt.Errorf("meta key %q: %w", k, err)
		}
		if err := checkText(v, MaxMetaValueLen); err != nil {
			return fmt.Errorf("meta %q: %w", k, err)
		}
	}
	if n := a.wireLen() + authLen; n > MaxPacketSize {
		return fmt.Errorf("announcement encodes to %d bytes signed, at most %d", n, MaxPacketSize)
	}
	return nil
}

func checkText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%d bytes, at most %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		// IsPrint excludes control, format (bidi overrides) and non-ASCII
		// spaces. The zero-width joiner is allowed for emoji sequences.
		if !unicode.IsPrint(r) && r != '\u200d' {
			return fmt.Errorf("character %U is not printable", r)
		}
	}
	return nil
}

func (a Announcement) wireLen() int {
	n := headerLen + 1 + len(a.App) + 1 + len(a.Name) + 1 + len(a.Room) + 1 + 3*len(a.Ports) + 1 + len(a.Fingerprint) + 1
	for k, v := range a.Meta {
		n += 2 + len(k) + len(v)
	}
	return n
}

func (a Announcement) equal(b Announcement) bool {
	if a.App != b.App || a.Name != b.Name || a.Room != b.Room || !slices.Equal(a.Ports, b.Ports) ||
		string(a.Fingerprint) != string(b.Fingerprint) || len(a.Meta) != len(b.Meta) {
		return false
	}
	for k, v := range a.Meta {
		if w, ok := b.Meta[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// packet is one beacon on the wire.
type packet struct {
	Instance InstanceID
	Interval time.Duration
	Goodbye  bool
	Announcement
	// Set when the packet carries the auth trailer.
	Signed    bool
	Timestamp time.Time // millisecond precision
	Nonce     [nonceLen]byte
	// signedLen is how many leading bytes the MAC covers (parse only).
	signedLen int
	mac       []byte
}

// macKey derives the HMAC key from a LAN key.
func macKey(lanKey string) []byte {
	h := sha256.New()
	h.Write([]byte(keyContext))
	h.Write([]byte(lanKey))
	return h.Sum(nil)
}

// appendPacket encodes p after b. With key != nil it appends the auth trailer
// (p.Timestamp, p.Nonce, HMAC-SHA256 under key). The announcement must have
// passed Validate.
func appendPacket(b []byte, p *packet, key []byte) []byte {
	start := len(b)
	flags := byte(0)
	if p.Goodbye {
		flags |= flagGoodbye
	}
	if key != nil {
		flags |= flagSigned
	}
	b = append(b, magic[:]...)
	b = append(b, wireVersion, flags)
	b = binary.BigEndian.AppendUint32(b, uint32(p.Interval/time.Millisecond))
	b = append(b, p.Instance[:]...)
	b = appendText(b, p.App)
	b = appendText(b, p.Name)
	b = appendText(b, p.Room)
	b = append(b, byte(len(p.Ports)))
	for _, port := range p.Ports {
		b = append(b, byte(port.Protocol))
		b = binary.BigEndian.AppendUint16(b, port.Port)
	}
	b = appendText(b, string(p.Fingerprint))
	keys := make([]string, 0, len(p.Meta))
	for k := range p.Meta {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, byte(len(keys)))
	for _, k := range keys {
		b = appendText(b, k)
		b = appendText(b, p.Meta[k])
	}
	if key != nil {
		b = binary.BigEndian.AppendUint64(b, uint64(p.Timestamp.UnixMilli()))
		b = append(b, p.Nonce[:]...)
		m := hmac.New(sha256.New, key)
		m.Write(b[start:])
		b = m.Sum(b)
	}
	return b
}

func appendText(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// parseError says why a packet was dropped as malformed.
type parseError struct{ reason string }

func (e *parseError) Error() string { return "lanbeacon: malformed beacon: " + e.reason }

func malformed(format string, args ...any) error {
	return &parseError{fmt.Sprintf(format, args...)}
}

// errOversized marks a datagram larger than MaxPacketSize.
var errOversized = errors.New("lanbeacon: beacon larger than 1200 bytes")

// errNotBeacon marks a datagram without the magic (another protocol on the port).
var errNotBeacon = malformed("no beacon magic")

// parsePacket decodes one datagram strictly: every length in bounds, texts
// printable UTF-8, ports valid, metadata keys strictly ascending (one
// encoding per announcement), no trailing bytes. It does not check the MAC.
func parsePacket(b []byte) (*packet, error) {
	if len(b) > MaxPacketSize {
		return nil, errOversized
	}
	if len(b) < 4 || [4]byte(b[:4]) != magic {
		return nil, errNotBeacon
	}
	if len(b) < headerLen {
		return nil, malformed("%d bytes, shorter than the header", len(b))
	}
	if b[4] != wireVersion {
		return nil, malformed("version %d, want %d", b[4], wireVersion)
	}
	flags := b[5]
	if flags&^knownFlags != 0 {
		return nil, malformed("unknown flags %#02x", flags)
	}
	p := &packet{Goodbye: flags&flagGoodbye != 0, Signed: flags&flagSigned != 0}
	p.Interval = time.Duration(binary.BigEndian.Uint32(b[6:10])) * time.Millisecond
	if p.Interval < MinWireInterval || p.Interval > MaxWireInterval {
		return nil, malformed("interval %v out of range %v-%v", p.Interval, MinWireInterval, MaxWireInterval)
	}
	copy(p.Instance[:], b[10:18])
	r := reader{b: b, off: headerLen}
	var err error
	if p.App, err = r.text("app", MaxTextLen); err != nil {
		return nil, err
	}
	if p.Name, err = r.text("name", MaxTextLen); err != nil {
		return nil, err
	}
	if p.Room, err = r.text("room", MaxTextLen); err != nil {
		return nil, err
	}
	nports, ok := r.byte()
	if !ok {
		return nil, malformed("truncated at ports")
	}
	if nports > MaxPorts {
		return nil, malformed("%d ports, at most %d", nports, MaxPorts)
	}
	for range nports {
		raw, ok := r.bytes(3)
		if !ok {
			return nil, malformed("truncated in ports")
		}
		port := Port{Protocol(raw[0]), binary.BigEndian.Uint16(raw[1:])}
		if (port.Protocol != UDP && port.Protocol != TCP) || port.Port == 0 {
			return nil, malformed("bad port %v", port)
		}
		p.Ports = append(p.Ports, port)
	}
	fl, ok := r.byte()
	if !ok {
		return nil, malformed("truncated at fingerprint")
	}
	if fl > MaxFingerprintLen {
		return nil, malformed("fingerprint of %d bytes, at most %d", fl, MaxFingerprintLen)
	}
	if fl > 0 {
		fp, ok := r.bytes(int(fl))
		if !ok {
			return nil, malformed("truncated in fingerprint")
		}
		p.Fingerprint = Fingerprint(slices.Clone(fp))
	}
	nmeta, ok := r.byte()
	if !ok {
		return nil, malformed("truncated at metadata")
	}
	if nmeta > MaxMeta {
		return nil, malformed("%d metadata entries, at most %d", nmeta, MaxMeta)
	}
	prev := ""
	for i := range int(nmeta) {
		k, err := r.text("metadata key", MaxMetaKeyLen)
		if err != nil {
			return nil, err
		}
		if k == "" || (i > 0 && k <= prev) {
			return nil, malformed("metadata keys empty or not strictly ascending")
		}
		v, err := r.text("metadata value", MaxMetaValueLen)
		if err != nil {
			return nil, err
		}
		if p.Meta == nil {
			p.Meta = make(map[string]string, nmeta)
		}
		p.Meta[k] = v
		prev = k
	}
	if p.Signed {
		p.signedLen = r.off + 8 + nonceLen
		ts, ok := r.bytes(8)
		if !ok {
			return nil, malformed("truncated at timestamp")
		}
		p.Timestamp = time.UnixMilli(int64(binary.BigEndian.Uint64(ts)))
		nonce, ok := r.bytes(nonceLen)
		if !ok {
			return nil, malformed("truncated at nonce")
		}
		p.Nonce = [nonceLen]byte(nonce)
		if p.mac, ok = r.bytes(macLen); !ok {
			return nil, malformed("truncated at mac")
		}
	}
	if r.off != len(b) {
		return nil, malformed("%d trailing bytes", len(b)-r.off)
	}
	return p, nil
}

// verify reports whether the packet's MAC (parsed from raw) is valid under key.
func (p *packet) verify(raw, key []byte) bool {
	if !p.Signed {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write(raw[:p.signedLen])
	return hmac.Equal(m.Sum(nil), p.mac)
}

type reader struct {
	b   []byte
	off int
}

func (r *reader) byte() (byte, bool) {
	if r.off >= len(r.b) {
		return 0, false
	}
	r.off++
	return r.b[r.off-1], true
}

func (r *reader) bytes(n int) ([]byte, bool) {
	if n > len(r.b)-r.off {
		return nil, false
	}
	r.off += n
	return r.b[r.off-n : r.off], true
}

func (r *reader) text(field string, max int) (string, error) {
	n, ok := r.byte()
	if !ok {
		return "", malformed("truncated at %s", field)
	}
	raw, ok := r.bytes(int(n))
	if !ok {
		return "", malformed("truncated in %s", field)
	}
	s := string(raw)
	if err := checkText(s, max); err != nil {
		return "", malformed("%s: %v", field, err)
	}
	return s, nil
}

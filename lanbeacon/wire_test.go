package lanbeacon

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func sampleAnnouncement() Announcement {
	return Announcement{
		App: "minetest", Name: "Alice's server 🎮", Room: "ABCD-1234",
		Ports:       []Port{{UDP, 30000}, {TCP, 8080}},
		Fingerprint: Fingerprint(bytes.Repeat([]byte{0xAB}, 32)),
		Meta:        map[string]string{"map": "valleys", "players": "3/8"},
	}
}

func TestPacketRoundTrip(t *testing.T) {
	key := macKey("party")
	for _, tc := range []struct {
		name string
		p    packet
		key  []byte
	}{
		{"full signed", packet{Instance: InstanceID{1, 2, 3, 4, 5, 6, 7, 8}, Interval: 2 * time.Second,
			Announcement: sampleAnnouncement(), Timestamp: time.UnixMilli(1_700_000_000_123), Nonce: [8]byte{9, 9}}, key},
		{"full unsigned", packet{Instance: InstanceID{8}, Interval: 30 * time.Second, Announcement: sampleAnnouncement()}, nil},
		{"empty goodbye", packet{Instance: InstanceID{7}, Interval: MinWireInterval, Goodbye: true}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := appendPacket(nil, &tc.p, tc.key)
			if len(b) > MaxPacketSize {
				t.Fatalf("%d bytes", len(b))
			}
			if b[0] >= 0x40 {
				t.Fatalf("first byte %#x, want below 0x40", b[0])
			}
			got, err := parsePacket(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Instance != tc.p.Instance || got.Interval != tc.p.Interval || got.Goodbye != tc.p.Goodbye ||
				!got.Announcement.equal(tc.p.Announcement) || got.Signed != (tc.key != nil) {
				t.Fatalf("parsed %+v, want %+v", got, tc.p)
			}
			if tc.key != nil {
				if !got.Timestamp.Equal(tc.p.Timestamp) || got.Nonce != tc.p.Nonce || !got.verify(b, tc.key) {
					t.Fatalf("auth trailer: ts %v nonce %x verify %v", got.Timestamp, got.Nonce, got.verify(b, tc.key))
				}
				if got.verify(b, macKey("other")) {
					t.Fatal("verified under the wrong key")
				}
			}
		})
	}
}

// TestWireLayout pins the documented byte layout of the header.
func TestWireLayout(t *testing.T) {
	p := packet{Instance: InstanceID{0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7}, Interval: 2 * time.Second, Goodbye: true,
		Announcement: Announcement{App: "g", Name: "n", Ports: []Port{{UDP, 7777}}}}
	b := appendPacket(nil, &p, nil)
	want := []byte{0x1E, 'R', 'Z', 'B', 1, 0x01, 0, 0, 0x07, 0xD0, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
		1, 'g', 1, 'n', 0, 1, 17, 0x1E, 0x61, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded\n% x\nwant\n% x", b, want)
	}
	signed := appendPacket(nil, &p, macKey("k"))
	if signed[5] != 0x03 || len(signed) != len(want)+authLen {
		t.Fatalf("signed: flags %#x len %d", signed[5], len(signed))
	}
}

func TestParseRejects(t *testing.T) {
	good := appendPacket(nil, &packet{Instance: InstanceID{1}, Interval: time.Second, Announcement: sampleAnnouncement()}, nil)
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	nameOff := headerLen + 1 + len("minetest")
	cases := map[string][]byte{
		"empty":          {},
		"other protocol": []byte("GET / HTTP/1.1\r\n"),
		"short header":   good[:headerLen-1],
		"truncated":      good[:len(good)-1],
		"trailing byte":  append(bytes.Clone(good), 0),
		"version 2":      mut(func(b []byte) []byte { b[4] = 2; return b }),
		"unknown flag":   mut(func(b []byte) []byte { b[5] = 0x80; return b }),
		"interval 0":     mut(func(b []byte) []byte { copy(b[6:10], []byte{0, 0, 0, 0}); return b }),
		"interval huge":  mut(func(b []byte) []byte { copy(b[6:10], []byte{0xFF, 0xFF, 0xFF, 0xFF}); return b }),
		"control char":   mut(func(b []byte) []byte { b[nameOff+1] = 0x1B; return b }),
		"bad utf8":       mut(func(b []byte) []byte { b[nameOff+1] = 0xFF; return b }),
		"name too long": appendPacket(nil, &packet{Instance: InstanceID{1}, Interval: time.Second,
			Announcement: Announcement{Name: strings.Repeat("x", MaxTextLen+1)}}, nil),
		"signed flag without trailer": mut(func(b []byte) []byte { b[5] |= flagSigned; return b }),
		"bad port": appendPacket(nil, &packet{Instance: InstanceID{1}, Interval: time.Second,
			Announcement: Announcement{Ports: []Port{{UDP, 0}}}}, nil),
		"bad protocol": appendPacket(nil, &packet{Instance: InstanceID{1}, Interval: time.Second,
			Announcement: Announcement{Ports: []Port{{1, 80}}}}, nil),
	}
	for name, b := range cases {
		if _, err := parsePacket(b); err == nil {
			t.Errorf("%s: parsed", name)
		} else if errors.Is(err, errOversized) {
			t.Errorf("%s: oversized", name)
		}
	}
	if _, err := parsePacket(make([]byte, MaxPacketSize+1)); !errors.Is(err, errOversized) {
		t.Errorf("1201 bytes: %v, want oversized", err)
	}
}

func TestAnnouncementValidate(t *testing.T) {
	if err := sampleAnnouncement().Validate(); err != nil {
		t.Fatal(err)
	}
	big := map[string]string{}
	for i := range MaxMeta {
		big[strings.Repeat(string(rune('a'+i)), MaxMetaKeyLen)] = strings.Repeat("v", MaxMetaValueLen)
	}
	for name, a := range map[string]Announcement{
		"bidi override": {Name: "evil\u202egnp.exe"},
		"newline":       {Room: "a\nb"},
		"too many ports": {Ports: []Port{{UDP, 1}, {UDP, 2}, {UDP, 3}, {UDP, 4}, {UDP, 5},
			{UDP, 6}, {UDP, 7}, {UDP, 8}, {UDP, 9}}},
		"long fingerprint": {Fingerprint: make(Fingerprint, 33)},
		"empty meta key":   {Meta: map[string]string{"": "x"}},
		"over 1200 bytes":  {Meta: big},
	} {
		if err := a.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

func TestPortText(t *testing.T) {
	var p Port
	for in, want := range map[string]Port{"udp/7777": {UDP, 7777}, "tcp/80": {TCP, 80}, "27015": {UDP, 27015}} {
		if err := p.UnmarshalText([]byte(in)); err != nil || p != want {
			t.Errorf("%q: %v %v", in, p, err)
		}
	}
	for _, in := range []string{"udp/0", "sctp/5", "x", "udp/70000"} {
		if err := p.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
}

// FuzzParse checks the parser never panics and that whatever it accepts
// encodes back to the same bytes (one encoding per beacon).
func FuzzParse(f *testing.F) {
	f.Add(appendPacket(nil, &packet{Instance: InstanceID{1}, Interval: 2 * time.Second, Announcement: sampleAnnouncement()}, nil))
	f.Add(appendPacket(nil, &packet{Instance: InstanceID{2}, Interval: time.Second, Goodbye: true,
		Announcement: sampleAnnouncement(), Timestamp: time.UnixMilli(1), Nonce: [8]byte{1}}, macKey("k")))
	f.Add(appendPacket(nil, &packet{Instance: InstanceID{3}, Interval: MinWireInterval}, nil))
	f.Add([]byte{0x1E, 'R', 'Z', 'B'})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePacket(b)
		if err != nil {
			if p != nil {
				t.Fatal("packet and error")
			}
			return
		}
		var key []byte
		if p.Signed {
			key = []byte("any")
		}
		again := appendPacket(nil, p, key)
		if p.Signed {
			if !bytes.Equal(again[:p.signedLen], b[:p.signedLen]) || len(again) != len(b) {
				t.Fatalf("re-encoded signed\n% x\nwant\n% x", again, b)
			}
		} else if !bytes.Equal(again, b) {
			t.Fatalf("re-encoded\n% x\nwant\n% x", again, b)
		}
	})
}

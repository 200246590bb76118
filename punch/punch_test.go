package punch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func testConfig() Config {
	c := DefaultConfig()
	c.PunchWindow = 2 * time.Second
	c.FirstRetry = 20 * time.Millisecond
	return c
}

func newEndpoint(t *testing.T) *Endpoint {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEndpoint(conn, id, testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func peerOf(e *Endpoint, session [8]byte, start time.Time) Peer {
	return Peer{Key: e.PublicKey(), Session: session, Start: start, Candidates: []Candidate{{Addr: e.LocalAddr(), Kind: Host}}}
}

type result struct {
	s   *Session
	err error
}

// connectBoth runs a.Connect toward b and b.Connect toward a at once, as
// signaling schedules both sides.
func connectBoth(ctx context.Context, a *Endpoint, toB Peer, b *Endpoint, toA Peer) (x, y result) {
	ra, rb := make(chan result, 1), make(chan result, 1)
	go func() { s, err := a.Connect(ctx, toB); ra <- result{s, err} }()
	go func() { s, err := b.Connect(ctx, toA); rb <- result{s, err} }()
	return <-ra, <-rb
}

// connectSessions connects a and b with connectBoth and fails the test
// unless both sides got a session; the sessions close when the test ends.
func connectSessions(t *testing.T, a *Endpoint, toB Peer, b *Endpoint, toA Peer) (*Session, *Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x, y := connectBoth(ctx, a, toB, b, toA)
	if x.err != nil || y.err != nil {
		t.Fatalf("connect: a=%v b=%v", x.err, y.err)
	}
	t.Cleanup(func() { x.s.Close(); y.s.Close() })
	return x.s, y.s
}

// connectPair connects two endpoints over their local addresses.
func connectPair(t *testing.T, a, b *Endpoint) (*Session, *Session) {
	t.Helper()
	sess := [8]byte{1, 2, 3}
	start := time.Now().Add(20 * time.Millisecond)
	return connectSessions(t, a, peerOf(b, sess, start), b, peerOf(a, sess, start))
}

func TestDirectSessionStreamsAndDatagrams(t *testing.T) {
	a, b := newEndpoint(t), newEndpoint(t)
	sa, sb := connectPair(t, a, b)
	if sa.PeerKey() != b.PublicKey() || sb.PeerKey() != a.PublicKey() {
		t.Fatal("sessions authenticated the wrong keys")
	}
	if p := sa.Path(); p.Kind != "direct" || p.Remote != b.LocalAddr() || p.Local != a.LocalAddr() {
		t.Errorf("a's path = %+v, want direct to %v", p, b.LocalAddr())
	}

	// A reliable stream carries 1 MiB intact, both ways.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	payload := bytes.Repeat([]byte("rendezvous"), 100_000)
	want := sha256.Sum256(payload)
	errc := make(chan error, 1)
	go func() {
		st, err := sb.AcceptStream(ctx)
		if err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(st, st) // echo
		if err == nil {
			err = st.Close()
		}
		errc <- err
	}()
	st, err := sa.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() { st.Write(payload); st.Close() }()
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != want {
		t.Fatalf("echo: got %d bytes, want %d intact", len(got), len(payload))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// Datagrams arrive (loopback does not lose them; retry a few in case).
	for i := 0; ; i++ {
		if err := sa.SendDatagram([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		d, err := sb.ReceiveDatagram(dctx)
		dcancel()
		if err == nil {
			if string(d) != "ping" {
				t.Fatalf("datagram %q", d)
			}
			break
		}
		if i == 10 {
			t.Fatal("no datagram arrived")
		}
	}
}

func TestNoPathWhenPeerSilent(t *testing.T) {
	a := newEndpoint(t)
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	id, _ := NewIdentity()
	peer := Peer{Key: id.PublicKey(), Session: [8]byte{9}, Candidates: []Candidate{{Addr: addrPort(silent.LocalAddr()), Kind: Host}}}
	_, err = a.Connect(context.Background(), peer)
	if !errors.Is(err, ErrNoPath) {
		t.Fatalf("Connect to a silent peer = %v, want ErrNoPath", err)
	}
	if a.Stats().ProbesSent < 3 {
		t.Errorf("only %d probes sent: retries missing", a.Stats().ProbesSent)
	}
}

// A third party that knows the session id but not the peer's private key
// cannot get a path adopted: its pings are dropped (wrong key) or fail the
// signature (forged sender), and replaying the real peer's ping from
// elsewhere never yields a pong for our own tx id.
func TestProbesFromWrongKeyAreIgnored(t *testing.T) {
	a, b := newEndpoint(t), newEndpoint(t)
	mallory := newEndpoint(t)
	sess := [8]byte{7, 7}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	res := make(chan result, 1)
	go func() { s, err := a.Connect(ctx, peerOf(b, sess, time.Time{})); res <- result{s, err} }()

	// 1. Mallory pings with its own key: not the expected peer.
	waitFor(t, func() bool { return a.Stats().ProbesSent > 0 })
	p := probe{typ: probePing, session: sess, sender: mallory.PublicKey(), txid: randomTxID()}
	mallory.send(p.marshal(nil, mallory.id.private), a.LocalAddr())
	waitFor(t, func() bool { return a.Stats().DroppedUnknownPeer >= 1 })

	// 2. Mallory claims b's key but can only sign with its own.
	p.sender = b.PublicKey()
	mallory.send(p.marshal(nil, mallory.id.private), a.LocalAddr())
	waitFor(t, func() bool { return a.Stats().DroppedBadSig >= 1 })

	// 3. Mallory replays a genuine ping of b (signed by b) from its own address,
	// and a genuine pong of b to a tx id a never sent to Mallory.
	genuine := probe{typ: probePing, session: sess, sender: b.PublicKey(), txid: randomTxID()}
	mallory.send(genuine.marshal(nil, b.id.private), a.LocalAddr())
	pong := probe{typ: probePong, session: sess, sender: b.PublicKey(), txid: randomTxID(), observed: a.LocalAddr()}
	mallory.send(pong.marshal(nil, b.id.private), a.LocalAddr())
	waitFor(t, func() bool { return a.Stats().PingsAnswered >= 1 && a.Stats().DroppedUnasked >= 1 })

	// b itself stays offline: a must end with no path, not with Mallory's.
	r := <-res
	if !errors.Is(r.err, ErrNoPath) {
		if r.s != nil {
			t.Fatalf("a adopted a path to %v from a party without b's key", r.s.Path().Remote)
		}
		t.Fatalf("Connect = %v, want ErrNoPath", r.err)
	}
}

func TestQUICHandshakeFromWrongKeyFails(t *testing.T) {
	a, b := newEndpoint(t), newEndpoint(t)
	// Make a the listening side for b (b's key is the lesser one, so b dials).
	if a.PublicKey().Less(b.PublicKey()) {
		a, b = b, a
	}
	sess := [8]byte{4}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := make(chan result, 1)
	go func() { s, err := a.Connect(ctx, peerOf(b, sess, time.Time{})); res <- result{s, err} }()
	waitFor(t, func() bool { return a.Stats().ProbesSent > 0 })

	// Mallory dials a's QUIC listener with her own certificate.
	mallory, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: conn}
	defer tr.Close()
	tlsConf := mallory.tlsConfig(func(PublicKey) error { return nil })
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	defer hcancel()
	qc, err := tr.Dial(hctx, net.UDPAddrFromAddrPort(a.LocalAddr()), tlsConf, &quic.Config{})
	if err == nil {
		// TLS 1.3: the client may finish before the server rejects its
		// certificate; the server then closes the connection.
		select {
		case <-qc.Context().Done():
		case <-hctx.Done():
			t.Fatal("handshake with the wrong key was not torn down")
		}
	}
	waitFor(t, func() bool { return a.Stats().RejectedHandshakes >= 1 })

	// Mallory also cannot pose as a's dialing peer: b's key is the one pinned.
	sb, err := b.Connect(ctx, peerOf(a, sess, time.Time{}))
	if err != nil {
		t.Fatalf("the genuine peer could not connect after the attack: %v", err)
	}
	defer sb.Close()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.s.Close()
	if r.s.PeerKey() != b.PublicKey() {
		t.Fatal("a's session is not with b")
	}
}

func TestProbeRoundTrip(t *testing.T) {
	id, _ := NewIdentity()
	for _, obs := range []netip.AddrPort{{}, netip.MustParseAddrPort("203.0.113.9:4000"), netip.MustParseAddrPort("[2001:db8::1]:9")} {
		p := probe{typ: probePing, session: [8]byte{1}, sender: id.PublicKey(), txid: randomTxID(), sentUnix: 42}
		if obs.IsValid() {
			p.typ = probePong
			p.observed = obs
		}
		b := p.marshal(nil, id.private)
		if b[0] >= 0x40 {
			t.Fatalf("first byte %#x would be taken for QUIC", b[0])
		}
		got, err := parseProbe(b)
		if err != nil {
			t.Fatal(err)
		}
		if got != p {
			t.Fatalf("round trip: got %+v want %+v", got, p)
		}
		b[len(b)-70] ^= 1 // flip a bit under the signature
		if _, err := parseProbe(b); !errors.Is(err, errBadSignature) && !errors.Is(err, errBadProbe) {
			t.Fatalf("tampered probe accepted: %v", err)
		}
	}
}

func FuzzParseProbe(f *testing.F) {
	id, _ := NewIdentity()
	p := probe{typ: probePong, sender: id.PublicKey(), observed: netip.MustParseAddrPort("192.0.2.1:1")}
	f.Add(p.marshal(nil, id.private))
	p = probe{typ: probePing, sender: id.PublicKey()}
	f.Add(p.marshal(nil, id.private))
	f.Add([]byte{probeMagic})
	f.Add([]byte{probeMagic, 1, 2, 6})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseProbe(b)
		if err != nil {
			return
		}
		// Anything that verifies must re-encode to the same signed bytes.
		if body := got.appendBody(nil); !bytes.Equal(body, b[:len(b)-64]) {
			t.Fatalf("accepted probe does not re-encode: %x", b)
		}
	})
}

// waitFor polls a condition the test cannot get an event for (counters
// updated by the endpoint's read loop), failing after 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Which pairs probe, and in which role: exactly one endpoint-dependent side
// against an endpoint-independent one. Unknown, open and two hard sides punch
// plainly (two hard sides would both have to guess).
func TestBirthdayRoles(t *testing.T) {
	hard := []NATType{NATAddressDependent, NATAddressPortDependent}
	for _, h := range hard {
		if got := birthdayRole(NATEndpointIndependent, h); got != roleProber {
			t.Errorf("easy × %s: role %q, want prober", h, got)
		}
		if got := birthdayRole(h, NATEndpointIndependent); got != roleOpener {
			t.Errorf("%s × easy: role %q, want opener", h, got)
		}
		for _, other := range append([]NATType{NATUnknown, NATOpen, ""}, hard...) {
			if got := birthdayRole(h, other); got != "" {
				t.Errorf("%s × %q: role %q, want plain punching", h, other, got)
			}
			if got := birthdayRole(other, h); got != "" {
				t.Errorf("%q × %s: role %q, want plain punching", other, h, got)
			}
		}
	}
	if got := birthdayRole(NATEndpointIndependent, NATEndpointIndependent); got != "" {
		t.Errorf("easy × easy: role %q", got)
	}
	cfg := DefaultConfig()
	cfg.Birthday.Probes = 0
	cfg.Birthday.Rate = 0 // ignored when off
	if err := cfg.Validate(); err != nil {
		t.Errorf("probing off: %v", err)
	}
	cfg.Birthday = DefaultBirthday()
	cfg.Birthday.Sockets = 5000
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "probe-sockets") {
		t.Errorf("5000 sockets: %v, want an error naming probe-sockets", err)
	}
}

// Allocations made with TURN REST credentials are renewed three quarters
// into the earliest credential's remaining life; static ones on no timer.
func TestRenewDelay(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	rest := func(in time.Duration) RelayServer {
		return RelayServer{Username: fmt.Sprintf("%d:p_x", now.Add(in).Unix())}
	}
	if d, ok := renewDelay([]RelayServer{rest(12 * time.Hour), rest(8 * time.Hour)}, now); !ok || d != 6*time.Hour {
		t.Errorf("12 h and 8 h left: renew in %v (%v), want 6h", d, ok)
	}
	if d, ok := renewDelay([]RelayServer{rest(-time.Minute)}, now); !ok || d != 0 {
		t.Errorf("expired: renew in %v (%v), want now", d, ok)
	}
	if _, ok := renewDelay([]RelayServer{{Username: "peer"}, {Username: "game:x"}}, now); ok {
		t.Error("static credentials renewed on a timer")
	}
}

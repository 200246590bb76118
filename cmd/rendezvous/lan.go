package main

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/rendezvous-p2p/rendezvous/lanbeacon"
	"github.com/rendezvous-p2p/rendezvous/punch"
)

// lanApp is the LAN beacon app id of `connect --lan`.
const lanApp = "rendezvous-connect"

// lanSessions finds players of one room on the local network through the LAN
// beacon and connects to each directly, with no server: each side announces
// its room code, peer port and public key, and listens for the same room.
// It offers the same Events/Sessions as punch.Agent.
type lanSessions struct {
	ep       *punch.Endpoint
	code     string
	events   chan punch.AgentEvent
	sessions chan punch.PeerSession
	wg       sync.WaitGroup
}

// newLANCode makes a 6-character room code without look-alike letters.
func newLANCode() string {
	const alphabet = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
	b := make([]byte, 6)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func startLAN(ctx context.Context, ep *punch.Endpoint, cfg lanbeacon.Config, name, code string) (*lanSessions, error) {
	l := &lanSessions{ep: ep, code: code, events: make(chan punch.AgentEvent, 256), sessions: make(chan punch.PeerSession, 16)}
	ann := lanbeacon.Announcement{
		App: lanApp, Name: name, Room: code,
		Ports: []lanbeacon.Port{{Protocol: lanbeacon.UDP, Port: ep.LocalAddr().Port()}},
		Meta:  map[string]string{"key": ep.PublicKey().String()},
	}
	quiet := slog.New(slog.DiscardHandler)
	announcer, err := lanbeacon.NewAnnouncer(cfg, ann, lanbeacon.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	listener, err := lanbeacon.NewListener(cfg, lanbeacon.Options{Logger: quiet, App: lanApp, Ignore: []lanbeacon.InstanceID{announcer.ID()}})
	if err != nil {
		return nil, err
	}
	found, cancel := listener.Subscribe(64)
	errc := make(chan error, 2)
	go func() { errc <- listener.Run(ctx) }()
	go func() { errc <- announcer.Run(ctx) }()
	for _, ready := range []<-chan struct{}{listener.Ready(), announcer.Ready()} {
		select {
		case <-ready:
		case err := <-errc:
			cancel()
			return nil, err
		}
	}
	l.emit(punch.AgentEvent{Event: "room", Code: code})
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer cancel()
		seen := map[punch.PublicKey]bool{}
		for ev := range found {
			if ev.Kind != lanbeacon.Found && ev.Kind != lanbeacon.Updated || ev.Peer.Room != code {
				continue
			}
			key, err := punch.ParsePublicKey(ev.Peer.Meta["key"])
			if err != nil || seen[key] || len(ev.Peer.Ports) == 0 {
				continue
			}
			seen[key] = true
			announcer.Nudge() // let the newcomer hear us at once
			var addrs []netip.AddrPort
			for _, src := range ev.Peer.Sources {
				addrs = append(addrs, netip.AddrPortFrom(src.Addr, ev.Peer.Ports[0].Port))
			}
			l.emit(punch.AgentEvent{Event: "peer_joined", PeerName: ev.Peer.Name, Addr: ev.Peer.Addr().String()})
			l.wg.Add(1)
			go l.connect(ctx, ev.Peer.Name, key, addrs)
		}
	}()
	return l, nil
}

func (l *lanSessions) connect(ctx context.Context, name string, key punch.PublicKey, addrs []netip.AddrPort) {
	defer l.wg.Done()
	id := key.String()[:8]
	l.emit(punch.AgentEvent{Event: "connecting", PeerID: id, PeerName: name})
	start := time.Now()
	s, err := l.ep.Connect(ctx, punch.LANPeer(l.code, l.ep.PublicKey(), key, addrs))
	took := float64(time.Since(start)) / float64(time.Millisecond)
	if err != nil {
		l.emit(punch.AgentEvent{Event: "failed", PeerID: id, PeerName: name, Error: err.Error(), TookMS: took})
		return
	}
	path := s.Path()
	l.emit(punch.AgentEvent{Event: "connected", PeerID: id, PeerName: name, Path: &path, TookMS: took})
	select {
	case l.sessions <- punch.PeerSession{Session: s, PeerID: id, PeerName: name}:
	case <-ctx.Done():
		s.Close()
	}
}

func (l *lanSessions) emit(e punch.AgentEvent) {
	e.Time = time.Now()
	select {
	case l.events <- e:
	default:
	}
}

func (l *lanSessions) Events() <-chan punch.AgentEvent    { return l.events }
func (l *lanSessions) Sessions() <-chan punch.PeerSession { return l.sessions }

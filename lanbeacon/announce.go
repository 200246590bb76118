package lanbeacon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Announcer broadcasts an Announcement on the LAN: at once on start and on
// every Update, then every Interval (minus up to 10% jitter), and a goodbye
// when its context ends. It never reads from the network, so nothing it
// receives can make it send.
type Announcer struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	key  []byte
	id   InstanceID

	mu  sync.Mutex
	ann Announcement

	changed chan struct{}
	nudged  chan struct{}
	ready   chan struct{}

	lastDests string // destinations of the last round (Run goroutine only)

	rounds, nudgedRounds, nudgesLimited, interfaceRounds, sent, sendErrors, goodbyes atomic.Uint64
}

// AnnouncerStats are counters of an Announcer.
type AnnouncerStats struct {
	Rounds uint64 `json:"rounds"` // announcement rounds (timer, start, change, nudge)
	Nudged uint64 `json:"nudged"` // rounds sent at once because of Nudge
	// NudgesLimited counts nudges over the budget: not sent at once (deferred
	// until the budget refills, or served by the regular round).
	NudgesLimited uint64 `json:"nudges_limited"`
	// InterfaceRounds counts rounds sent at once because the destinations
	// changed (an interface or address appeared or went).
	InterfaceRounds uint64 `json:"interface_rounds"`
	Sent            uint64 `json:"sent"`        // datagrams sent, goodbyes included
	SendErrors      uint64 `json:"send_errors"` // datagrams the kernel refused (no route, interface gone)
	Goodbyes        uint64 `json:"goodbyes"`    // goodbye datagrams sent
}

// NewAnnouncer checks cfg and ann; it does no I/O.
func NewAnnouncer(cfg Config, ann Announcement, opts Options) (*Announcer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ann.Validate(); err != nil {
		return nil, err
	}
	if cfg.Broadcast == "" && !cfg.DirectedBroadcast && cfg.Group6 == "" {
		return nil, errors.New("lanbeacon: nothing to announce to (broadcast, directed-broadcast and ipv6-group all off)")
	}
	a := &Announcer{cfg: cfg, opts: opts, log: opts.logger(), id: opts.Instance, ann: cloneAnnouncement(ann),
		changed: make(chan struct{}, 1), nudged: make(chan struct{}, 1), ready: make(chan struct{})}
	if a.id == (InstanceID{}) {
		a.id = NewInstanceID()
	}
	if cfg.LANKey != "" {
		a.key = macKey(cfg.LANKey)
	}
	return a, nil
}

// NewInstanceID returns a random instance id. An application that restarts
// its announcer but wants to stay one peer passes the same id in
// Options.Instance.
func NewInstanceID() InstanceID {
	var id InstanceID
	rand.Read(id[:])
	return id
}

// ID is the instance id the announcer sends; give it to a listener in the
// same process through Options.Ignore.
func (a *Announcer) ID() InstanceID { return a.id }

// Ready is closed once the sockets are open.
func (a *Announcer) Ready() <-chan struct{} { return a.ready }

// Update replaces the announcement and announces it at once.
func (a *Announcer) Update(ann Announcement) error {
	if err := ann.Validate(); err != nil {
		return err
	}
	a.mu.Lock()
	a.ann = cloneAnnouncement(ann)
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
	return nil
}

// Stats returns the counters.
func (a *Announcer) Stats() AnnouncerStats {
	return AnnouncerStats{Rounds: a.rounds.Load(), Nudged: a.nudgedRounds.Load(), NudgesLimited: a.nudgesLimited.Load(),
		InterfaceRounds: a.interfaceRounds.Load(), Sent: a.sent.Load(), SendErrors: a.sendErrors.Load(), Goodbyes: a.goodbyes.Load()}
}

// Run announces until ctx ends, then sends a goodbye and closes its sockets.
func (a *Announcer) Run(ctx context.Context) error {
	nw := a.opts.network()
	var conn4, conn6 net.PacketConn
	if a.cfg.Broadcast != "" || a.cfg.DirectedBroadcast {
		c, err := nw.ListenPacket(ctx, "udp4", "0.0.0.0:0")
		if err != nil {
			return fmt.Errorf("lanbeacon: announcer socket: %w", err)
		}
		defer c.Close()
		conn4 = c
	}
	if a.cfg.Group6 != "" {
		c, err := nw.ListenPacket(ctx, "udp6", "[::]:0")
		if err != nil {
			// A host without IPv6 still announces over IPv4.
			a.log.Warn("lanbeacon: no IPv6 socket, announcing over IPv4 only", "err", err)
			if conn4 == nil {
				return fmt.Errorf("lanbeacon: announcer socket: %w", err)
			}
		} else {
			defer c.Close()
			conn6 = c
		}
	}
	close(a.ready)
	a.round(conn4, conn6, false)
	next := time.Now().Add(a.nextWait())
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	// Nudged rounds: two at once, then one per interval, so a flood of
	// spoofed "new peers" at most doubles the announcer's rate.
	nudges := rate.NewLimiter(rate.Every(a.cfg.Interval), 2)
	// Interfaces are polled (a netlink dump) at most once a second.
	watch := time.NewTicker(min(max(a.cfg.Interval/4, 50*time.Millisecond), time.Second))
	defer watch.Stop()
	for {
		select {
		case <-ctx.Done():
			a.round(conn4, conn6, true)
			return nil
		case <-timer.C:
		case <-a.changed:
		case <-watch.C:
			// A new interface or address (Wi-Fi joined, cable plugged in):
			// announce there at once rather than at the next round.
			v4, v6 := a.destinations()
			if destKey(v4, v6) == a.lastDests {
				continue
			}
			a.interfaceRounds.Add(1)
			a.roundTo(conn4, conn6, false, v4, v6)
			next = time.Now().Add(a.nextWait())
			timer.Reset(time.Until(next))
			continue
		case <-a.nudged:
			if r := nudges.Reserve(); r.Delay() > 0 {
				a.nudgesLimited.Add(1)
				// Out of budget: go when it refills, if that is before the
				// regular round (which also serves the newcomer).
				if at := time.Now().Add(r.Delay()); at.Before(next) {
					next = at
					timer.Reset(time.Until(next))
				} else {
					r.Cancel()
				}
				continue
			}
			a.nudgedRounds.Add(1)
		}
		a.round(conn4, conn6, false)
		next = time.Now().Add(a.nextWait())
		timer.Reset(time.Until(next))
	}
}

// Nudge asks for a round at once: call it when a listener finds a new peer
// (Syncthing's "re-announce when a new device appears"), so a newcomer hears
// everyone within milliseconds instead of up to one interval. Nudged rounds
// are limited to a burst of two, then one per interval, and go to the usual
// broadcast destinations only, never to the newcomer.
func (a *Announcer) Nudge() {
	select {
	case a.nudged <- struct{}{}:
	default:
	}
}

// nextWait is 90-100% of the interval: never longer, so a listener that is
// up hears every announcer within one interval.
func (a *Announcer) nextWait() time.Duration {
	iv := a.cfg.Interval
	return iv - time.Duration(mrand.Int64N(int64(iv/10)+1))
}

// destinations lists where one round goes, from the current interfaces.
func (a *Announcer) destinations() (v4, v6 []netip.AddrPort) {
	if b := a.cfg.broadcast(); b.IsValid() {
		v4 = append(v4, b)
	}
	ifs, err := a.opts.network().Interfaces()
	if err != nil {
		a.log.Warn("lanbeacon: listing interfaces", "err", err)
	}
	group := a.cfg.group6()
	port := uint16(a.cfg.Port)
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagLoopback != 0 || !a.cfg.wantInterface(ifi.Name) {
			continue
		}
		if a.cfg.DirectedBroadcast && ifi.Flags&net.FlagBroadcast != 0 {
			for _, p := range ifi.Addrs {
				if b, ok := directedBroadcast(p); ok {
					ap := netip.AddrPortFrom(b, port)
					if !containsAddrPort(v4, ap) {
						v4 = append(v4, ap)
					}
				}
			}
		}
		if group.IsValid() && ifi.Flags&net.FlagMulticast != 0 {
			// A numeric zone: the kernel takes it as the scope id, which picks
			// the outgoing interface. Names would be resolved through Go's
			// process-wide cache, which is wrong inside a namespace.
			v6 = append(v6, netip.AddrPortFrom(group.WithZone(strconv.Itoa(ifi.Index)), port))
		}
	}
	return v4, v6
}

// destKey identifies a destination set, to notice interface changes.
func destKey(v4, v6 []netip.AddrPort) string {
	var b strings.Builder
	for _, d := range append(slices.Clip(v4), v6...) {
		b.WriteString(d.String())
		b.WriteByte(' ')
	}
	return b.String()
}

func containsAddrPort(s []netip.AddrPort, ap netip.AddrPort) bool {
	for _, x := range s {
		if x == ap {
			return true
		}
	}
	return false
}

// round sends one announcement (or goodbye) to every destination. Every
// datagram is sealed on its own (fresh timestamp and nonce), so a listener
// hearing one beacon over several paths never mistakes a copy for a replay.
func (a *Announcer) round(conn4, conn6 net.PacketConn, goodbye bool) {
	v4, v6 := a.destinations()
	a.roundTo(conn4, conn6, goodbye, v4, v6)
}

func (a *Announcer) roundTo(conn4, conn6 net.PacketConn, goodbye bool, v4, v6 []netip.AddrPort) {
	a.rounds.Add(1)
	a.lastDests = destKey(v4, v6)
	a.mu.Lock()
	p := packet{Instance: a.id, Interval: a.cfg.Interval, Goodbye: goodbye, Announcement: a.ann}
	a.mu.Unlock()
	buf := make([]byte, 0, MaxPacketSize)
	send := func(c net.PacketConn, dst netip.AddrPort) {
		if c == nil {
			return
		}
		if a.key != nil {
			p.Timestamp = time.Now()
			rand.Read(p.Nonce[:])
		}
		b := appendPacket(buf[:0], &p, a.key)
		if _, err := c.WriteTo(b, net.UDPAddrFromAddrPort(dst)); err != nil {
			a.sendErrors.Add(1)
			a.log.Debug("lanbeacon: send", "to", dst, "err", err)
			return
		}
		a.sent.Add(1)
		if goodbye {
			a.goodbyes.Add(1)
		}
	}
	for _, d := range v4 {
		send(conn4, d)
	}
	for _, d := range v6 {
		send(conn6, d)
	}
}

func cloneAnnouncement(a Announcement) Announcement {
	b := a
	b.Ports = append([]Port(nil), a.Ports...)
	b.Fingerprint = append(Fingerprint(nil), a.Fingerprint...)
	if a.Meta != nil {
		b.Meta = make(map[string]string, len(a.Meta))
		for k, v := range a.Meta {
			b.Meta[k] = v
		}
	}
	return b
}

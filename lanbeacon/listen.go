package lanbeacon

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/time/rate"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
)

// Peer is one announcer in a listener's table.
type Peer struct {
	Instance InstanceID `json:"instance"`
	Announcement
	// Sources are the addresses the peer's beacons came from, one per path
	// (IPv4 per interface, IPv6 link-local with the zone of the receiving
	// interface), most recent first.
	Sources []Source `json:"sources"`
	// Authenticated is true when the beacon was signed with the listener's
	// LAN key. Without a LAN key every peer is unauthenticated.
	Authenticated bool          `json:"authenticated"`
	Interval      time.Duration `json:"interval"` // the announcer's
	FirstSeen     time.Time     `json:"first_seen"`
	LastSeen      time.Time     `json:"last_seen"`
	// Expires is when the peer leaves the table unless heard again: three
	// of its intervals after LastSeen.
	Expires time.Time `json:"expires"`
}

// MarshalJSON writes the interval as a duration string ("2s").
func (p Peer) MarshalJSON() ([]byte, error) {
	type plain Peer
	return json.Marshal(struct {
		plain
		Interval string `json:"interval"`
	}{plain(p), p.Interval.String()})
}

// Addr is the most recently heard source address (the one to connect to).
func (p Peer) Addr() netip.Addr {
	if len(p.Sources) == 0 {
		return netip.Addr{}
	}
	return p.Sources[0].Addr
}

// Source is one address a peer was heard from.
type Source struct {
	Addr netip.Addr `json:"addr"`
	// Interface is the local interface the beacon arrived on, when the
	// socket reports it.
	Interface string    `json:"interface,omitempty"`
	LastSeen  time.Time `json:"last_seen"`
}

// EventKind says what happened to a peer.
type EventKind int

const (
	Found   EventKind = iota + 1 // first beacon of an instance
	Updated                      // announcement, authentication or source set changed
	Gone                         // goodbye received
	Expired                      // silent for three intervals
)

func (k EventKind) String() string {
	switch k {
	case Found:
		return "found"
	case Updated:
		return "updated"
	case Gone:
		return "gone"
	case Expired:
		return "expired"
	}
	return "event" + strconv.Itoa(int(k))
}

// MarshalText is String, for JSON lines.
func (k EventKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Event is a change of the table.
type Event struct {
	Kind EventKind `json:"event"`
	Time time.Time `json:"time"`
	Peer Peer      `json:"peer"`
}

// ListenerStats are counters of a Listener. Every received datagram lands in
// exactly one of the counters after Received.
type ListenerStats struct {
	Received    uint64 `json:"received"`     // datagrams read
	Accepted    uint64 `json:"accepted"`     // announcements taken into the table
	Goodbyes    uint64 `json:"goodbyes"`     // goodbyes taken
	Own         uint64 `json:"own"`          // from an ignored (own) instance
	OtherApp    uint64 `json:"other_app"`    // for another app than Options.App
	Oversized   uint64 `json:"oversized"`    // larger than MaxPacketSize
	Malformed   uint64 `json:"malformed"`    // not a beacon or not well-formed
	RateLimited uint64 `json:"rate_limited"` // over the per-source limit
	Unsigned    uint64 `json:"unsigned"`     // no signature while a LAN key is set
	Forged      uint64 `json:"forged"`       // bad signature
	Stale       uint64 `json:"stale"`        // timestamp outside MaxClockSkew
	Replayed    uint64 `json:"replayed"`     // nonce already seen
	TableFull   uint64 `json:"table_full"`   // new peer while MaxPeers are known
	Late        uint64 `json:"late"`         // announcement after its sender's goodbye (reordered across paths)
	// Not per datagram:
	Expired       uint64 `json:"expired"`        // peers expired
	EventsDropped uint64 `json:"events_dropped"` // events a full subscriber missed
}

// Listener keeps the table of announcers heard on the LAN. It never sends.
type Listener struct {
	cfg    Config
	opts   Options
	log    *slog.Logger
	key    []byte
	ignore map[InstanceID]bool

	ready chan struct{}

	mu        sync.Mutex
	peers     map[InstanceID]*Peer
	limits    map[netip.Addr]*sourceLimit
	lastSweep time.Time
	nonces    map[nonceKey]time.Time   // signed beacons seen, until they go stale
	departed  map[InstanceID]time.Time // instances that said goodbye, until late beacons can no longer come
	subs      map[*subscriber]struct{}
	stopped   bool
	ifnames   map[int]string
	joined    map[int]bool
	wake      chan struct{} // the earliest expiry may have moved

	received, accepted, goodbyes, own, oversized, malformed, rateLimited,
	otherApp, unsigned, forged, stale, replayed, tableFull, late, expired, eventsDropped atomic.Uint64
}

type sourceLimit struct {
	lim  *rate.Limiter
	last time.Time
}

type nonceKey struct {
	id    InstanceID
	nonce [nonceLen]byte
}

type subscriber struct{ ch chan Event }

// maxSources bounds the per-source rate limiters; maxNonces the replay cache;
// maxDeparted the goodbyes remembered (past it, a late beacon may bring a
// departed peer back until it expires, as if no goodbye had been heard).
const (
	maxSources  = 4096
	maxNonces   = 65536
	maxDeparted = 4096
)

// NewListener checks cfg; it does no I/O.
func NewListener(cfg Config, opts Options) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Listener{cfg: cfg, opts: opts, log: opts.logger(), ignore: map[InstanceID]bool{},
		ready: make(chan struct{}), peers: map[InstanceID]*Peer{}, limits: map[netip.Addr]*sourceLimit{},
		nonces: map[nonceKey]time.Time{}, departed: map[InstanceID]time.Time{}, subs: map[*subscriber]struct{}{}, ifnames: map[int]string{},
		joined: map[int]bool{}, wake: make(chan struct{}, 1)}
	for _, id := range opts.Ignore {
		l.ignore[id] = true
	}
	if cfg.LANKey != "" {
		l.key = macKey(cfg.LANKey)
	}
	return l, nil
}

// Ready is closed once the listening sockets are bound.
func (l *Listener) Ready() <-chan struct{} { return l.ready }

// Table is a snapshot of the known peers, sorted by app, name, then instance.
func (l *Listener) Table() []Peer {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Peer, 0, len(l.peers))
	for _, p := range l.peers {
		out = append(out, clonePeer(p))
	}
	slices.SortFunc(out, func(a, b Peer) int {
		return cmp.Or(cmp.Compare(a.App, b.App), cmp.Compare(a.Name, b.Name),
			slices.Compare(a.Instance[:], b.Instance[:]))
	})
	return out
}

// Subscribe returns a channel of table changes with room for buffer events.
// A subscriber that falls behind misses events (counted in
// Stats().EventsDropped); Table stays the truth. The channel is closed by
// cancel or when Run returns.
func (l *Listener) Subscribe(buffer int) (events <-chan Event, cancel func()) {
	s := &subscriber{ch: make(chan Event, buffer)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		close(s.ch)
		return s.ch, func() {}
	}
	l.subs[s] = struct{}{}
	return s.ch, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if _, ok := l.subs[s]; ok {
			delete(l.subs, s)
			close(s.ch)
		}
	}
}

// Stats returns the counters.
func (l *Listener) Stats() ListenerStats {
	return ListenerStats{
		Received: l.received.Load(), Accepted: l.accepted.Load(), Goodbyes: l.goodbyes.Load(),
		Own: l.own.Load(), OtherApp: l.otherApp.Load(), Oversized: l.oversized.Load(), Malformed: l.malformed.Load(),
		RateLimited: l.rateLimited.Load(), Unsigned: l.unsigned.Load(), Forged: l.forged.Load(),
		Stale: l.stale.Load(), Replayed: l.replayed.Load(), TableFull: l.tableFull.Load(), Late: l.late.Load(),
		Expired: l.expired.Load(), EventsDropped: l.eventsDropped.Load(),
	}
}

// Run binds the port (IPv4 and, with a group, IPv6), keeps the table until
// ctx ends, then closes its sockets and the subscribers' channels.
func (l *Listener) Run(ctx context.Context) error {
	nw := l.opts.network()
	addr4 := net.JoinHostPort("0.0.0.0", strconv.Itoa(l.cfg.Port))
	c4, err := nw.ListenPacket(ctx, "udp4", addr4)
	if err != nil {
		return netx.BindError("udp", addr4, "a program holding the port without SO_REUSEPORT", err)
	}
	conns := []net.PacketConn{c4}
	var c6 net.PacketConn
	var p6 *ipv6.PacketConn
	if l.cfg.Group6 != "" {
		addr6 := net.JoinHostPort("::", strconv.Itoa(l.cfg.Port))
		c, err := nw.ListenPacket(ctx, "udp6", addr6)
		if err != nil {
			l.log.Warn("lanbeacon: no IPv6 socket, listening on IPv4 only", "err", netx.BindError("udp", addr6, "", err))
		} else {
			c6 = c
			conns = append(conns, c6)
			if uc, ok := c6.(*net.UDPConn); ok {
				p6 = ipv6.NewPacketConn(uc) // group membership and control messages
			} else {
				l.log.Warn("lanbeacon: IPv6 socket is not a UDP socket, cannot join the group")
			}
		}
	}
	var wg sync.WaitGroup
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
		l.mu.Lock()
		l.stopped = true
		for s := range l.subs {
			close(s.ch)
		}
		clear(l.subs)
		l.mu.Unlock()
	}()
	l.refreshInterfaces(p6)
	// Ask for the receiving interface before anything can arrive: the kernel
	// records it per datagram at queueing time. Control messages need a real
	// UDP socket; an injected PacketConn is read plainly.
	var p4 *ipv4.PacketConn
	if uc, ok := c4.(*net.UDPConn); ok {
		p4 = ipv4.NewPacketConn(uc)
	}
	cm4 := p4 != nil && p4.SetControlMessage(ipv4.FlagInterface, true) == nil
	cm6 := p6 != nil && p6.SetControlMessage(ipv6.FlagInterface, true) == nil
	wg.Go(func() { l.readLoop(read4(c4, p4, cm4)) })
	if c6 != nil {
		wg.Go(func() { l.readLoop(read6(c6, p6, cm6)) })
	}
	close(l.ready)

	refresh := time.NewTicker(l.cfg.Interval)
	defer refresh.Stop()
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	for {
		if next, ok := l.nextExpiry(); ok {
			expiry.Reset(time.Until(next))
		} else {
			expiry.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-refresh.C:
			// New interfaces get the group joined; names of new indexes are known.
			l.refreshInterfaces(p6)
		case <-expiry.C:
			l.expire(time.Now())
		case <-l.wake:
		}
	}
}

// refreshInterfaces learns interface names and joins the IPv6 group on every
// up, multicast-capable interface not joined yet.
func (l *Listener) refreshInterfaces(p6 *ipv6.PacketConn) {
	ifs, err := l.opts.network().Interfaces()
	if err != nil {
		l.log.Warn("lanbeacon: listing interfaces", "err", err)
		return
	}
	group := l.cfg.group6()
	l.mu.Lock()
	defer l.mu.Unlock()
	present := map[int]bool{}
	for _, ifi := range ifs {
		present[ifi.Index] = true
		l.ifnames[ifi.Index] = ifi.Name
		if p6 == nil || l.joined[ifi.Index] || ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 ||
			!l.cfg.wantInterface(ifi.Name) {
			continue
		}
		err := p6.JoinGroup(&net.Interface{Index: ifi.Index, Name: ifi.Name}, &net.UDPAddr{IP: group.AsSlice()})
		if err != nil && !errors.Is(err, syscall.EADDRINUSE) {
			l.log.Debug("lanbeacon: join group", "group", group, "interface", ifi.Name, "err", err)
			continue
		}
		l.joined[ifi.Index] = true
	}
	for idx := range l.joined {
		if !present[idx] {
			delete(l.joined, idx) // membership left with the interface
		}
	}
}

// readFunc reads one datagram and reports the interface it arrived on (0
// when the socket gives no control messages).
type readFunc func(buf []byte) (n, ifindex int, from net.Addr, err error)

// read4 reads IPv4 datagrams, with the receiving interface when withCM.
func read4(c net.PacketConn, p *ipv4.PacketConn, withCM bool) readFunc {
	return func(buf []byte) (int, int, net.Addr, error) {
		if !withCM {
			n, from, err := c.ReadFrom(buf)
			return n, 0, from, err
		}
		n, cm, from, err := p.ReadFrom(buf)
		if cm != nil {
			return n, cm.IfIndex, from, err
		}
		return n, 0, from, err
	}
}

// read6 is read4 for IPv6.
func read6(c net.PacketConn, p *ipv6.PacketConn, withCM bool) readFunc {
	return func(buf []byte) (int, int, net.Addr, error) {
		if !withCM {
			n, from, err := c.ReadFrom(buf)
			return n, 0, from, err
		}
		n, cm, from, err := p.ReadFrom(buf)
		if cm != nil {
			return n, cm.IfIndex, from, err
		}
		return n, 0, from, err
	}
}

// readLoop hands every datagram to handle until the socket is closed.
func (l *Listener) readLoop(read readFunc) {
	buf := make([]byte, MaxPacketSize+1)
	for {
		n, ifindex, from, err := read(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				l.log.Warn("lanbeacon: read", "err", err)
			}
			return
		}
		l.handle(buf[:n], from, ifindex, time.Now())
	}
}

// handle takes one datagram. It only ever updates the table: nothing is sent
// in reply (a beacon must not be a reflector).
func (l *Listener) handle(b []byte, from net.Addr, ifindex int, now time.Time) {
	l.received.Add(1)
	if len(b) > MaxPacketSize {
		l.oversized.Add(1)
		return
	}
	src := sourceAddr(from)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.allow(src, now) {
		l.rateLimited.Add(1)
		return
	}
	p, err := parsePacket(b)
	if err != nil {
		l.malformed.Add(1)
		l.log.Debug("lanbeacon: dropped", "from", src, "err", err)
		return
	}
	if l.ignore[p.Instance] {
		l.own.Add(1)
		return
	}
	if l.opts.App != "" && p.App != l.opts.App {
		l.otherApp.Add(1)
		return
	}
	authenticated := false
	if l.key != nil {
		switch {
		case !p.Signed:
			l.unsigned.Add(1)
			return
		case !p.verify(b, l.key):
			l.forged.Add(1)
			l.log.Debug("lanbeacon: bad signature", "from", src, "instance", p.Instance)
			return
		case p.Timestamp.Before(now.Add(-l.cfg.MaxClockSkew)) || p.Timestamp.After(now.Add(l.cfg.MaxClockSkew)):
			l.stale.Add(1)
			return
		}
		k := nonceKey{p.Instance, p.Nonce}
		if _, seen := l.nonces[k]; seen {
			l.replayed.Add(1)
			return
		}
		l.rememberNonce(k, p.Timestamp.Add(l.cfg.MaxClockSkew), now)
		authenticated = true
	}
	ifname := l.ifnames[ifindex]
	if src.Is6() && src.IsLinkLocalUnicast() {
		// The zone is the receiving interface, from this namespace's view.
		if ifname != "" {
			src = src.WithZone(ifname)
		} else if ifindex != 0 {
			src = src.WithZone(strconv.Itoa(ifindex))
		}
	}
	if p.Goodbye {
		l.goodbyes.Add(1)
		// The sender's last round went out on every path just before this
		// goodbye, and paths are read by separate sockets: an announcement
		// of that round may still be on its way. The instance id is fresh
		// per announcer start, so nothing more may bring it back; one of its
		// intervals covers any reordering on a LAN.
		if len(l.departed) >= maxDeparted {
			l.forgetDeparted(now)
		}
		if len(l.departed) < maxDeparted {
			l.departed[p.Instance] = now.Add(p.Interval)
		}
		if peer, ok := l.peers[p.Instance]; ok {
			delete(l.peers, p.Instance)
			l.emit(Event{Kind: Gone, Time: now, Peer: clonePeer(peer)})
		}
		return
	}
	if until, ok := l.departed[p.Instance]; ok && now.Before(until) {
		l.late.Add(1)
		return
	}
	peer, known := l.peers[p.Instance]
	if !known && len(l.peers) >= l.cfg.MaxPeers {
		l.tableFull.Add(1)
		return
	}
	l.accepted.Add(1)
	if !known {
		peer = &Peer{Instance: p.Instance, FirstSeen: now}
		l.peers[p.Instance] = peer
	}
	changed := !peer.Announcement.equal(p.Announcement) || peer.Authenticated != authenticated
	peer.Announcement = p.Announcement
	peer.Authenticated = authenticated
	peer.Interval = p.Interval
	peer.LastSeen = now
	peer.Expires = now.Add(3 * p.Interval)
	// Sources: refresh this path, drop paths silent for three intervals.
	i := slices.IndexFunc(peer.Sources, func(s Source) bool { return s.Addr == src && s.Interface == ifname })
	if i < 0 {
		changed = true
		peer.Sources = append(peer.Sources, Source{Addr: src, Interface: ifname})
		i = len(peer.Sources) - 1
	}
	peer.Sources[i].LastSeen = now
	n := len(peer.Sources)
	peer.Sources = slices.DeleteFunc(peer.Sources, func(s Source) bool { return now.Sub(s.LastSeen) > 3*p.Interval })
	changed = changed || len(peer.Sources) != n
	slices.SortStableFunc(peer.Sources, func(a, b Source) int { return b.LastSeen.Compare(a.LastSeen) })
	switch {
	case !known:
		l.emit(Event{Kind: Found, Time: now, Peer: clonePeer(peer)})
	case changed:
		l.emit(Event{Kind: Updated, Time: now, Peer: clonePeer(peer)})
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// allow applies the per-source rate limit. Called with mu held.
func (l *Listener) allow(src netip.Addr, now time.Time) bool {
	s, ok := l.limits[src]
	if !ok {
		if len(l.limits) >= maxSources {
			// Full (a flood of spoofed sources): forget sources idle for a
			// minute, at most once a second so the sweep stays cheap.
			if now.Sub(l.lastSweep) < time.Second {
				return false
			}
			l.lastSweep = now
			for a, x := range l.limits {
				if now.Sub(x.last) > time.Minute {
					delete(l.limits, a)
				}
			}
			if len(l.limits) >= maxSources {
				return false
			}
		}
		limit, burst := l.opts.RateLimit, l.opts.RateBurst
		if limit == 0 {
			limit = 20
		}
		if burst == 0 {
			burst = 40
		}
		s = &sourceLimit{lim: rate.NewLimiter(limit, burst)}
		l.limits[src] = s
	}
	s.last = now
	return s.lim.AllowN(now, 1)
}

// rememberNonce records a signed beacon until its timestamp is stale (after
// which the skew check rejects a replay anyway). Called with mu held.
func (l *Listener) rememberNonce(k nonceKey, until, now time.Time) {
	if len(l.nonces) >= maxNonces {
		for x, t := range l.nonces {
			if now.After(t) {
				delete(l.nonces, x)
			}
		}
		// Still full of live entries (only key holders get here): forget the
		// oldest so new peers keep working.
		for len(l.nonces) >= maxNonces {
			var oldest nonceKey
			first := true
			var ot time.Time
			for x, t := range l.nonces {
				if first || t.Before(ot) {
					oldest, ot, first = x, t, false
				}
			}
			delete(l.nonces, oldest)
		}
	}
	l.nonces[k] = until
}

func (l *Listener) nextExpiry() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var next time.Time
	for _, p := range l.peers {
		if next.IsZero() || p.Expires.Before(next) {
			next = p.Expires
		}
	}
	return next, !next.IsZero()
}

func (l *Listener) expire(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, p := range l.peers {
		if !now.Before(p.Expires) {
			delete(l.peers, id)
			l.expired.Add(1)
			l.emit(Event{Kind: Expired, Time: now, Peer: clonePeer(p)})
		}
	}
	for k, t := range l.nonces {
		if now.After(t) {
			delete(l.nonces, k)
		}
	}
	l.forgetDeparted(now)
}

// forgetDeparted drops goodbyes whose window has passed. Called with mu held.
func (l *Listener) forgetDeparted(now time.Time) {
	for id, until := range l.departed {
		if !now.Before(until) {
			delete(l.departed, id)
		}
	}
}

// emit hands ev to every subscriber without blocking. Called with mu held.
func (l *Listener) emit(ev Event) {
	for s := range l.subs {
		select {
		case s.ch <- ev:
		default:
			l.eventsDropped.Add(1)
		}
	}
}

func sourceAddr(a net.Addr) netip.Addr {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		if a == nil {
			return netip.Addr{}
		}
		ap, _ = netip.ParseAddrPort(a.String())
	}
	// The zone Go reports comes from a process-wide name cache; the listener
	// sets it from the receiving interface instead.
	return ap.Addr().Unmap().WithZone("")
}

func clonePeer(p *Peer) Peer {
	c := *p
	c.Announcement = cloneAnnouncement(p.Announcement)
	c.Sources = slices.Clone(p.Sources)
	return c
}

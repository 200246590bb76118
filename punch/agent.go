package punch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// AgentConfig configures an Agent.
type AgentConfig struct {
	// Signaling is how to reach the server; Register.PublicKey and
	// Register.Candidates are filled in by the agent.
	Signaling client.Config
	// STUNServer overrides the STUN address ("host:port") taken from the
	// server's ICE servers.
	STUNServer string
	// IncludeVirtual offers addresses of container/VM interfaces as candidates.
	IncludeVirtual bool
	// HostAddrs, when not nil, replaces the interface scan: exactly these
	// addresses are offered as host candidates (an empty, non-nil slice offers none).
	HostAddrs []netip.Addr
	// NoRelay skips TURN: only direct paths are tried.
	NoRelay bool
	// NAT, when set, is this peer's NAT type as the player knows it (e.g.
	// from `rendezvous natcheck`), used instead of what the agent measures.
	NAT NATType
	// Relay says how to reach the TURN servers signaling names (sockets,
	// dialer, the CA pool that verifies a turns: server).
	Relay  RelayOptions
	Logger *slog.Logger
}

// AgentEvent is something that happened, for display (connect --json).
type AgentEvent struct {
	Event    string `json:"event"` // registered, reflexive, relay, room, peer_joined, peer_left, connecting, connected, path, probed, failed, warning
	PeerID   string `json:"peer_id,omitempty"`
	PeerName string `json:"peer_name,omitempty"`
	Room     string `json:"room,omitempty"`
	Code     string `json:"code,omitempty"`
	Path     *Path  `json:"path,omitempty"`
	From     *Path  `json:"from,omitempty"`   // path: the path left
	Reason   string `json:"reason,omitempty"` // path: why it switched
	Addr     string `json:"addr,omitempty"`
	NAT      string `json:"nat,omitempty"` // reflexive: this side's NAT type
	// Probe is birthday probing's outcome (probed).
	Probe  *ProbeResult `json:"probe,omitempty"`
	Error  string       `json:"error,omitempty"`
	TookMS float64      `json:"took_ms,omitempty"`
	Time   time.Time    `json:"time"`
}

// PeerSession is a session with a peer met through signaling.
type PeerSession struct {
	*Session
	PeerID, PeerName string
}

// Agent registers with the signaling server, learns its reflexive address
// over the endpoint's socket, and turns every punch the server schedules into
// a session.
type Agent struct {
	ep   *Endpoint
	sig  *client.Client
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	sessions chan PeerSession
	events   chan AgentEvent

	// What update_peer says after a relay renewal: host candidates, NAT.
	hostCands []client.Candidate
	nat       *client.NATReport
	relayOpts RelayOptions
	renewNow  chan struct{} // signaling reconnected: the relay may have restarted
	renews    bool          // renewRelays runs
}

// StartAgent connects to signaling with ep's key and candidates.
func StartAgent(ctx context.Context, ep *Endpoint, cfg AgentConfig) (*Agent, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	local := ep.LocalAddr()
	v4only := local.Addr().Is4()
	var cands []client.Candidate
	hosts := HostCandidates(local.Port(), cfg.IncludeVirtual, v4only)
	if cfg.HostAddrs != nil {
		hosts = hosts[:0]
		for _, ip := range cfg.HostAddrs {
			hosts = append(hosts, Candidate{Addr: netip.AddrPortFrom(ip, local.Port()), Kind: Host})
		}
	}
	for _, c := range hosts {
		cands = append(cands, client.Candidate{Type: string(c.Kind), Addr: c.Addr.String()})
	}
	sc := cfg.Signaling
	sc.Register.PublicKey = ep.PublicKey().String()
	sc.Register.Candidates = cands
	if sc.Logger == nil {
		sc.Logger = log
	}
	sig, err := client.Dial(ctx, sc)
	if err != nil {
		return nil, err
	}
	actx, stop := context.WithCancel(context.Background())
	a := &Agent{ep: ep, sig: sig, log: log, ctx: actx, stop: stop,
		sessions: make(chan PeerSession, 16), events: make(chan AgentEvent, 256),
		hostCands: cands, relayOpts: cfg.Relay, renewNow: make(chan struct{}, 1)}
	reg := sig.Registered()
	a.emit(AgentEvent{Event: "registered", PeerID: reg.PeerID})

	// TURN allocations run while STUN runs: on a network that drops UDP to
	// the server both wait for their timeouts, and should not one after the other.
	type allocated struct {
		cands []Candidate
		err   error
	}
	var relayed chan allocated
	relays := RelayServers(reg.ICEServers)
	if !cfg.NoRelay && len(relays) > 0 {
		relayed = make(chan allocated, 1)
		go func() {
			c, err := ep.AllocateRelays(ctx, relays, cfg.Relay)
			relayed <- allocated{c, err}
		}()
	}
	var (
		update client.UpdatePeer
		nat    NATInfo
	)
	stunAddr, err := a.stunServer(cfg.STUNServer, sc.URL, reg.ICEServers)
	if err != nil {
		a.emit(AgentEvent{Event: "warning", Error: "no STUN server: " + err.Error() + "; offering host candidates only"})
	} else {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		nat, err = ep.DiscoverNAT(sctx, stunAddr, reg.PeerToken)
		cancel()
		if err != nil {
			a.emit(AgentEvent{Event: "warning", Error: fmt.Sprintf("STUN to %s: %v; offering host candidates only", stunAddr, err)})
		}
	}
	if relayed != nil {
		r := <-relayed
		if r.err != nil {
			a.emit(AgentEvent{Event: "warning", Error: "no relay: " + r.err.Error()})
		} else {
			update.Candidates = a.withRelayed(r.cands, "")
			if nat.Reflexive.IsValid() && nat.Type == NATUnknown {
				// A server with one address: the mapping test goes through
				// the allocation made meanwhile (DiscoverNAT).
				sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				if again, err := ep.DiscoverNAT(sctx, stunAddr, ""); err == nil {
					nat = again
				}
				cancel()
			}
		}
	}
	if cfg.NAT != "" {
		nat.Type = cfg.NAT
		ep.SetNATType(cfg.NAT)
	}
	if nat.Reflexive.IsValid() {
		a.emit(AgentEvent{Event: "reflexive", Addr: nat.Reflexive.String(), NAT: string(nat.Type)})
		if nat.Type != NATUnknown {
			update.NAT = &client.NATReport{Type: string(nat.Type), Mapping: string(nat.Type)}
			a.nat = update.NAT
		}
	}
	if update.NAT != nil || update.Candidates != nil {
		if err := sig.UpdatePeer(ctx, update); err != nil {
			a.emit(AgentEvent{Event: "warning", Error: "offering relayed candidates and the NAT type: " + err.Error()})
		}
	}
	a.renews = relayed != nil
	a.wg.Add(1)
	go a.loop()
	if a.renews {
		a.wg.Add(1)
		go a.renewRelays(relays)
	}
	return a, nil
}

// renewRelays renews the TURN allocations before the credentials they were
// made with expire (TURN REST credentials, "expiry:user"), and at once after
// signaling reconnected (the server, relay included, may have restarted):
// fresh credentials from get_ice_servers, new allocations, the sessions
// moved to them (Endpoint.RenewRelays), the new relayed candidates offered.
func (a *Agent) renewRelays(servers []RelayServer) {
	defer a.wg.Done()
	wait, timed := renewDelay(servers, time.Now())
	for {
		var fire <-chan time.Time
		var timer *time.Timer
		if timed {
			timer = time.NewTimer(wait)
			fire = timer.C
		}
		select {
		case <-a.ctx.Done():
		case <-fire:
		case <-a.renewNow:
		}
		if timer != nil {
			timer.Stop()
		}
		if a.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(a.ctx, 15*time.Second)
		fresh, err := a.renewOnce(ctx)
		cancel()
		if err != nil {
			// The old allocations live until their credentials expire: try
			// again in a minute.
			a.emit(AgentEvent{Event: "warning", Error: "renewing the relay: " + err.Error()})
			wait, timed = time.Minute, true
			continue
		}
		wait, timed = renewDelay(fresh, time.Now())
	}
}

func (a *Agent) renewOnce(ctx context.Context) ([]RelayServer, error) {
	ice, err := a.sig.ICEServers(ctx)
	if err != nil {
		return nil, err
	}
	servers := RelayServers(ice)
	if len(servers) == 0 {
		return nil, errors.New("the server offered no TURN server")
	}
	relayed, err := a.ep.RenewRelays(ctx, servers, a.relayOpts)
	if err != nil {
		return nil, err
	}
	if err := a.sig.UpdatePeer(ctx, client.UpdatePeer{Candidates: a.withRelayed(relayed, "renewed"), NAT: a.nat}); err != nil {
		return nil, fmt.Errorf("offering the renewed relayed candidates: %w", err)
	}
	return servers, nil
}

// withRelayed is what update_peer offers: the host candidates and the
// relayed addresses, each of which it shows as a "relay" event.
func (a *Agent) withRelayed(relayed []Candidate, reason string) []client.Candidate {
	cands := slices.Clone(a.hostCands)
	for _, c := range relayed {
		a.emit(AgentEvent{Event: "relay", Addr: c.Addr.String(), Reason: reason})
		cands = append(cands, client.Candidate{Type: string(Relayed), Addr: c.Addr.String(), Proto: "udp"})
	}
	return cands
}

// renewDelay is when to renew allocations made with servers' credentials:
// three quarters into the time the earliest one has left. Static
// credentials (no "expiry:" in the username) are not renewed on a timer.
func renewDelay(servers []RelayServer, now time.Time) (time.Duration, bool) {
	var earliest time.Time
	for _, s := range servers {
		prefix, _, ok := strings.Cut(s.Username, ":")
		if !ok {
			continue
		}
		unix, err := strconv.ParseInt(prefix, 10, 64)
		if err != nil {
			continue
		}
		if exp := time.Unix(unix, 0); earliest.IsZero() || exp.Before(earliest) {
			earliest = exp
		}
	}
	if earliest.IsZero() {
		return 0, false
	}
	return max(earliest.Sub(now)*3/4, 0), true
}

// stunServer picks the STUN address: the override, else the first stun: URL
// of the ICE servers, resolved.
func (a *Agent) stunServer(override, sigURL string, ice []client.ICEServer) (netip.AddrPort, error) {
	hostport := override
	if hostport == "" {
		for _, s := range ice {
			for _, u := range s.URLs {
				if rest, ok := strings.CutPrefix(u, "stun:"); ok {
					hostport, _, _ = strings.Cut(rest, "?")
					break
				}
			}
			if hostport != "" {
				break
			}
		}
	}
	if hostport == "" {
		return netip.AddrPort{}, errors.New("the server offered no stun: URL")
	}
	ua, err := net.ResolveUDPAddr("udp", hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Events reports progress; it is closed by Close.
func (a *Agent) Events() <-chan AgentEvent { return a.events }

// Sessions delivers every session established.
func (a *Agent) Sessions() <-chan PeerSession { return a.sessions }

// Signaling is the underlying client (for rooms, signals, ...).
func (a *Agent) Signaling() *client.Client { return a.sig }

func (a *Agent) emit(e AgentEvent) {
	e.Time = time.Now()
	select {
	case a.events <- e:
	default: // nobody is reading: drop display events rather than stall
	}
}

// CreateRoom creates a room and waits for peers to join it.
func (a *Agent) CreateRoom(ctx context.Context, r client.CreateRoom) (client.RoomJoined, error) {
	j, err := a.sig.CreateRoom(ctx, r)
	if err == nil {
		a.emit(AgentEvent{Event: "room", Room: j.Room.ID, Code: j.Room.Code})
	}
	return j, err
}

// Join joins a room by code and asks the server to connect this peer with
// every member already there.
func (a *Agent) Join(ctx context.Context, code string) (client.RoomJoined, error) {
	j, err := a.sig.Join(ctx, client.Join{Code: code})
	if err != nil {
		return j, err
	}
	a.emit(AgentEvent{Event: "room", Room: j.Room.ID, Code: j.Room.Code})
	me := a.sig.PeerID()
	for _, m := range j.Members {
		if m.ID == me {
			continue
		}
		if _, err := a.sig.Connect(ctx, client.Connect{PeerID: m.ID}); err != nil {
			a.emit(AgentEvent{Event: "failed", PeerID: m.ID, PeerName: m.Name, Error: err.Error()})
		}
	}
	return j, nil
}

func (a *Agent) loop() {
	defer a.wg.Done()
	for {
		select {
		case <-a.ctx.Done():
			return
		case ev, ok := <-a.sig.Events():
			if !ok {
				return
			}
			switch ev.Type {
			case client.TypePunch:
				var p client.Punch
				if err := ev.Decode(&p); err != nil {
					a.emit(AgentEvent{Event: "warning", Error: "bad punch frame: " + err.Error()})
					continue
				}
				a.wg.Add(1)
				go a.punch(p)
			case client.TypePeerJoined:
				var pj client.PeerJoined
				if ev.Decode(&pj) == nil {
					a.emit(AgentEvent{Event: "peer_joined", PeerID: pj.Peer.ID, PeerName: pj.Peer.Name, Room: pj.RoomID})
				}
			case client.TypePeerLeft:
				var pl client.PeerLeft
				if ev.Decode(&pl) == nil {
					a.emit(AgentEvent{Event: "peer_left", PeerID: pl.PeerID, Room: pl.RoomID, Error: pl.Reason})
				}
			case client.EventDisconnected:
				a.emit(AgentEvent{Event: "warning", Error: "signaling disconnected; reconnecting"})
			case client.EventReconnected:
				// A fresh registration (the server restarted) knows only our
				// host candidates: the renewal offers the rest, or, without a
				// relay, update_peer does.
				if a.renews {
					select {
					case a.renewNow <- struct{}{}:
					default:
					}
				} else if a.nat != nil {
					a.wg.Add(1)
					go func() {
						defer a.wg.Done()
						ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
						defer cancel()
						a.sig.UpdatePeer(ctx, client.UpdatePeer{Candidates: a.hostCands, NAT: a.nat})
					}()
				}
			case client.TypePeerUpdated:
				var pu client.PeerUpdated
				if ev.Decode(&pu) != nil {
					continue
				}
				if key, err := ParsePublicKey(pu.Peer.PublicKey); err == nil {
					a.ep.AddCandidates(key, candidatesOf(pu.Peer))
				}
			}
		}
	}
}

// PeerFromPunch turns the server's punch frame into what Connect needs.
func PeerFromPunch(p client.Punch, localTime func(int64) time.Time) (Peer, error) {
	key, err := ParsePublicKey(p.Peer.PublicKey)
	if err != nil {
		return Peer{}, err
	}
	sum := sha256.Sum256([]byte(p.SessionID))
	peer := Peer{Key: key, Start: localTime(p.StartAt), NAT: NATUnknown}
	if p.Peer.NAT != nil {
		peer.NAT = NATType(p.Peer.NAT.Type)
	}
	copy(peer.Session[:], sum[:8])
	peer.Candidates = candidatesOf(p.Peer)
	return peer, nil
}

// candidatesOf is a peer's UDP candidates as signaling describes them.
func candidatesOf(info client.PeerInfo) []Candidate {
	var out []Candidate
	add := func(kind CandidateKind, s string) {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, Candidate{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Kind: kind})
		}
	}
	for _, c := range info.Candidates {
		if c.Proto == "" || c.Proto == "udp" {
			add(CandidateKind(c.Type), c.Addr)
		}
	}
	if info.Reflexive != "" {
		add(Reflexive, info.Reflexive)
	}
	return out
}

func (a *Agent) punch(p client.Punch) {
	defer a.wg.Done()
	who := AgentEvent{PeerID: p.Peer.ID, PeerName: p.Peer.Name}
	peer, err := PeerFromPunch(p, a.sig.LocalTime)
	if err != nil {
		who.Event, who.Error = "failed", err.Error()
		a.emit(who)
		return
	}
	who.Event = "connecting"
	a.emit(who)
	s, err := a.ep.Connect(a.ctx, peer)
	took := time.Since(peer.Start)
	result := client.ConnectResult{SessionID: p.SessionID, PeerID: p.Peer.ID, Outcome: "direct", DurationMS: float64(took) / float64(time.Millisecond),
		LocalNAT: string(a.ep.NATType()), RemoteNAT: string(peer.NAT)}
	if err != nil {
		result.Outcome = "failed"
		who.Event, who.Error = "failed", err.Error()
	} else {
		path := s.Path()
		who.Event, who.Path = "connected", &path
		if path.Kind != Direct {
			result.Outcome = "relayed"
		}
		a.wg.Add(1)
		go a.forwardPathEvents(s, p.Peer.ID, p.Peer.Name)
	}
	who.TookMS = result.DurationMS
	// The outcome report is for the server's metrics: send it without making
	// the game wait a server round trip for its session. A session that
	// probes for a direct path reports once probing ended, with its outcome.
	var probe *Probe
	if err == nil {
		probe = s.Probe()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if probe != nil {
			select {
			case <-probe.Done():
			case <-a.ctx.Done():
				return
			}
			// Probes 0: plain punching found a direct path before probing began.
			r := probe.Result()
			a.emit(AgentEvent{Event: "probed", PeerID: p.Peer.ID, PeerName: p.Peer.Name, Probe: &r, TookMS: float64(r.Took) / float64(time.Millisecond)})
			if r.Probes > 0 {
				if r.Role == roleProber {
					result.Probes = r.Probes
				}
				if r.Found {
					result.Outcome, result.DurationMS = "direct", float64(r.Took)/float64(time.Millisecond)
				}
			}
		}
		rctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
		defer cancel()
		if rerr := a.sig.ReportResult(rctx, result); rerr != nil {
			a.log.Debug("reporting connect result", "err", rerr)
		}
	}()
	a.emit(who)
	if err == nil {
		select {
		case a.sessions <- PeerSession{Session: s, PeerID: p.Peer.ID, PeerName: p.Peer.Name}:
		case <-a.ctx.Done():
			s.Close()
		}
	}
}

// forwardPathEvents turns a session's path switches into "path" events.
func (a *Agent) forwardPathEvents(s *Session, id, name string) {
	defer a.wg.Done()
	for {
		select {
		case ev := <-s.PathEvents():
			path := ev.Path
			a.emit(AgentEvent{Event: "path", PeerID: id, PeerName: name, Path: &path, From: ev.From, Reason: ev.Reason})
		case <-s.Done():
			return
		case <-a.ctx.Done():
			return
		}
	}
}

// Close leaves signaling; sessions already handed out stay up.
func (a *Agent) Close() error {
	a.stop()
	err := a.sig.Close()
	a.wg.Wait()
	return err
}

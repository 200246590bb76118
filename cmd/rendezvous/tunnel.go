package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rendezvous-p2p/rendezvous/punch"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

type tunnelFlags struct {
	peerFlags
	forward, listen string
	statsEvery      time.Duration
}

func newTunnelCmd() *cobra.Command {
	var f tunnelFlags
	cmd := &cobra.Command{
		Use:   "tunnel",
		Short: "Carry a LAN game's UDP to another player over the best path",
		Long: `Tunnel a game that only knows LAN or direct-IP play to another player.

The hosting player runs the game's server and
  rendezvous tunnel --server URL --create --forward udp:127.0.0.1:GAMEPORT
which prints a room code. Each other player runs
  rendezvous tunnel --server URL --room CODE --listen udp:127.0.0.1:PORT
and points the game at 127.0.0.1:PORT. Every UDP packet the game sends there
reaches the host's game server as an unreliable QUIC datagram (no
head-of-line blocking), over a direct path when punching works, else through
the server's TURN relay; the path follows the ladder of connect (direct,
relay over UDP, TCP, TLS) without dropping the tunnel. On the host, each
joiner gets a UDP socket of its own, so the game server sees one address per
player. Packets above about 1150 bytes do not fit a datagram and are dropped
(counted in the stats).

Every --stats-every the path, RTT and throughput of each peer are printed to
stderr (with --json as {"event":"stats",...} lines, beside the events of connect).`,
		Example: `  rendezvous tunnel --server http://rv.example.com:8080 --create --forward udp:127.0.0.1:27015
  rendezvous tunnel --server http://rv.example.com:8080 --room K7QX2M --listen udp:127.0.0.1:27015`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.server == "" {
				return errors.New("--server is required (the rendezvous server's URL)")
			}
			if (f.room == "") == !f.create {
				return errors.New("give either --create (host) or --room CODE (join)")
			}
			if (f.forward == "") == (f.listen == "") {
				return errors.New("give either --forward udp:HOST:PORT (the host's game server) or --listen udp:HOST:PORT (where this player's game sends)")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if f.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, f.timeout)
				defer cancel()
			}
			return runTunnel(ctx, f, cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	f.peerFlags.register(fl, "peer-listen", ":0")
	fl.StringVar(&f.forward, "forward", "", "host: deliver joiners' packets to this game server, udp:HOST:PORT")
	fl.StringVar(&f.listen, "listen", "", "joiner: take the game's packets on this address, udp:HOST:PORT")
	fl.DurationVar(&f.statsEvery, "stats-every", 2*time.Second, "how often to print path, RTT and throughput (0: never)")
	fl.DurationVar(&f.timeout, "timeout", 0, "stop after this long (0: run until Ctrl-C)")
	return cmd
}

// redialAfter is the pause before a joiner asks for a new session with the host.
const redialAfter = 3 * time.Second

// parseUDPFlag reads udp:HOST:PORT.
func parseUDPFlag(name, v string) (*net.UDPAddr, error) {
	hp, ok := strings.CutPrefix(v, "udp:")
	if !ok {
		return nil, fmt.Errorf("--%s: %q must look like udp:HOST:PORT (only UDP is tunnelled)", name, v)
	}
	a, err := net.ResolveUDPAddr("udp", hp)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", name, err)
	}
	return a, nil
}

// tunnelStats counts one peer's tunnel traffic.
type tunnelStats struct {
	up, down, dropped atomic.Uint64 // bytes to / from the peer; packets dropped
}

// TunnelStatsEvent is the --json form of a stats line.
type TunnelStatsEvent struct {
	Event    string      `json:"event"` // "stats"
	PeerID   string      `json:"peer_id"`
	PeerName string      `json:"peer_name,omitempty"`
	Path     *punch.Path `json:"path"`
	RTTMS    float64     `json:"rtt_ms"`
	UpBps    float64     `json:"up_bps"`
	DownBps  float64     `json:"down_bps"`
	Dropped  uint64      `json:"dropped"`
	Time     time.Time   `json:"time"`
}

func runTunnel(ctx context.Context, f tunnelFlags, stderr io.Writer) error {
	printer := &eventPrinter{w: stderr, asJSON: f.asJSON, server: f.server}
	var target, listenAddr *net.UDPAddr
	var err error
	if f.forward != "" {
		if target, err = parseUDPFlag("forward", f.forward); err != nil {
			return err
		}
	} else if listenAddr, err = parseUDPFlag("listen", f.listen); err != nil {
		return err
	}
	var game net.PacketConn
	if listenAddr != nil {
		if game, err = net.ListenUDP("udp", listenAddr); err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		defer game.Close()
	}
	ep, agent, err := f.start(ctx)
	if err != nil {
		return err
	}
	defer ep.Close()
	defer agent.Close()
	var joined client.RoomJoined
	if f.create {
		joined, err = agent.CreateRoom(ctx, client.CreateRoom{Name: f.name + "'s game", Capacity: 16})
	} else {
		joined, err = agent.Join(ctx, f.room)
	}
	if err != nil {
		return err
	}

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		peers = map[string]*tunnelPeer{}
	)
	defer wg.Wait()
	var ticker <-chan time.Time
	if f.statsEvery > 0 {
		t := time.NewTicker(f.statsEvery)
		defer t.Stop()
		ticker = t.C
	}
	// The joiner's one game socket feeds the session with the host.
	var hostSession atomic.Pointer[tunnelPeer]
	var gameAddr atomic.Pointer[net.UDPAddr]
	if game != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, from, err := game.ReadFrom(buf)
				if err != nil {
					return
				}
				if ua, ok := from.(*net.UDPAddr); ok {
					gameAddr.Store(ua)
				}
				if tp := hostSession.Load(); tp != nil {
					tp.send(buf[:n])
				}
			}
		}()
	}
	// A joiner is never left without the host: when the session ends or a
	// connect fails, it asks signaling for a new connect, every few seconds
	// until a session is up again.
	redialReq := make(chan struct{}, 1)
	redial := func() {
		select {
		case redialReq <- struct{}{}:
		default:
		}
	}
	if game != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-redialReq:
				case <-ctx.Done():
					return
				}
				t := time.NewTimer(redialAfter)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return
				}
				if hostSession.Load() != nil {
					continue
				}
				if _, err := agent.Signaling().Connect(ctx, client.Connect{PeerID: joined.Room.Host}); err != nil && ctx.Err() == nil {
					printer.print(punch.AgentEvent{Event: "warning", Error: "reconnecting to the host: " + err.Error(), Time: time.Now()})
					redial()
				}
			}
		}()
	}
	last := time.Now()
	for {
		select {
		case e := <-agent.Events():
			printer.print(e)
			if game != nil && e.Event == "failed" && e.PeerID == joined.Room.Host {
				redial() // the punch (or the relay) failed: ask again
			}
		case ps := <-agent.Sessions():
			if game != nil && ps.PeerID != joined.Room.Host {
				ps.Session.Close() // a joiner talks to the host only
				continue
			}
			tp := &tunnelPeer{s: ps.Session, id: ps.PeerID, name: ps.PeerName}
			mu.Lock()
			if old := peers[ps.PeerID]; old != nil {
				old.s.Close()
			}
			peers[ps.PeerID] = tp
			mu.Unlock()
			wg.Add(1)
			if game != nil {
				hostSession.Store(tp)
				go func() {
					defer wg.Done()
					tp.receive(ctx, func(b []byte) {
						if a := gameAddr.Load(); a != nil {
							game.WriteTo(b, a)
						}
					})
					if ctx.Err() == nil && hostSession.CompareAndSwap(tp, nil) {
						printer.print(punch.AgentEvent{Event: "warning", PeerID: tp.id, PeerName: tp.name, Error: fmt.Sprintf("session with the host ended (%v); reconnecting", tp.s.Err()), Time: time.Now()})
						redial()
					}
				}()
			} else {
				go func() {
					defer wg.Done()
					tp.forward(ctx, target, printer)
				}()
			}
		case now := <-ticker:
			secs := now.Sub(last).Seconds()
			last = now
			mu.Lock()
			for id, tp := range peers {
				select {
				case <-tp.s.Done():
					delete(peers, id)
					continue
				default:
				}
				printer.printStats(tp.snapshot(secs))
			}
			mu.Unlock()
		case <-ctx.Done():
			drain(agent, printer)
			mu.Lock()
			for _, tp := range peers {
				tp.s.Close()
			}
			mu.Unlock()
			if game != nil {
				game.Close()
			}
			return nil // Ctrl-C or --timeout: the planned end of a run
		}
	}
}

// tunnelPeer is the tunnel to one peer.
type tunnelPeer struct {
	s        *punch.Session
	id, name string
	stats    tunnelStats
	lastUp   uint64
	lastDown uint64
}

func (tp *tunnelPeer) send(b []byte) {
	if err := tp.s.SendDatagram(b); err != nil {
		tp.stats.dropped.Add(1)
		return
	}
	tp.stats.up.Add(uint64(len(b)))
}

func (tp *tunnelPeer) receive(ctx context.Context, deliver func([]byte)) {
	for {
		b, err := tp.s.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		tp.stats.down.Add(uint64(len(b)))
		deliver(b)
	}
}

// forward runs the host side for one joiner: a UDP socket of its own toward
// the game server, so the server sees one address per player.
func (tp *tunnelPeer) forward(ctx context.Context, target *net.UDPAddr, printer *eventPrinter) {
	local := "127.0.0.1:0"
	if target.IP.To4() == nil {
		local = "[::1]:0"
	}
	if !target.IP.IsLoopback() {
		local = ":0"
	}
	sock, err := net.ListenPacket("udp", local)
	if err != nil {
		printer.print(punch.AgentEvent{Event: "failed", PeerID: tp.id, PeerName: tp.name, Error: "game socket: " + err.Error(), Time: time.Now()})
		tp.s.Close()
		return
	}
	defer sock.Close()
	go func() {
		<-tp.s.Done()
		sock.Close()
	}()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := sock.ReadFrom(buf)
			if err != nil {
				return
			}
			if ua, ok := from.(*net.UDPAddr); ok && ua.Port == target.Port {
				tp.send(buf[:n])
			}
		}
	}()
	tp.receive(ctx, func(b []byte) { sock.WriteTo(b, target) })
}

func (tp *tunnelPeer) snapshot(secs float64) TunnelStatsEvent {
	up, down := tp.stats.up.Load(), tp.stats.down.Load()
	path := tp.s.Path()
	ev := TunnelStatsEvent{Event: "stats", PeerID: tp.id, PeerName: tp.name, Path: &path,
		RTTMS: float64(path.RTT) / float64(time.Millisecond), Dropped: tp.stats.dropped.Load(), Time: time.Now()}
	if secs > 0 {
		ev.UpBps = float64(up-tp.lastUp) / secs
		ev.DownBps = float64(down-tp.lastDown) / secs
	}
	tp.lastUp, tp.lastDown = up, down
	return ev
}

func (p *eventPrinter) printStats(e TunnelStatsEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.asJSON {
		b, _ := json.Marshal(e)
		fmt.Fprintf(p.w, "%s\n", b)
		return
	}
	who := e.PeerName
	if who == "" {
		who = e.PeerID
	}
	fmt.Fprintf(p.w, "%s: %s path, RTT %.1f ms, up %s/s, down %s/s, %d dropped\n", who, e.Path.Kind, e.RTTMS, humanBytes(e.UpBps), humanBytes(e.DownBps), e.Dropped)
}

func humanBytes(b float64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

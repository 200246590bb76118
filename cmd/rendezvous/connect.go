package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rendezvous-p2p/rendezvous/punch"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

type connectFlags struct {
	peerFlags
	peers  int
	lan    bool
	beacon beaconFlags
}

func newConnectCmd() *cobra.Command {
	var f connectFlags
	cmd := &cobra.Command{
		Use:   "connect",
		Short: "Join a room and talk to its peers over direct, encrypted paths",
		Long: `Join a room on a rendezvous server, connect to every peer in it (UDP hole
punching, then an encrypted QUIC session), and pipe stdin/stdout over a
reliable stream: a chat between two terminals.

When no direct path answers, the session runs through the server's TURN
relay (over UDP, else TCP, else TLS) and moves to a direct path when one
answers; a path that stops answering (timestamp echo older than 1.5 s, or
over 30% loss) is left for the next one down, without losing stream data.
Against a symmetric NAT the sides probe for a direct path meanwhile (birthday
probing: up to --probes packets to random ports; --probes 0 turns it off).

Events (joined, connecting, connected with the path and RTT, path switches
with their reason, probing results, failed) go to stderr, as text or, with
--json, one JSON object per line. Data goes to stdout.
connect exits when stdin ends and every peer has received all of it (and sent
all of its own), or on Ctrl-C.

With --lan no server is used: players on the same local network find each
other through the LAN beacon (room code, peer port and public key; signed
when a LAN key is set) and connect directly.`,
		Example: `  rendezvous connect --server http://rv.example.com:8080 --create --name alice
  rendezvous connect --server http://rv.example.com:8080 --room K7QX2M --name bob
  echo hello | rendezvous connect --server http://127.0.0.1:8080 --room K7QX2M --json
  rendezvous connect --lan --create --name alice      # no server: the local network only`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case f.lan && f.server != "":
				return errors.New("--lan uses no server: give either --lan or --server")
			case !f.lan && f.server == "":
				return errors.New("--server is required (the rendezvous server's URL, e.g. http://rv.example.com:8080), or --lan to find players on the local network")
			}
			if (f.room == "") == !f.create {
				return errors.New("give either --room CODE to join a room or --create to make one")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if f.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, f.timeout)
				defer cancel()
			}
			return runConnect(ctx, f, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	f.peerFlags.register(fl, "listen", ":0")
	fl.IntVar(&f.peers, "peers", 1, "wait for this many peers before stdin's end may finish the run")
	fl.DurationVar(&f.timeout, "timeout", 0, "give up after this long (0: no limit)")
	fl.BoolVar(&f.lan, "lan", false, "no server: find the room's players on the local network (LAN beacon) and connect directly")
	f.beacon.register(fl)
	return cmd
}

// sessionSource is where connect's sessions come from: the signaling agent,
// or the LAN beacon with --lan.
type sessionSource interface {
	Events() <-chan punch.AgentEvent
	Sessions() <-chan punch.PeerSession
}

// openSessions starts the session source: signaling (create or join the
// room) or, with --lan, the LAN beacon.
func openSessions(ctx context.Context, f connectFlags) (*punch.Endpoint, sessionSource, func(), error) {
	if f.lan {
		cfg, err := f.beacon.config()
		if err != nil {
			return nil, nil, nil, err
		}
		ep, err := f.openEndpoint()
		if err != nil {
			return nil, nil, nil, err
		}
		code := f.room
		if f.create {
			code = newLANCode()
		}
		lan, err := startLAN(ctx, ep, cfg, f.name, code)
		if err != nil {
			ep.Close()
			return nil, nil, nil, err
		}
		return ep, lan, func() {}, nil
	}
	ep, agent, err := f.start(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	closeAll := func() { agent.Close(); ep.Close() }
	if f.create {
		_, err = agent.CreateRoom(ctx, client.CreateRoom{Name: f.name + "'s room", Capacity: 8})
	} else {
		_, err = agent.Join(ctx, f.room)
	}
	if err != nil {
		closeAll()
		return nil, nil, nil, err
	}
	return ep, agent, func() { agent.Close() }, nil
}

func defaultName() string {
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "player"
}

// eventPrinter writes agent events to w as text or JSON lines.
type eventPrinter struct {
	mu     sync.Mutex
	w      io.Writer
	asJSON bool
	server string
}

func (p *eventPrinter) print(e punch.AgentEvent) {
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
	switch e.Event {
	case "registered":
		fmt.Fprintf(p.w, "registered as %s\n", e.PeerID)
	case "reflexive":
		fmt.Fprintf(p.w, "public address (seen by the server): %s, NAT mapping: %s\n", e.Addr, e.NAT)
	case "room":
		if p.server == "" {
			fmt.Fprintf(p.w, "announcing room %s on the local network — others join with: rendezvous connect --lan --room %s\n", e.Code, e.Code)
			break
		}
		fmt.Fprintf(p.w, "in room %s, code %s — others join with: rendezvous connect --server %s --room %s\n", e.Room, e.Code, p.server, e.Code)
	case "peer_joined":
		fmt.Fprintf(p.w, "%s joined\n", who)
	case "peer_left":
		fmt.Fprintf(p.w, "%s left (%s)\n", who, e.Error)
	case "connecting":
		fmt.Fprintf(p.w, "connecting to %s…\n", who)
	case "connected":
		fmt.Fprintf(p.w, "%s path to %s: %s → %s, RTT %v (after %.0f ms)\n", e.Path.Kind, who, e.Path.Local, e.Path.Remote, e.Path.RTT.Round(100*time.Microsecond), e.TookMS)
	case "path":
		fmt.Fprintf(p.w, "path to %s now %s: %s → %s (%s)\n", who, e.Path.Kind, e.Path.Local, e.Path.Remote, e.Reason)
	case "relay":
		if e.Reason != "" {
			fmt.Fprintf(p.w, "relayed address (%s): %s\n", e.Reason, e.Addr)
			break
		}
		fmt.Fprintf(p.w, "relayed address: %s\n", e.Addr)
	case "probed":
		switch r := e.Probe; {
		case r == nil || r.Probes == 0:
			// Plain punching answered before probing began: nothing to say.
		case r.Found:
			fmt.Fprintf(p.w, "found a direct path to %s through a symmetric NAT (%s, %d %s, %.1f s)\n", who, r.Role, r.Probes, probeUnit(r.Role), e.TookMS/1000)
		default:
			fmt.Fprintf(p.w, "no direct path to %s after %d %s: staying on the relay\n", who, r.Probes, probeUnit(r.Role))
		}
	case "failed":
		fmt.Fprintf(p.w, "could not connect to %s: %s\n", who, e.Error)
	case "done":
		fmt.Fprintf(p.w, "finished with %s\n", who)
	default:
		fmt.Fprintf(p.w, "%s: %s\n", e.Event, e.Error)
	}
}

// probeUnit is what a probing role counts: the prober's probes, the
// opener's sockets.
func probeUnit(role string) string {
	if role == "opener" {
		return "sockets"
	}
	return "probes"
}

func runConnect(ctx context.Context, f connectFlags, stdin io.Reader, stdout, stderr io.Writer) error {
	printer := &eventPrinter{w: stderr, asJSON: f.asJSON, server: f.server}
	ep, sessions, stop, err := openSessions(ctx, f)
	if err != nil {
		return err
	}
	defer ep.Close()
	defer stop()

	// Stdin is read once and fanned out to every session's pipe.
	var (
		mu      sync.Mutex
		pipes   []chan []byte
		backlog [][]byte // kept until --peers sessions exist, so the first peers get everything
		eof     bool
	)
	stdinDone := make(chan struct{})
	go func() {
		defer close(stdinDone)
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				chunk := append([]byte(nil), buf[:n]...)
				mu.Lock()
				if len(pipes) < f.peers {
					backlog = append(backlog, chunk)
				}
				for _, p := range pipes {
					p <- chunk
				}
				mu.Unlock()
			}
			if err != nil {
				mu.Lock()
				eof = true
				for _, p := range pipes {
					close(p)
				}
				mu.Unlock()
				return
			}
		}
	}()
	var outMu sync.Mutex
	out := writerFunc(func(b []byte) (int, error) {
		outMu.Lock()
		defer outMu.Unlock()
		return stdout.Write(b)
	})

	var (
		wg        sync.WaitGroup
		started   int
		pipeErrs  = make(chan error, 64)
		allPeers  = make(chan struct{})
		peersOnce sync.Once
	)
	if f.peers <= 0 {
		peersOnce.Do(func() { close(allPeers) })
	}
	for {
		select {
		case e := <-sessions.Events():
			printer.print(e)
		case ps := <-sessions.Sessions():
			in := make(chan []byte, 1024)
			mu.Lock()
			for _, chunk := range backlog {
				in <- chunk
			}
			if eof {
				close(in)
			} else {
				pipes = append(pipes, in)
			}
			started++
			if started >= f.peers {
				backlog = nil
				peersOnce.Do(func() { close(allPeers) })
			}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := punch.Pipe(ctx, ps.Session, in, out, 5*time.Second)
				if err != nil {
					printer.print(punch.AgentEvent{Event: "failed", PeerID: ps.PeerID, PeerName: ps.PeerName, Error: err.Error(), Time: time.Now()})
					pipeErrs <- err
					return
				}
				printer.print(punch.AgentEvent{Event: "done", PeerID: ps.PeerID, PeerName: ps.PeerName, Time: time.Now()})
			}()
		case <-allPeers:
			allPeers = nil // fire once
			go func() {
				<-stdinDone
				wg.Wait()
				pipeErrs <- nil
			}()
		case err := <-pipeErrs:
			drain(sessions, printer)
			return err
		case <-ctx.Done():
			drain(sessions, printer)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("gave up after --timeout %v", f.timeout)
			}
			return nil
		}
	}
}

// udpNetwork keeps a socket to the family its listen address names:
// "0.0.0.0:0" means IPv4 only, "[::]:0" IPv6 only, ":0" both.
func udpNetwork(listen string) string {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		return "udp"
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Is4() {
			return "udp4"
		}
		return "udp6"
	}
	return "udp"
}

// parseHostAddrs reads --host-addrs: nil for auto, empty for none.
func parseHostAddrs(s string) ([]netip.Addr, error) {
	switch s {
	case "auto", "":
		return nil, nil
	case "none":
		return []netip.Addr{}, nil
	}
	var out []netip.Addr
	for _, part := range strings.Split(s, ",") {
		ip, err := netip.ParseAddr(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("--host-addrs: %q is not an IP address (or use auto / none)", part)
		}
		out = append(out, ip)
	}
	return out, nil
}

// relayOptions reads --relay-ca.
func relayOptions(caFile string) (punch.RelayOptions, error) {
	var o punch.RelayOptions
	if caFile == "" {
		return o, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return o, fmt.Errorf("--relay-ca: %w", err)
	}
	o.RootCAs = x509.NewCertPool()
	if !o.RootCAs.AppendCertsFromPEM(pem) {
		return o, fmt.Errorf("--relay-ca: %s holds no PEM certificate", caFile)
	}
	return o, nil
}

// drain prints events still queued.
func drain(a sessionSource, p *eventPrinter) {
	for {
		select {
		case e := <-a.Events():
			p.print(e)
		default:
			return
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/rendezvous-p2p/rendezvous/punch"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// peerFlags are what connect and tunnel share: the server and room, and how
// this peer's socket, candidates and relays are set up.
type peerFlags struct {
	server, room, name, token, stun, socket, hostAddrs, relayCA, nat string
	create, asJSON, allIfaces, noRelay                               bool
	timeout                                                          time.Duration
	birthday                                                         punch.BirthdayConfig
}

// register adds the shared flags; socketFlag names the peer socket's flag
// (tunnel's --listen is the game's side, so its peer socket is --peer-listen).
func (f *peerFlags) register(fl *pflag.FlagSet, socketFlag, socketDefault string) {
	fl.StringVar(&f.server, "server", "", "rendezvous server URL (http(s)://host:port)")
	fl.StringVar(&f.room, "room", "", "join the room with this code")
	fl.BoolVar(&f.create, "create", false, "create a room and print its code")
	fl.StringVar(&f.name, "name", defaultName(), "your display name")
	fl.StringVar(&f.token, "token", os.Getenv("RENDEZVOUS_TOKEN"), "API key or join token (default $RENDEZVOUS_TOKEN)")
	fl.StringVar(&f.stun, "stun", "", "STUN server host:port (default: from the server's ICE servers)")
	fl.StringVar(&f.socket, socketFlag, socketDefault, "local UDP address of the peer socket (\"0.0.0.0:0\": IPv4 only, \"[::]:0\": IPv6 only)")
	fl.StringVar(&f.hostAddrs, "host-addrs", "auto", "host candidates to offer: auto (this machine's interfaces), none, or a comma-separated list of IPs")
	fl.BoolVar(&f.asJSON, "json", false, "print events as JSON lines on stderr")
	fl.BoolVar(&f.allIfaces, "all-interfaces", false, "also offer addresses of container/VM interfaces")
	fl.StringVar(&f.relayCA, "relay-ca", "", "PEM file of the CA (or self-signed certificate) that signs the relay's TLS certificate, for turns: (default: the system's CAs)")
	fl.BoolVar(&f.noRelay, "no-relay", false, "never relay: direct paths only")
	fl.StringVar(&f.nat, "nat", "", "your NAT's mapping type, when you know it better than the automatic test (from `rendezvous natcheck`): endpoint-independent, address-dependent, address-port-dependent, open")
	def := punch.DefaultBirthday()
	fl.IntVar(&f.birthday.Probes, "probes", def.Probes, "most probes sent to reach a peer behind a symmetric NAT directly (birthday probing; 0 turns it off: some networks treat it as a port scan)")
	fl.Float64Var(&f.birthday.Rate, "probe-rate", def.Rate, "probes per second")
	fl.IntVar(&f.birthday.Sockets, "probe-sockets", def.Sockets, "sockets opened when this side is the one behind the symmetric NAT")
	f.birthday.After = def.After
}

// openEndpoint opens the peer socket with a fresh identity.
func (f *peerFlags) openEndpoint() (*punch.Endpoint, error) {
	conn, err := net.ListenPacket(udpNetwork(f.socket), f.socket)
	if err != nil {
		return nil, fmt.Errorf("opening the peer socket: %w", err)
	}
	id, err := punch.NewIdentity()
	if err != nil {
		conn.Close()
		return nil, err
	}
	cfg := punch.DefaultConfig()
	cfg.Birthday = f.birthday
	ep, err := punch.NewEndpoint(conn, id, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return ep, nil
}

// start opens the peer endpoint and registers with the signaling server.
// The caller closes both.
func (f *peerFlags) start(ctx context.Context) (*punch.Endpoint, *punch.Agent, error) {
	hostAddrs, err := parseHostAddrs(f.hostAddrs)
	if err != nil {
		return nil, nil, err
	}
	relayOpts, err := relayOptions(f.relayCA)
	if err != nil {
		return nil, nil, err
	}
	var nat punch.NATType
	if f.nat != "" {
		if nat, err = punch.ParseNATType(f.nat); err != nil {
			return nil, nil, fmt.Errorf("--nat: %w", err)
		}
	}
	ep, err := f.openEndpoint()
	if err != nil {
		return nil, nil, err
	}
	agent, err := punch.StartAgent(ctx, ep, punch.AgentConfig{
		Signaling:      client.Config{URL: f.server, Token: f.token, Register: client.Register{Name: f.name}},
		STUNServer:     f.stun,
		IncludeVirtual: f.allIfaces,
		HostAddrs:      hostAddrs,
		NoRelay:        f.noRelay,
		NAT:            nat,
		Relay:          relayOpts,
	})
	if err != nil {
		ep.Close()
		return nil, nil, fmt.Errorf("signaling: %w", err)
	}
	return ep, agent, nil
}

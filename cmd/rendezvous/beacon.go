package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/rendezvous-p2p/rendezvous/internal/logx"
	"github.com/rendezvous-p2p/rendezvous/lanbeacon"
)

// beaconFlags are the LAN beacon settings both subcommands share.
type beaconFlags struct {
	cfg        lanbeacon.Config
	keyFile    string
	interfaces []string
	noDirected bool
}

func (f *beaconFlags) register(fs *pflag.FlagSet) {
	f.cfg = lanbeacon.DefaultConfig()
	fs.IntVar(&f.cfg.Port, "beacon-port", f.cfg.Port, "UDP port beacons use")
	fs.StringVar(&f.cfg.Broadcast, "broadcast", f.cfg.Broadcast, "limited-broadcast address to announce to (empty: none)")
	fs.BoolVar(&f.noDirected, "no-directed-broadcast", false, "do not announce to each interface's directed broadcast")
	fs.StringVar(&f.cfg.Group6, "ipv6-group", f.cfg.Group6, "IPv6 link-local multicast group (empty: none)")
	fs.StringSliceVar(&f.interfaces, "interface", nil, "only these interfaces (repeatable; default: every up interface)")
	fs.DurationVar(&f.cfg.Interval, "interval", f.cfg.Interval, "announce interval")
	fs.StringVar(&f.keyFile, "lan-key-file", "", "file holding the shared LAN key that signs beacons (or set RENDEZVOUS_LAN_KEY)")
}

// config applies the flags; the key comes from a file or the environment,
// never the command line, where `ps` would show it.
func (f *beaconFlags) config() (lanbeacon.Config, error) {
	cfg := f.cfg
	cfg.DirectedBroadcast = !f.noDirected
	cfg.Interfaces = f.interfaces
	cfg.LANKey = os.Getenv("RENDEZVOUS_LAN_KEY")
	if f.keyFile != "" {
		b, err := os.ReadFile(f.keyFile)
		if err != nil {
			return cfg, fmt.Errorf("--lan-key-file: %w", err)
		}
		cfg.LANKey = strings.TrimSpace(string(b))
	}
	return cfg, cfg.Validate()
}

func newBeaconCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "beacon",
		Short: "Find players on your local network with no server (LAN beacon)",
		Long: `Announce a game on the local network, or list the games announced there.
Beacons go to 255.255.255.255:9999, each interface's directed broadcast and an
IPv6 link-local multicast group. With a shared LAN key (--lan-key-file or
RENDEZVOUS_LAN_KEY) beacons are signed and forged or replayed ones rejected.`,
		Example: "  rendezvous beacon announce --app mygame --name \"Alice's server\" --room K7QX2M --port udp/7777\n  rendezvous beacon listen",
	}
	cmd.AddCommand(newBeaconAnnounceCmd(), newBeaconListenCmd())
	return cmd
}

func newBeaconAnnounceCmd() *cobra.Command {
	var (
		f           beaconFlags
		ann         lanbeacon.Announcement
		ports, meta []string
		fingerprint string
	)
	cmd := &cobra.Command{
		Use:   "announce",
		Short: "Announce a game on the local network until interrupted",
		Example: `  rendezvous beacon announce --app mygame --name "Alice's server" --room K7QX2M --port udp/7777
  RENDEZVOUS_LAN_KEY=party2026 rendezvous beacon announce --name Alice --meta map=dust2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			for _, p := range ports {
				var port lanbeacon.Port
				if err := port.UnmarshalText([]byte(p)); err != nil {
					return fmt.Errorf("--port %q: %w", p, err)
				}
				ann.Ports = append(ann.Ports, port)
			}
			if len(meta) > 0 {
				ann.Meta = map[string]string{}
				for _, kv := range meta {
					k, v, ok := strings.Cut(kv, "=")
					if !ok {
						return fmt.Errorf("--meta %q: want key=value", kv)
					}
					ann.Meta[k] = v
				}
			}
			if fingerprint != "" {
				if err := ann.Fingerprint.UnmarshalText([]byte(fingerprint)); err != nil {
					return fmt.Errorf("--fingerprint: %w", err)
				}
			}
			if err := ann.Validate(); err != nil {
				return err
			}
			log := logx.New(logx.Config{Level: "info", Format: "auto"}, cmd.ErrOrStderr(), new(slog.LevelVar))
			a, err := lanbeacon.NewAnnouncer(cfg, ann, lanbeacon.Options{Logger: log})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			select {
			case <-a.Ready():
				signed := "unsigned"
				if cfg.LANKey != "" {
					signed = "signed with the LAN key"
				}
				log.Info("announcing; Ctrl-C sends a goodbye and stops", "name", ann.Name, "room", ann.Room, "every", cfg.Interval.String(), "beacons", signed)
			case err := <-done:
				return err
			}
			tick := time.NewTicker(time.Minute)
			defer tick.Stop()
			for {
				select {
				case err := <-done:
					return err
				case <-tick.C:
					log.Info("beacon stats", "stats", fmt.Sprintf("%+v", a.Stats()))
				}
			}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&ann.App, "app", "rendezvous", "game or application id; listeners filter on it")
	fl.StringVar(&ann.Name, "name", defaultName(), "display name")
	fl.StringVar(&ann.Room, "room", "", "room name or join code")
	fl.StringArrayVar(&ports, "port", nil, "service port, udp/N or tcp/N (repeatable)")
	fl.StringArrayVar(&meta, "meta", nil, "metadata key=value (repeatable)")
	fl.StringVar(&fingerprint, "fingerprint", "", "your public key fingerprint, hex")
	f.register(fl)
	return cmd
}

func newBeaconListenCmd() *cobra.Command {
	var (
		f      beaconFlags
		app    string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "listen",
		Short: "List the games announced on the local network, live",
		Long: `Listen for LAN beacons and show a live table (name, address, game, room, age,
whether the beacon was signed with the LAN key). With --json, print one JSON
event per line instead (found, updated, gone, expired).`,
		Example: "  rendezvous beacon listen\n  rendezvous beacon listen --app mygame --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			l, err := lanbeacon.NewListener(cfg, lanbeacon.Options{Logger: slog.New(slog.DiscardHandler), App: app})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			events, cancel := l.Subscribe(256)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- l.Run(ctx) }()
			out := cmd.OutOrStdout()
			live := !asJSON && isTerminal(out)
			redraw := func() {
				if live {
					fmt.Fprint(out, "\x1b[H\x1b[2J") // home, clear screen
					fmt.Fprintf(out, "LAN games on port %d (Ctrl-C to stop)\n\n", cfg.Port)
				}
				table := l.Table()
				lanbeacon.WriteTable(out, table, time.Now())
				if live && len(table) == 0 {
					fmt.Fprintln(out, "\n(no games heard yet: announcers must be on this network, not behind another router)")
				}
				if !live {
					fmt.Fprintln(out)
				}
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			if !live {
				tick.Stop() // redraw only on change when not on a terminal
			}
			enc := json.NewEncoder(out)
			for {
				select {
				case err := <-done:
					return err
				case ev, ok := <-events:
					if !ok {
						return <-done
					}
					if asJSON {
						if err := enc.Encode(ev); err != nil {
							return err
						}
						continue
					}
					redraw()
				case <-tick.C:
					redraw()
				}
			}
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "only this game or application id")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print events as JSON lines")
	f.register(cmd.Flags())
	return cmd
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

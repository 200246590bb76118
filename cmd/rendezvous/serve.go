package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/rendezvous-p2p/rendezvous/internal/app"
	"github.com/rendezvous-p2p/rendezvous/internal/config"
	"github.com/rendezvous-p2p/rendezvous/internal/logx"
)

// serveFlags are the command-line overrides of the config file. Only flags
// the user set are applied, so the file's values stand otherwise.
type serveFlags struct {
	configPath  string
	printConfig bool
	check       bool

	stateDir        string
	httpListen      string
	relayListen     string
	publicHost      string
	logLevel        string
	logFormat       string
	shutdownTimeout time.Duration
}

func (f *serveFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.configPath, "config", "c", "", "config file (default: ./rendezvous.yaml, then /etc/rendezvous/rendezvous.yaml, else built-in defaults)")
	fs.BoolVar(&f.printConfig, "print-config", false, "print the effective configuration as YAML and exit")
	fs.BoolVar(&f.check, "check", false, "validate the configuration and that every listener can bind, then exit")
	fs.StringVar(&f.stateDir, "state-dir", "", "directory for generated secrets (default $STATE_DIRECTORY, else the XDG state dir)")
	fs.StringVar(&f.httpListen, "http-listen", "", "HTTP listen address for signaling, /healthz and /metrics (default \":8080\")")
	fs.StringVar(&f.relayListen, "relay-listen", "", "STUN/TURN listen address, UDP and TCP (default \":3478\")")
	fs.StringVar(&f.publicHost, "public-host", "", "host name or IP clients reach this server at, for the STUN/TURN URLs handed to peers")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fs.StringVar(&f.logFormat, "log-format", "", "auto (text on a terminal, else JSON), text or json")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 0, "how long SIGINT/SIGTERM wait for connections to drain (default 10s)")
}

// apply overlays the flags the user set on cfg.
func (f *serveFlags) apply(fs *pflag.FlagSet, cfg *config.Config) {
	set := func(name string, fn func()) {
		if fs.Changed(name) {
			fn()
		}
	}
	set("state-dir", func() { cfg.StateDir = f.stateDir })
	set("http-listen", func() { cfg.HTTP.Listen = f.httpListen })
	set("relay-listen", func() { cfg.Relay.Listen = f.relayListen })
	set("public-host", func() { cfg.PublicHost = f.publicHost })
	set("log-level", func() { cfg.Log.Level = f.logLevel })
	set("log-format", func() { cfg.Log.Format = f.logFormat })
	set("shutdown-timeout", func() { cfg.ShutdownTimeout = f.shutdownTimeout })
}

// load reads the config file (found once, at start) and applies the flags.
func (f *serveFlags) load(fs *pflag.FlagSet, path string) (config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return config.Config{}, err
	}
	f.apply(fs, &cfg)
	if err := cfg.Validate(); err != nil {
		where := "configuration"
		if path != "" {
			where = path
		}
		return config.Config{}, fmt.Errorf("%s: %w", where, err)
	}
	return cfg, nil
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the signaling server and TURN/STUN relay",
		Long: `Run the rendezvous server. With no config file it runs everything on safe
built-in defaults: HTTP (signaling, /healthz, /readyz, /metrics) on :8080 and
STUN/TURN on :3478 (UDP and TCP), relaying on UDP ports 49152-65535.
Secrets are generated once and kept in the state directory.

Signals: SIGINT/SIGTERM drain and exit 0; SIGHUP reloads the config file
(a bad config is refused and the old one keeps running).`,
		Example: `  rendezvous serve
  rendezvous serve --config ./rendezvous.yaml --log-format json
  rendezvous serve --print-config > rendezvous.yaml
  rendezvous serve --config /etc/rendezvous/rendezvous.yaml --check`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			path, err := config.Find(f.configPath)
			if err != nil {
				return err
			}
			cfg, err := f.load(fs, path)
			if err != nil {
				return err
			}
			if f.printConfig {
				out, err := config.Marshal(cfg)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			level := new(slog.LevelVar)
			logger := logx.New(cfg.Log, cmd.ErrOrStderr(), level)
			a, err := app.New(cfg, app.Options{
				Logger: logger,
				Level:  level,
				Load:   func() (config.Config, error) { return f.load(fs, path) },
			})
			if err != nil {
				return err
			}
			if path != "" {
				logger.Info("configuration loaded", "file", path)
			} else {
				logger.Info("no config file found; running on built-in defaults", "searched", config.SearchPaths())
			}
			if f.check {
				if err := a.Check(cmd.Context()); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "configuration OK; every listener can bind")
				return nil
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						_ = a.Reload() // logged by the app; the old config keeps running on error
					}
				}
			}()
			return a.Run(ctx)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

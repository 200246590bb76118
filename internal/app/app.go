// Package app runs every service of `rendezvous serve` together: one metrics
// registry, one readiness, systemd notifications, reload and bounded drain.
//
// Lifecycle (each service: Config → Validate → New → Run(ctx)):
//
//	New     validate the whole config, open the state directory, build services (no I/O)
//	Run     start all; READY=1 once every listener is bound; WATCHDOG=1 at half
//	        WATCHDOG_USEC; the first service to fail stops all; ctx end → STOPPING=1,
//	        drain within shutdown-timeout
//	Reload  RELOADING=1, re-read the config, apply all or nothing, READY=1
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"

	"github.com/rendezvous-p2p/rendezvous/internal/buildinfo"
	"github.com/rendezvous-p2p/rendezvous/internal/certs"
	"github.com/rendezvous-p2p/rendezvous/internal/config"
	"github.com/rendezvous-p2p/rendezvous/internal/httpserver"
	"github.com/rendezvous-p2p/rendezvous/internal/logx"
	"github.com/rendezvous-p2p/rendezvous/internal/netx"
	"github.com/rendezvous-p2p/rendezvous/internal/service"
	"github.com/rendezvous-p2p/rendezvous/internal/state"
	"github.com/rendezvous-p2p/rendezvous/relay"
	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
	"github.com/rendezvous-p2p/rendezvous/signaling/natsstore"
)

// Options are the app's collaborators; all are optional.
type Options struct {
	Logger *slog.Logger
	// Level is the logger's level; a reload changes it.
	Level *slog.LevelVar
	// Network opens every listener (tests: loopback port 0 or a namespace).
	Network netx.Network
	// Load re-reads the configuration for Reload. Nil: Reload is refused.
	Load func() (config.Config, error)
	// Notify sends a systemd notification; nil uses $NOTIFY_SOCKET.
	Notify func(state string)
}

// App is a running `rendezvous serve`.
type App struct {
	opts     Options
	log      *slog.Logger
	registry *prometheus.Registry
	state    *state.Dir
	http     *httpserver.Server
	services []service.Service

	reloadMu sync.Mutex // one reload at a time
	cfgMu    sync.RWMutex
	cfg      config.Config

	ready    chan struct{}
	stopping atomic.Bool
	reloads  *prometheus.CounterVec

	certs     *certs.Source // nil without TLS
	relay     *relay.Server
	signaling *signaling.Server
	// effective service configs: the file's, with generated secrets filled in
	relayCfg     relay.Config
	signalingCfg signaling.Config
	ice          atomic.Pointer[func(user string) ([]client.ICEServer, error)]
	closeStore   func() error // shared state (state: nats), closed after the services stop
}

// New validates cfg and builds every service; it binds nothing.
func New(cfg config.Config, opts Options) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Level == nil {
		opts.Level = new(slog.LevelVar)
	}
	if opts.Notify == nil {
		opts.Notify = func(state string) { _, _ = daemon.SdNotify(false, state) }
	}
	st, err := state.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &App{opts: opts, log: opts.Logger, cfg: cfg, state: st, ready: make(chan struct{}), registry: prometheus.NewRegistry()}
	a.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	bi := buildinfo.Get()
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "rendezvous_build_info",
		Help:        "Build of the running rendezvous binary (always 1).",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion},
	})
	buildInfo.Set(1)
	a.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rendezvous_config_reloads_total",
		Help: "Configuration reloads (SIGHUP) by result: applied, or refused (the old config kept running).",
	}, []string{"result"})
	a.registry.MustRegister(buildInfo, a.reloads)

	if a.relayCfg, a.signalingCfg, err = Effective(cfg, a.state); err != nil {
		return nil, err
	}
	a.setICEServers(cfg, a.relayCfg)
	var store signaling.Store // nil: in memory
	if cfg.State == "nats" {
		// Connecting and creating the buckets is I/O, but a node without its
		// shared state cannot serve: fail here, with the reason, before binding.
		ctx, cancel := context.WithTimeout(context.Background(), cfg.NATS.OpTimeout)
		st, err := natsstore.New(ctx, cfg.NATS, natsstore.Options{Logger: a.serviceLogger("nats"), Registerer: a.registry})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("state: nats: %w", err)
		}
		store, a.closeStore = st, st.Close
	}
	a.signaling, err = signaling.New(a.signalingCfg, signaling.Options{
		Logger:     a.serviceLogger("signaling"),
		Registerer: a.registry,
		ICEServers: a.ICEServers,
		Store:      store,
	})
	if err != nil {
		return nil, fmt.Errorf("signaling: %w", err)
	}
	a.relay, err = relay.New(a.relayCfg, relay.Options{
		Logger:      a.serviceLogger("relay"),
		Registerer:  a.registry,
		Network:     opts.Network,
		OnPeerToken: a.signaling.ObservePeerToken,
	})
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	var tlsConfig *tls.Config
	if cfg.TLS.Enabled() {
		a.certs, err = certs.New(cfg.TLS, certs.Options{Logger: a.serviceLogger("tls"), Registerer: a.registry, StateDir: st.Path()})
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		tlsConfig = a.certs.TLSConfig()
	}
	a.http, err = httpserver.New(cfg.HTTP, httpserver.Options{
		Logger:       a.serviceLogger("http"),
		Gatherer:     a.registry,
		Network:      opts.Network,
		Readiness:    a.readiness,
		DrainTimeout: drainTimeout(cfg.ShutdownTimeout),
		Handlers:     map[string]http.Handler{"/v1/": a.signaling.Handler()},
		TLSConfig:    tlsConfig,
	})
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	a.services = append(a.services, a.http, a.signaling, a.relay)
	if a.certs != nil {
		a.services = append(a.services, a.certs) // ACME issuance and renewal
	}
	return a, nil
}

// Effective fills in the secrets the config leaves empty with ones generated
// once and kept in the state directory, so credentials survive restarts.
func Effective(cfg config.Config, st state.Secrets) (relay.Config, signaling.Config, error) {
	r, s := cfg.Relay, cfg.Signaling
	if r.CertFile == "" && cfg.TLS.CertFile != "" {
		// One certificate for HTTPS and TURN over TLS unless the relay has its own.
		r.CertFile, r.KeyFile = cfg.TLS.CertFile, cfg.TLS.KeyFile
	}
	if len(r.AuthSecrets) == 0 {
		secret, err := st.Secret("turn-secret")
		if err != nil {
			return r, s, err
		}
		r.AuthSecrets = []string{secret}
	}
	if len(s.JoinTokenSecrets) == 0 {
		secret, err := st.Secret("join-token-secret")
		if err != nil {
			return r, s, err
		}
		s.JoinTokenSecrets = []string{secret}
	}
	return r, s, nil
}

// setICEServers points the ICE servers handed to peers at this relay, with
// credentials minted from its first REST secret.
func (a *App) setICEServers(cfg config.Config, r relay.Config) {
	host := PublicHost(cfg)
	f := func(user string) ([]client.ICEServer, error) {
		if _, port, _ := net.SplitHostPort(r.Listen); port == "0" {
			// Listening on a port picked at bind time (tests): advertise that one.
			if bound := a.relay.Addr(); bound.IsValid() {
				r.Listen = bound.String()
			}
		}
		return signaling.TURNServers(r.ICEServerURLs(host), []byte(r.AuthSecrets[0]), cfg.Signaling.TURNCredentialTTL)(user)
	}
	a.ice.Store(&f)
}

// ICEServers returns STUN/TURN servers with fresh credentials for user: what
// peers get from signaling, and what `rendezvous creds` prints.
func (a *App) ICEServers(user string) ([]client.ICEServer, error) { return (*a.ice.Load())(user) }

// PublicHost is the host clients reach this server at: public-host, else
// relay.public-address, else the first global unicast IPv4 of this machine,
// else 127.0.0.1.
func PublicHost(cfg config.Config) string {
	if cfg.PublicHost != "" {
		return cfg.PublicHost
	}
	if cfg.Relay.PublicAddress != "" {
		return cfg.Relay.PublicAddress
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, ad := range addrs {
			if p, err := netip.ParsePrefix(ad.String()); err == nil && p.Addr().Is4() && p.Addr().IsGlobalUnicast() {
				return p.Addr().String()
			}
		}
	}
	return "127.0.0.1"
}

func (a *App) serviceLogger(name string) *slog.Logger { return a.log.With("service", name) }

// drainTimeout leaves the supervisor a margin to collect every service after
// they drained, so the whole stop fits in shutdown-timeout.
func drainTimeout(shutdown time.Duration) time.Duration {
	if shutdown > 2*time.Second {
		return shutdown - time.Second
	}
	return shutdown / 2
}

// Registry is the app's private metrics registry.
func (a *App) Registry() *prometheus.Registry { return a.registry }

// StateDir is the opened state directory.
func (a *App) StateDir() string { return a.state.Path() }

// HTTPAddr is the bound HTTP address (nil before Ready).
func (a *App) HTTPAddr() net.Addr { return a.http.Addr() }

// Ready is closed once every service has bound its listeners.
func (a *App) Ready() <-chan struct{} { return a.ready }

// Config is the configuration in force.
func (a *App) Config() config.Config {
	a.cfgMu.RLock()
	defer a.cfgMu.RUnlock()
	return a.cfg
}

func (a *App) readiness() error {
	if a.stopping.Load() {
		return errors.New("shutting down")
	}
	var waiting []string
	for _, s := range a.services {
		select {
		case <-s.Ready():
		default:
			waiting = append(waiting, s.Name())
		}
	}
	if len(waiting) > 0 {
		return fmt.Errorf("starting: %s", strings.Join(waiting, ", "))
	}
	return nil
}

type exit struct {
	name string
	err  error
}

// Run runs every service until ctx ends or one fails, then stops them all
// within shutdown-timeout. It returns nil on a clean stop.
func (a *App) Run(ctx context.Context) error {
	runCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServices()
	exits := make(chan exit, len(a.services))
	for _, s := range a.services {
		go func() { exits <- exit{s.Name(), s.Run(runCtx)} }()
	}
	running := len(a.services)

	allReady := make(chan struct{})
	go func() {
		for _, s := range a.services {
			select {
			case <-s.Ready():
			case <-runCtx.Done():
				return
			}
		}
		close(allReady)
	}()

	var failure error
	fail := func(e exit) {
		running--
		if failure != nil {
			return
		}
		if e.err == nil {
			e.err = errors.New("stopped unexpectedly")
		}
		failure = fmt.Errorf("%s: %w", e.name, e.err)
	}
	select {
	case <-allReady:
		close(a.ready)
		a.log.Info("rendezvous ready", "http", a.HTTPAddr().String(), "relay", a.relay.Addr().String(), "state_dir", a.state.Path())
		a.opts.Notify(daemon.SdNotifyReady)
		go a.watchdog(runCtx)
		select {
		case <-ctx.Done():
		case e := <-exits:
			fail(e)
		}
	case e := <-exits:
		fail(e)
	case <-ctx.Done():
	}

	a.stopping.Store(true)
	a.opts.Notify(daemon.SdNotifyStopping)
	if failure != nil {
		a.log.Error("stopping all services", "cause", failure)
	} else {
		a.log.Info("shutting down", "drain_timeout", a.Config().ShutdownTimeout.String())
	}
	stopServices()
	if a.closeStore != nil {
		defer a.closeStore()
	}
	bound := time.NewTimer(a.Config().ShutdownTimeout)
	defer bound.Stop()
	for running > 0 {
		select {
		case e := <-exits:
			running--
			if e.err != nil && failure == nil {
				failure = fmt.Errorf("%s: %w", e.name, e.err)
			}
		case <-bound.C:
			return errors.Join(failure, fmt.Errorf("%d service(s) did not stop within shutdown-timeout %v", running, a.Config().ShutdownTimeout))
		}
	}
	if failure == nil {
		a.log.Info("stopped cleanly")
	}
	return failure
}

// Check binds every listener, then stops: `rendezvous serve --check`.
func (a *App) Check(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.opts.Notify = func(string) {}
	go func() {
		select {
		case <-a.ready:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := a.Run(ctx); err != nil {
		return err
	}
	select {
	case <-a.ready:
		return nil
	default:
		return errors.New("check interrupted before every listener was bound")
	}
}

// watchdog pings systemd at half WATCHDOG_USEC while the services run.
func (a *App) watchdog(ctx context.Context) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.opts.Notify(daemon.SdNotifyWatchdog)
		}
	}
}

// Reload re-reads the configuration and applies it. A config that does not
// load, does not validate, or changes something that needs a restart is
// refused, and the old one keeps running.
func (a *App) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	a.opts.Notify(reloadingState())
	defer a.opts.Notify(daemon.SdNotifyReady)
	err := a.reload()
	if err != nil {
		a.reloads.WithLabelValues("refused").Inc()
		a.log.Error("reload refused; the old configuration keeps running", "error", err)
		return err
	}
	a.reloads.WithLabelValues("applied").Inc()
	a.log.Info("configuration reloaded")
	return nil
}

func (a *App) reload() error {
	if a.opts.Load == nil {
		return errors.New("no configuration source to reload from")
	}
	next, err := a.opts.Load()
	if err != nil {
		return err
	}
	if err := next.Validate(); err != nil {
		return err
	}
	cur := a.Config()
	var restart []string
	if next.StateDir != cur.StateDir {
		restart = append(restart, "state-dir")
	}
	if next.HTTP != cur.HTTP {
		restart = append(restart, "http")
	}
	if !reflect.DeepEqual(next.TLS, cur.TLS) {
		restart = append(restart, "tls")
	}
	if next.State != cur.State || !reflect.DeepEqual(next.NATS, cur.NATS) {
		restart = append(restart, "state/nats")
	}
	if len(restart) > 0 {
		return fmt.Errorf("changes to %s need a restart (systemctl restart rendezvous)", strings.Join(restart, ", "))
	}
	nextRelay, nextSignaling, err := Effective(next, a.state)
	if err != nil {
		return err
	}
	if a.certs != nil {
		// Re-read the certificate files (or check ACME renewal) now; a bad
		// pair is refused and the old certificate keeps serving.
		if err := a.certs.Reload(); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
	}
	if err := a.relay.Reload(nextRelay); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if err := a.signaling.Reload(nextSignaling); err != nil {
		if rerr := a.relay.Reload(a.relayCfg); rerr != nil { // put the relay back as it was
			a.log.Error("rolling back the relay after a refused reload failed", "error", rerr)
		}
		return fmt.Errorf("signaling: %w", err)
	}
	a.relayCfg, a.signalingCfg = nextRelay, nextSignaling
	a.setICEServers(next, nextRelay)
	// Everything below cannot fail: apply.
	level, _ := logx.ParseLevel(next.Log.Level)
	a.opts.Level.Set(level)
	if next.Log.Format != cur.Log.Format {
		a.log.Warn("log.format changes take effect at the next restart", "format", next.Log.Format)
	}
	a.cfgMu.Lock()
	a.cfg = next
	a.cfgMu.Unlock()
	return nil
}

// reloadingState is RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload requires.
func reloadingState() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return daemon.SdNotifyReloading
	}
	return daemon.SdNotifyReloading + "\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10)
}

// RelayAddr is the bound STUN/TURN address (invalid before Ready).
func (a *App) RelayAddr() netip.AddrPort { return a.relay.Addr() }

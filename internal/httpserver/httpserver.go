// Package httpserver is the HTTP listener of `rendezvous serve`: the signaling
// API mounted by the caller, plus /healthz, /readyz and /metrics, and pprof on a
// separate loopback-only listener when configured.
package httpserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rendezvous-p2p/rendezvous/internal/netx"
)

// Config is the `http` section.
type Config struct {
	Listen            string        `yaml:"listen"`
	ReadHeaderTimeout time.Duration `yaml:"read-header-timeout"`
	ReadTimeout       time.Duration `yaml:"read-timeout"`
	WriteTimeout      time.Duration `yaml:"write-timeout"`
	IdleTimeout       time.Duration `yaml:"idle-timeout"`
	MaxHeaderBytes    int           `yaml:"max-header-bytes"`
	// PprofListen serves net/http/pprof when set; it must be a loopback address.
	PprofListen string `yaml:"pprof-listen"`
}

// DefaultConfig listens on :8080 with timeouts that a slow client cannot abuse.
func DefaultConfig() Config {
	return Config{
		Listen:            ":8080",
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

// Validate names the bad key.
func (c Config) Validate() error {
	var errs []error
	if err := netx.CheckListenAddr(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"read-header-timeout", c.ReadHeaderTimeout}, {"read-timeout", c.ReadTimeout}, {"write-timeout", c.WriteTimeout}, {"idle-timeout", c.IdleTimeout}} {
		if d.v <= 0 || d.v > time.Hour {
			errs = append(errs, fmt.Errorf("%s: %v is out of range (0s, 1h]", d.key, d.v))
		}
	}
	if c.MaxHeaderBytes < 4096 || c.MaxHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("max-header-bytes: %d is out of range [4096, 1048576]", c.MaxHeaderBytes))
	}
	if c.PprofListen != "" {
		if err := netx.CheckListenAddr(c.PprofListen); err != nil {
			errs = append(errs, fmt.Errorf("pprof-listen: %w", err))
		} else if !netx.IsLoopbackListen(c.PprofListen) {
			errs = append(errs, fmt.Errorf("pprof-listen: %q is not a loopback address; pprof exposes memory contents, so only 127.0.0.1, [::1] or localhost are allowed", c.PprofListen))
		}
	}
	return errors.Join(errs...)
}

// Options are the server's collaborators.
type Options struct {
	Logger   *slog.Logger
	Gatherer prometheus.Gatherer // served at /metrics
	Network  netx.Network
	// Readiness reports nil when every service is up; /readyz answers 503 otherwise.
	Readiness func() error
	// Handlers are mounted on the main mux (e.g. "/v1/": the signaling API).
	Handlers map[string]http.Handler
	// DrainTimeout bounds graceful shutdown of in-flight requests.
	DrainTimeout time.Duration
	// TLSConfig, when set, makes the main listener HTTPS (HTTP/2 included).
	TLSConfig *tls.Config
}

// Server serves HTTP until its context ends.
type Server struct {
	cfg   Config
	opts  Options
	ready chan struct{}

	mu    sync.Mutex
	addr  net.Addr
	pprof net.Addr
}

// New builds the server; it binds nothing until Run.
func New(cfg Config, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Gatherer == nil {
		opts.Gatherer = prometheus.NewRegistry()
	}
	if opts.Readiness == nil {
		opts.Readiness = func() error { return nil }
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	return &Server{cfg: cfg, opts: opts, ready: make(chan struct{})}, nil
}

// Name implements service.Service.
func (s *Server) Name() string { return "http" }

// Ready is closed once the listeners are bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the bound address of the main listener (nil before Ready).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// PprofAddr is the bound pprof address, nil when pprof is off or not yet bound.
func (s *Server) PprofAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pprof
}

// Handler is the main mux: /healthz, /readyz, /metrics and the mounted handlers.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.opts.Readiness(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelError),
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	}))
	for pattern, h := range s.opts.Handlers {
		mux.Handle(pattern, h)
	}
	return mux
}

func (s *Server) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelDebug),
	}
}

// Run binds, serves until ctx ends, then drains in-flight requests for up to
// DrainTimeout and closes everything.
func (s *Server) Run(ctx context.Context) error {
	network := netx.Or(s.opts.Network)
	ln, err := network.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return netx.BindError("tcp", s.cfg.Listen, "another web server", err)
	}
	servers := []*http.Server{s.httpServer(s.Handler())}
	listeners := []net.Listener{ln}
	if s.cfg.PprofListen != "" {
		pln, err := network.Listen(ctx, "tcp", s.cfg.PprofListen)
		if err != nil {
			ln.Close()
			return netx.BindError("tcp", s.cfg.PprofListen, "another pprof listener", err)
		}
		servers = append(servers, s.httpServer(pprofMux()))
		listeners = append(listeners, pln)
	}
	s.mu.Lock()
	s.addr = ln.Addr()
	if len(listeners) > 1 {
		s.pprof = listeners[1].Addr()
	}
	s.mu.Unlock()
	s.opts.Logger.Info("http listening", "addr", ln.Addr().String(), "tls", s.opts.TLSConfig != nil)
	if s.pprof != nil {
		s.opts.Logger.Info("pprof listening", "addr", s.pprof.String())
	}
	close(s.ready)

	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() {
			if i == 0 && s.opts.TLSConfig != nil {
				srv.TLSConfig = s.opts.TLSConfig.Clone()
				errc <- srv.ServeTLS(listeners[i], "", "")
				return
			}
			errc <- srv.Serve(listeners[i])
		}()
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.DrainTimeout)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(drainCtx); err != nil {
			srv.Close()
		}
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serving http on %s: %w", s.cfg.Listen, serveErr)
	}
	return nil
}

func pprofMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

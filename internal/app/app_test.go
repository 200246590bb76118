package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/rendezvous-p2p/rendezvous/internal/config"
	"github.com/rendezvous-p2p/rendezvous/internal/sdnotifytest"
)

// testConfig listens on loopback port 0 with state in a temporary directory.
func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Relay.Listen = "127.0.0.1:0"
	cfg.Relay.RelayAddress = "127.0.0.1"
	cfg.Relay.TLSListen = "127.0.0.1:0"
	cfg.PublicHost = "127.0.0.1"
	cfg.ShutdownTimeout = 5 * time.Second
	return cfg
}

type running struct {
	app    *App
	cancel context.CancelFunc
	done   chan error
	base   string
}

// start runs the app and waits until it is ready.
func start(t *testing.T, cfg config.Config, opts Options) *running {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	a, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{app: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-r.done:
		t.Fatalf("app stopped before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("app not ready within 10s")
	}
	r.base = "http://" + a.HTTPAddr().String()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for Cleanup
		return err
	case <-time.After(r.app.Config().ShutdownTimeout + time.Second):
		t.Fatal("app did not stop within the shutdown bound")
		return nil
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServesHealthReadyAndMetrics(t *testing.T) {
	r := start(t, testConfig(t), Options{})
	if code, body := get(t, r.base+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, r.base+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q", code, body)
	}
	resp, err := http.Get(r.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "rendezvous_build_info"} {
		if _, ok := families[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if err := r.stop(t); err != nil {
		t.Errorf("clean stop returned %v", err)
	}
}

func TestNotifiesSystemdThroughTheLifecycle(t *testing.T) {
	sock := sdnotifytest.New(t)
	sock.Setenv(t)
	t.Setenv("WATCHDOG_USEC", "100000") // 100 ms: pings every 50 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	cfg := testConfig(t)
	r := start(t, cfg, Options{Load: func() (config.Config, error) { return cfg, nil }})
	sock.Expect(t, "READY=1", 5*time.Second)
	// Watchdog pings arrive while running.
	for range 2 {
		if got := sock.Next(t, 5*time.Second); got != "WATCHDOG=1" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
	}
	if err := r.app.Reload(); err != nil {
		t.Fatalf("reload of an unchanged config: %v", err)
	}
	sock.Expect(t, "RELOADING=1", 5*time.Second)
	sock.Expect(t, "READY=1", 5*time.Second)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	sock.Expect(t, "STOPPING=1", 5*time.Second)
}

func TestReloadKeepsOldConfigOnBadFile(t *testing.T) {
	cfg := testConfig(t)
	var mu sync.Mutex
	next := func() (config.Config, error) { return cfg, nil }
	load := func() (config.Config, error) {
		mu.Lock()
		defer mu.Unlock()
		return next()
	}
	level := new(slog.LevelVar)
	r := start(t, cfg, Options{Load: load, Level: level})
	setNext := func(f func() (config.Config, error)) {
		mu.Lock()
		next = f
		mu.Unlock()
	}

	// A file that does not parse.
	setNext(func() (config.Config, error) {
		return config.Parse("broken.yaml", []byte("log:\n  levle: debug\n"))
	})
	if err := r.app.Reload(); err == nil || !strings.Contains(err.Error(), "levle") {
		t.Fatalf("reload of a broken file = %v, want an error naming the key", err)
	}
	// A file that parses but does not validate.
	bad := cfg
	bad.Log.Level = "loud"
	setNext(func() (config.Config, error) { return bad, nil })
	if err := r.app.Reload(); err == nil {
		t.Fatal("reload of an invalid config succeeded")
	}
	// A change that needs a restart.
	moved := cfg
	moved.HTTP.Listen = "127.0.0.1:1"
	setNext(func() (config.Config, error) { return moved, nil })
	if err := r.app.Reload(); err == nil || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("reload moving the listener = %v, want refusal naming a restart", err)
	}
	// Still serving, still on the old settings.
	if code, _ := get(t, r.base+"/healthz"); code != 200 {
		t.Fatalf("/healthz after refused reloads = %d", code)
	}
	if level.Level() != slog.LevelInfo || r.app.Config().Log.Level != "info" {
		t.Fatalf("refused reload changed the config: level %v", level.Level())
	}
	// A good change takes effect.
	good := cfg
	good.Log.Level = "debug"
	good.ShutdownTimeout = 7 * time.Second
	setNext(func() (config.Config, error) { return good, nil })
	if err := r.app.Reload(); err != nil {
		t.Fatalf("good reload: %v", err)
	}
	if level.Level() != slog.LevelDebug || r.app.Config().ShutdownTimeout != 7*time.Second {
		t.Fatalf("good reload not applied: level %v, shutdown %v", level.Level(), r.app.Config().ShutdownTimeout)
	}
	_, metrics := get(t, r.base+"/metrics")
	for _, want := range []string{`rendezvous_config_reloads_total{result="refused"} 3`, `rendezvous_config_reloads_total{result="applied"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestPortInUseFailsWithClearMessage(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	cfg := testConfig(t)
	cfg.HTTP.Listen = held.Addr().String()

	a, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Check(context.Background())
	want := fmt.Sprintf("tcp %s: address already in use", held.Addr())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Check = %v, want it to say %q", err, want)
	}

	a, err = New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Run = %v, want %q", err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not fail on a port in use")
	}
}

func TestCheckPassesAndReleasesPorts(t *testing.T) {
	cfg := testConfig(t)
	// Find a free port, then check twice on it: the first check must release it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTP.Listen = ln.Addr().String()
	ln.Close()
	for i := range 2 {
		a, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Check(context.Background()); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
}

func TestPprofOnlyWhenConfigured(t *testing.T) {
	r := start(t, testConfig(t), Options{})
	if code, _ := get(t, r.base+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("pprof served on the main listener without config: %d", code)
	}
	cfg := testConfig(t)
	cfg.HTTP.PprofListen = "127.0.0.1:0"
	r2 := start(t, cfg, Options{})
	addr := r2.app.http.PprofAddr()
	if addr == nil {
		t.Fatal("pprof not bound")
	}
	if code, _ := get(t, "http://"+addr.String()+"/debug/pprof/"); code != 200 {
		t.Errorf("pprof listener answered %d", code)
	}
	if code, _ := get(t, r2.base+"/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("pprof leaked onto the main listener: %d", code)
	}
}

func TestReadyzIsUnavailableWhileStopping(t *testing.T) {
	r := start(t, testConfig(t), Options{})
	r.app.stopping.Store(true)
	if code, body := get(t, r.base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz while stopping = %d %q", code, body)
	}
	r.app.stopping.Store(false)
	if err := r.stop(t); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// Command relaybench runs rendezvous' TURN relay (package relay) from flags,
// for the A/B benchmark against coturn in bench/relay/run.sh, and with
// "probe" measures round-trip times through any TURN server, and with
// "pooled" summarises the probes of a run.sh run. It does not
// depend on cmd/rendezvous.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/rendezvous-p2p/rendezvous/relay"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "probe":
			probe(os.Args[2:])
			return
		case "pooled":
			pooled(os.Args[2:])
			return
		}
	}
	cfg := relay.DefaultConfig()
	flag.StringVar(&cfg.Listen, "listen", "127.0.0.1:3478", "STUN/TURN UDP+TCP address")
	flag.StringVar(&cfg.RelayAddress, "relay-address", "127.0.0.1", "relay IPv4 address")
	user := flag.String("user", "bench:bench", "static user name:password")
	secret := flag.String("secret", "", "TURN REST secret")
	allow := flag.String("allow-peers", "127.0.0.0/8", "comma-separated allow-peers")
	flag.IntVar(&cfg.ReadSockets, "read-sockets", 0, "SO_REUSEPORT sockets (0 = one per CPU)")
	flag.IntVar(&cfg.SocketBuffer, "socket-buffer", 8<<20, "UDP socket buffer bytes")
	flag.IntVar(&cfg.UserQuota, "user-quota", 0, "allocations per user (0 = unlimited)")
	flag.IntVar(&cfg.MaxAllocationsPerIP, "max-allocations-per-ip", 0, "allocations per client IP (0 = unlimited)")
	flag.Int64Var(&cfg.BandwidthLimit, "bandwidth-limit", cfg.BandwidthLimit, "bytes/s per allocation (0 = unlimited)")
	debug := flag.Bool("debug", false, "debug logs")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile here")
	memProfile := flag.String("memprofile", "", "write an allocation profile here on exit")
	flag.Parse()
	cfg.TLSListen = ""
	if name, pw, ok := strings.Cut(*user, ":"); ok {
		cfg.Users = map[string]string{name: pw}
	}
	if *secret != "" {
		cfg.AuthSecrets = []string{*secret}
	}
	if *allow != "" {
		cfg.AllowPeers = strings.Split(*allow, ",")
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	srv, err := relay.New(cfg, relay.Options{Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-srv.Ready()
		fmt.Println("ready", srv.Addr())
	}()
	if err := srv.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	if *memProfile != "" {
		f, err := os.Create(*memProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		_ = pprof.Lookup("allocs").WriteTo(f, 0)
		f.Close()
	}
}

// Command scaleout measures signaling scale-out over NATS: idle peers spread
// over several rendezvous node processes that share state in a 3-server NATS
// JetStream cluster (all on loopback), memory and CPU per peer, join latency
// across nodes and cross-node signal delivery rate. With -write it replaces
// its section of docs/benchmarks.md.
//
// Two more node processes, without idle peers, form the baseline pair: the
// same signal run between them compares against the nodes under test in the
// same run. By default they are this binary with the room membership cache
// off (one room read per signal); -baseline-commit builds this command as of
// an earlier commit (git archive + go build) and runs that there instead.
//
//	go run ./bench/scaleout -peers 15000 -write   # open-file limit > peers
//	go run ./bench/scaleout -peers 15000 -baseline-commit 5fd163c -write
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rendezvous-p2p/rendezvous/internal/benchdoc"
	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
	"github.com/rendezvous-p2p/rendezvous/signaling/natsstore"
	"github.com/rendezvous-p2p/rendezvous/signaling/natsstore/natstest"
)

func main() {
	role := flag.String("role", "drive", "drive | node | load (internal)")
	loadURLs := flag.String("urls", "", "load: node URLs, comma separated")
	loadN := flag.Int("n", 0, "load: peers to hold")
	natsURLs := flag.String("nats", "", "node: NATS URLs, comma separated")
	peers := flag.Int("peers", 9000, "idle peers in total, spread over the nodes")
	nodes := flag.Int("nodes", 3, "rendezvous node processes")
	joins := flag.Int("joins", 300, "cross-node joins timed")
	pairs := flag.Int("pairs", 60, "sender/receiver pairs for the delivery rate")
	write := flag.Bool("write", false, "write docs/benchmarks.md")
	roomCacheTTL := flag.Duration("room-cache-ttl", 0, "node: signaling Options.RoomCacheTTL (negative: off)")
	baselineCommit := flag.String("baseline-commit", "", "run the baseline pair with this command as of that git commit (built from git archive); empty: this binary with the room cache off")
	flag.Parse()
	switch *role {
	case "node":
		runNode(strings.Split(*natsURLs, ","), *roomCacheTTL)
		return
	case "load":
		runLoad(strings.Split(*loadURLs, ","), *loadN)
		return
	}
	drive(*nodes, *peers, *joins, *pairs, *baselineCommit, *write)
}

// ---- node process ----

type nodeStats struct {
	Peers      int     `json:"peers"`
	HeapStack  uint64  `json:"heap_stack"`
	RSS        uint64  `json:"rss"`
	CPUSeconds float64 `json:"cpu_seconds"`
	Goroutines int     `json:"goroutines"`
}

// runNode serves one rendezvous node; no urls means state: memory.
func runNode(urls []string, roomCacheTTL time.Duration) {
	var store signaling.Store
	var st *natsstore.Store
	if len(urls) > 0 && urls[0] != "" {
		cfg := natsstore.DefaultConfig()
		cfg.URLs = urls
		cfg.Prefix = "bench"
		var err error
		st, err = natsstore.New(context.Background(), cfg, natsstore.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			log.Fatal(err)
		}
		store = st
	}
	scfg := signaling.DefaultConfig()
	scfg.Open = signaling.OpenAll
	scfg.MaxConnsPerIP = 1 << 20
	scfg.MaxPeers = 1 << 20
	scfg.MsgRate = 100000
	scfg.MsgBurst = 100000
	scfg.SendQueue = 4096
	reg := prometheus.NewRegistry()
	srv, err := signaling.New(scfg, signaling.Options{Store: store, Registerer: reg, RoomCacheTTL: roomCacheTTL})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", srv.Handler())
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
		json.NewEncoder(w).Encode(nodeStats{
			Peers: int(gauge(reg, "rendezvous_signaling_peers")), HeapStack: ms.HeapInuse + ms.StackInuse,
			RSS: rss(os.Getpid()), CPUSeconds: cpu, Goroutines: runtime.NumGoroutine(),
		})
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go srv.Run(ctx)
	<-srv.Ready()
	hs := &http.Server{Handler: mux}
	go hs.Serve(l)
	fmt.Println("LISTEN", l.Addr().String())
	<-ctx.Done()
	hs.Close()
	if st != nil {
		st.Close()
	}
}

func gauge(reg *prometheus.Registry, name string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) > 0 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	return -1
}

// rss reads VmRSS of pid in bytes.
func rss(pid int) uint64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuSeconds reads utime+stime of pid.
func cpuSeconds(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100 // USER_HZ
}

// ---- load process ----

const peersPerLoader = 15000

// runLoad connects n idle peers round-robin over urls, prints "READY <n>",
// and holds them until interrupted.
func runLoad(urls []string, n int) {
	ctx := context.Background()
	var next, ok atomic.Int64
	var mu sync.Mutex
	var clients []*client.Client
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				c, err := dial(cctx, urls[i%len(urls)], "idle"+strconv.Itoa(i))
				cancel()
				if err != nil {
					log.Print(err)
					continue
				}
				go func() {
					for range c.Events() {
					}
				}()
				ok.Add(1)
				mu.Lock()
				clients = append(clients, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Println("READY", ok.Load())
	sig, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-sig.Done()
	for _, c := range clients {
		c.Close()
	}
}

// ---- driver ----

type node struct {
	cmd  *exec.Cmd
	addr string
}

func (n *node) url() string { return "http://" + n.addr }

func (n *node) stats() nodeStats {
	resp, err := http.Get(n.url() + "/stats")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var s nodeStats
	json.NewDecoder(resp.Body).Decode(&s)
	return s
}

func startNode(urls []string, extra ...string) *node {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	return startNodeBin(self, urls, extra...)
}

func startNodeBin(bin string, urls []string, extra ...string) *node {
	cmd := exec.Command(bin, append([]string{"-role", "node", "-nats", strings.Join(urls, ",")}, extra...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "LISTEN "); ok {
			go func() {
				for sc.Scan() {
				}
			}()
			return &node{cmd: cmd, addr: addr}
		}
	}
	log.Fatal("node exited before listening")
	return nil
}

func dial(ctx context.Context, url, name string) (*client.Client, error) {
	buf := 4096
	if strings.HasPrefix(name, "idle") {
		buf = 16 // idle peers only see pings
	}
	return client.Dial(ctx, client.Config{URL: url, NoReconnect: true, EventBuffer: buf, Register: client.Register{Name: name, PublicKey: "a2V5"}})
}

func pct(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// buildAt builds bench/scaleout as of commit into dir and returns the binary.
func buildAt(commit, dir string) string {
	archive := exec.Command("git", "archive", commit)
	untar := exec.Command("tar", "-x", "-C", dir)
	var err error
	if untar.Stdin, err = archive.StdoutPipe(); err != nil {
		log.Fatal(err)
	}
	archive.Stderr, untar.Stderr = os.Stderr, os.Stderr
	if err := untar.Start(); err != nil {
		log.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		log.Fatalf("git archive %s: %v", commit, err)
	}
	if err := untar.Wait(); err != nil {
		log.Fatal(err)
	}
	bin := filepath.Join(dir, "scaleout-"+commit)
	build := exec.Command("go", "build", "-o", bin, "./bench/scaleout")
	build.Dir, build.Stdout, build.Stderr = dir, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		log.Fatalf("build bench/scaleout at %s: %v", commit, err)
	}
	return bin
}

func drive(nNodes, nPeers, nJoins, nPairs int, baselineCommit string, write bool) {
	loadStart := loadavg()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		log.Fatal("nats-server not found (apt-get install nats-server)")
	}
	dir, err := os.MkdirTemp("", "rzv-scaleout-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cluster, err := natstest.Start(bin, dir, 3)
	defer cluster.Kill()
	if err != nil {
		log.Fatal(err)
	}
	baseline := ""
	if baselineCommit != "" {
		src := filepath.Join(dir, "baseline-src")
		if err := os.Mkdir(src, 0o755); err != nil {
			log.Fatal(err)
		}
		log.Printf("building the baseline at %s", baselineCommit)
		baseline = buildAt(baselineCommit, src)
	}
	natsRSS0 := uint64(0)
	for _, s := range cluster.Servers {
		natsRSS0 += rss(s.PID())
	}
	var nodes []*node
	for i := range nNodes {
		urls := cluster.URLs()
		j := i % len(urls)
		urls[0], urls[j] = urls[j], urls[0]
		nodes = append(nodes, startNode(urls))
	}
	defer func() {
		for _, n := range nodes {
			n.cmd.Process.Signal(os.Interrupt)
			n.cmd.Wait()
		}
	}()
	base := make([]nodeStats, nNodes)
	for i, n := range nodes {
		base[i] = n.stats()
	}
	ctx := context.Background()

	// Idle peers, held by load processes of at most peersPerLoader each (one
	// socket per peer against the open-file limit).
	log.Printf("connecting %d idle peers over %d nodes", nPeers, nNodes)
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.url())
	}
	t0 := time.Now()
	var loaders []*exec.Cmd
	idle := 0
	var lwg sync.WaitGroup
	var lmu sync.Mutex
	for left := nPeers; left > 0; left -= peersPerLoader {
		n := min(left, peersPerLoader)
		self, _ := os.Executable()
		cmd := exec.Command(self, "-role", "load", "-urls", strings.Join(urls, ","), "-n", strconv.Itoa(n))
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			log.Fatal(err)
		}
		loaders = append(loaders, cmd)
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "READY" {
					k, _ := strconv.Atoi(f[1])
					lmu.Lock()
					idle += k
					lmu.Unlock()
					go func() {
						for sc.Scan() {
						}
					}()
					return
				}
			}
			log.Fatal("load process exited early")
		}()
	}
	lwg.Wait()
	connectRate := float64(idle) / time.Since(t0).Seconds()
	log.Printf("%d peers connected at %.0f/s", idle, connectRate)
	loadIdle := loadavg()
	defer func() {
		for _, l := range loaders {
			l.Process.Signal(os.Interrupt)
			l.Wait()
		}
	}()

	// Idle CPU over 20 s (heartbeats and NATS node heartbeats only).
	cpu0 := make([]float64, nNodes)
	for i, n := range nodes {
		cpu0[i] = cpuSeconds(n.cmd.Process.Pid)
	}
	natsCPU0 := 0.0
	for _, s := range cluster.Servers {
		natsCPU0 += cpuSeconds(s.PID())
	}
	const idleFor = 20 * time.Second
	time.Sleep(idleFor)
	idleCPU := 0.0
	for i, n := range nodes {
		idleCPU += cpuSeconds(n.cmd.Process.Pid) - cpu0[i]
	}
	natsIdleCPU := -natsCPU0
	for _, s := range cluster.Servers {
		natsIdleCPU += cpuSeconds(s.PID())
	}
	var heap, rssSum uint64
	peersSeen := 0
	for i, n := range nodes {
		s := n.stats()
		heap += s.HeapStack - base[i].HeapStack
		rssSum += s.RSS - base[i].RSS
		peersSeen += s.Peers
	}
	natsRSS := uint64(0)
	for _, s := range cluster.Servers {
		natsRSS += rss(s.PID())
	}

	// Join latency and signal rate across nodes (host/sender on node i,
	// joiner/receiver on node i+1), then the same on one node with the
	// in-memory store, side by side.
	log.Printf("timing %d cross-node joins", nJoins)
	joinLat := timeJoins(ctx, nJoins, func(i int) string { return nodes[i%nNodes].url() }, func(i int) string { return nodes[(i+1)%nNodes].url() })
	log.Printf("cross-node signals with %d pairs", nPairs)
	pids := []int{}
	for _, n := range nodes {
		pids = append(pids, n.cmd.Process.Pid)
	}
	var natsPIDs []int
	for _, s := range cluster.Servers {
		natsPIDs = append(natsPIDs, s.PID())
	}
	xs := signalRun(ctx, nPairs, func(i int) string { return nodes[i%nNodes].url() }, func(i int) string { return nodes[(i+1)%nNodes].url() }, pids, natsPIDs)

	// The baseline pair, on the same NATS cluster.
	var base2 []*node
	baseName, baseDesc := "room cache off", "room cache off"
	for i := range 2 {
		urls := cluster.URLs()
		j := i % len(urls)
		urls[0], urls[j] = urls[j], urls[0]
		if baseline != "" {
			base2 = append(base2, startNodeBin(baseline, urls))
		} else {
			base2 = append(base2, startNode(urls, "-room-cache-ttl", "-1ns"))
		}
	}
	if baseline != "" {
		baseName, baseDesc = "commit "+baselineCommit, "code of commit "+baselineCommit
	}
	defer func() {
		for _, n := range base2 {
			n.cmd.Process.Signal(os.Interrupt)
			n.cmd.Wait()
		}
	}()
	basePIDs := []int{base2[0].cmd.Process.Pid, base2[1].cmd.Process.Pid}
	log.Printf("the same between two %s nodes", baseName)
	baseJoinLat := timeJoins(ctx, nJoins, func(int) string { return base2[0].url() }, func(int) string { return base2[1].url() })
	bs := signalRun(ctx, nPairs, func(int) string { return base2[0].url() }, func(int) string { return base2[1].url() }, basePIDs, natsPIDs)
	log.Printf("and again across the nodes under test")
	xs2 := signalRun(ctx, nPairs, func(i int) string { return nodes[i%nNodes].url() }, func(i int) string { return nodes[(i+1)%nNodes].url() }, pids, natsPIDs)

	mem := startNode(nil)
	defer func() {
		mem.cmd.Process.Signal(os.Interrupt)
		mem.cmd.Wait()
	}()
	memURL := func(int) string { return mem.url() }
	log.Printf("the same on one node with state: memory")
	memJoinLat := timeJoins(ctx, nJoins, memURL, memURL)
	ms1 := signalRun(ctx, nPairs, memURL, memURL, []int{mem.cmd.Process.Pid}, nil)

	perPeer := func(b uint64) string { return fmt.Sprintf("%.1f KiB", float64(b)/float64(idle)/1024) }
	var b strings.Builder
	fmt.Fprintf(&b, "## Scale-out: idle peers over several nodes sharing state in NATS\n\n")
	cmdline := fmt.Sprintf("go run ./bench/scaleout -peers %d -nodes %d", nPeers, nNodes)
	if baselineCommit != "" {
		cmdline += " -baseline-commit " + baselineCommit
	}
	fmt.Fprintf(&b, "Command: `%s -write` (from the repository root; needs nats-server; each node process holds\npeers/nodes sockets, so keep that under the open-file limit; about 4 minutes)\n\n", cmdline)
	fmt.Fprintf(&b, "A 3-server NATS JetStream cluster (nats-server %s, buckets with 3 replicas; serial writes, see docs/scale-out.md) and %d rendezvous\n", serverVersion(), nNodes)
	fmt.Fprintf(&b, "node processes (package signaling + signaling/natsstore), all on loopback of one machine, with the idle peers (signaling/client) held by load\n")
	fmt.Fprintf(&b, "processes of up to %d peers each. %s; load average at start %s, after registering %s.\n\n", peersPerLoader, benchdoc.Machine(), loadStart, loadIdle)
	fmt.Fprintf(&b, "| %d idle peers over %d nodes | value |\n|---|---|\n", idle, nNodes)
	fmt.Fprintf(&b, "| peers registered (sum of the nodes' gauges) | %d |\n", peersSeen)
	fmt.Fprintf(&b, "| connect + register rate (32 at once per load process) | %.0f /s |\n", connectRate)
	fmt.Fprintf(&b, "| node Go heap+stack per peer | %s |\n", perPeer(heap))
	fmt.Fprintf(&b, "| node RSS per peer | %s |\n", perPeer(rssSum))
	fmt.Fprintf(&b, "| NATS servers' RSS growth per peer (3 replicas) | %s |\n", perPeer(natsRSS-natsRSS0))
	fmt.Fprintf(&b, "| node CPU while idle (all nodes, %v) | %.1f %% of a core (%.2f µs/peer/s) |\n", idleFor, 100*idleCPU/idleFor.Seconds(), 1e6*idleCPU/idleFor.Seconds()/float64(idle))
	fmt.Fprintf(&b, "| NATS CPU while idle (3 servers) | %.1f %% of a core |\n", 100*natsIdleCPU/idleFor.Seconds())
	fmt.Fprintf(&b, "\nNATS CPU while idle includes the servers settling after the registration burst (their heartbeat traffic is a few messages per second).\n")
	xsRate := (xs.rate + xs2.rate) / 2
	fmt.Fprintf(&b, "\nThe same requests between the nodes under test (a peer on node i, the other on node i+1), between a pair of\n")
	fmt.Fprintf(&b, "nodes with the %s on the same NATS cluster (two more node processes, no idle peers), and with both peers\n", baseDesc)
	fmt.Fprintf(&b, "on one node using `state: memory` (one more node process), all in the same run. The nodes under test ran the\n")
	fmt.Fprintf(&b, "signal run twice, before and after the baseline pair (%.0f and %.0f /s); the table has their mean. Across nodes the\n", xs.rate, xs2.rate)
	fmt.Fprintf(&b, "work is spread over %d processes, on one memory node it is all in one, so \"÷ memory\" can exceed 1 on 2 cores.\n\n", nNodes)
	fmt.Fprintf(&b, "| | NATS, across nodes | NATS, %s | memory, one node | across nodes ÷ %s | across nodes ÷ memory |\n|---|---|---|---|---|---|\n", baseName, baseName)
	fmt.Fprintf(&b, "| join by code P50 (%d joins, one at a time) | %s | %s | %s | %.2f | %.1f |\n", nJoins, ms(pct(joinLat, 0.5)), ms(pct(baseJoinLat, 0.5)), ms(pct(memJoinLat, 0.5)), ratio(pct(joinLat, 0.5), pct(baseJoinLat, 0.5)), ratio(pct(joinLat, 0.5), pct(memJoinLat, 0.5)))
	fmt.Fprintf(&b, "| join by code P99 | %s | %s | %s | %.2f | %.1f |\n", ms(pct(joinLat, 0.99)), ms(pct(baseJoinLat, 0.99)), ms(pct(memJoinLat, 0.99)), ratio(pct(joinLat, 0.99), pct(baseJoinLat, 0.99)), ratio(pct(joinLat, 0.99), pct(memJoinLat, 0.99)))
	fmt.Fprintf(&b, "| signal deliveries/s (%d pairs, 8 in flight each, 10 s) | %.0f | %.0f | %.0f | %.2f | %.2f |\n", nPairs, xsRate, bs.rate, ms1.rate, xsRate/bs.rate, xsRate/ms1.rate)
	fmt.Fprintf(&b, "| signal latency P50 / P99 | %s / %s | %s / %s | %s / %s | | |\n", ms(xs.p50), ms(xs.p99), ms(bs.p50), ms(bs.p99), ms(ms1.p50), ms(ms1.p99))
	fmt.Fprintf(&b, "| CPU during the signal run: rendezvous / NATS | %.2f / %.2f cores | %.2f / %.2f cores | %.2f cores | | |\n", xs.cpu, xs.natsCPU, bs.cpu, bs.natsCPU, ms1.cpu)
	fmt.Println(b.String())
	if write {
		if err := benchdoc.Update("scaleout", b.String()); err != nil {
			log.Fatal(err)
		}
	}
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func timeJoins(ctx context.Context, n int, hostURL, joinerURL func(int) string) []time.Duration {
	var lat []time.Duration
	for i := range n {
		h, err := dial(ctx, hostURL(i), "host")
		if err != nil {
			log.Fatal(err)
		}
		j, err := dial(ctx, joinerURL(i), "joiner")
		if err != nil {
			log.Fatal(err)
		}
		room, err := h.CreateRoom(ctx, client.CreateRoom{})
		if err != nil {
			log.Fatal(err)
		}
		t := time.Now()
		if _, err := j.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
			log.Fatal(err)
		}
		lat = append(lat, time.Since(t))
		h.Close()
		j.Close()
	}
	return lat
}

type signalResult struct {
	rate, cpu, natsCPU float64
	p50, p99           time.Duration
}

func sumCPU(pids []int) float64 {
	t := 0.0
	for _, p := range pids {
		t += cpuSeconds(p)
	}
	return t
}

// signalRun: nPairs sender/receiver pairs in their own rooms, every sender
// signalling with 8 requests in flight for 10 s.
func signalRun(ctx context.Context, nPairs int, senderURL, receiverURL func(int) string, pids, natsPIDs []int) signalResult {
	const signalFor = 10 * time.Second
	var received atomic.Int64
	var lat []time.Duration
	var latMu sync.Mutex
	start := make(chan struct{})
	var end time.Time
	var clients []*client.Client
	var wg sync.WaitGroup
	for i := range nPairs {
		s, err := dial(ctx, senderURL(i), "sender")
		if err != nil {
			log.Fatal(err)
		}
		r, err := dial(ctx, receiverURL(i), "receiver")
		if err != nil {
			log.Fatal(err)
		}
		clients = append(clients, s, r)
		room, err := s.CreateRoom(ctx, client.CreateRoom{})
		if err != nil {
			log.Fatal(err)
		}
		if _, err := r.Join(ctx, client.Join{Code: room.Room.Code}); err != nil {
			log.Fatal(err)
		}
		go func() {
			for ev := range r.Events() {
				if ev.Type != client.TypeSignal {
					continue
				}
				var sg client.Signal
				ev.Decode(&sg)
				var sent int64
				json.Unmarshal(sg.Payload, &sent)
				received.Add(1)
				if sent%16 == 0 {
					latMu.Lock()
					lat = append(lat, time.Since(time.Unix(0, sent)))
					latMu.Unlock()
				}
			}
		}()
		go func() {
			for range s.Events() {
			}
		}()
		wg.Add(1)
		go func(to, roomID string) {
			defer wg.Done()
			<-start
			sctx, cancel := context.WithDeadline(ctx, end)
			defer cancel()
			var inflight sync.WaitGroup
			sem := make(chan struct{}, 8)
			for sctx.Err() == nil {
				sem <- struct{}{}
				inflight.Add(1)
				go func() {
					defer inflight.Done()
					defer func() { <-sem }()
					s.Signal(sctx, to, roomID, time.Now().UnixNano())
				}()
			}
			inflight.Wait()
		}(r.PeerID(), room.Room.ID)
	}
	cpu0, nats0 := sumCPU(pids), sumCPU(natsPIDs)
	r0 := received.Load()
	t0 := time.Now()
	end = t0.Add(signalFor)
	close(start)
	wg.Wait()
	el := time.Since(t0).Seconds()
	res := signalResult{rate: float64(received.Load()-r0) / el, cpu: (sumCPU(pids) - cpu0) / el, natsCPU: (sumCPU(natsPIDs) - nats0) / el}
	latMu.Lock()
	res.p50, res.p99 = pct(lat, 0.5), pct(lat, 0.99)
	latMu.Unlock()
	for _, c := range clients {
		c.Close()
	}
	return res
}

func serverVersion() string {
	out, err := exec.Command("nats-server", "--version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nats-server: "))
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

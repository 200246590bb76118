// Command sigbench is the load benchmark of the signaling server (package
// signaling). One binary, three roles, each in its own process:
//
//	sigbench                      drive: start a server and load generators, print the results
//	sigbench -role server ...     a signaling server (or a bare coder/websocket echo for reference)
//	sigbench -role load ...       a load generator: idle peers or 10-peer broadcast rooms
//
// Load generators bind their client sockets to many 127.0.0.0/8 source
// addresses, so per-IP caps and ephemeral ports do not limit the test, and
// every process stays under its 20,000 open-file cap.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/exec"
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

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/rendezvous-p2p/rendezvous/internal/benchdoc"
	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

func main() {
	role := flag.String("role", "drive", "drive, server or load")
	impl := flag.String("impl", "ours", "server: ours (signaling package) or bare (coder/websocket read loop)")
	url := flag.String("url", "", "load: server ws URL")
	n := flag.Int("n", 9500, "load: connections")
	ipBase := flag.Int("ip-base", 1, "load: second octet of the source addresses 127.<base>.x.y")
	perIP := flag.Int("per-ip", 200, "load: connections per source address")
	conc := flag.Int("concurrency", 64, "load: parallel dials")
	mode := flag.String("mode", "idle", "load: idle or broadcast")
	rooms := flag.Int("rooms", 50, "load broadcast: rooms of 10 peers")
	rate := flag.Float64("rate", 14.3, "load broadcast: signals per second per peer")
	dur := flag.Duration("duration", 10*time.Second, "load broadcast: measuring time")
	register := flag.Bool("register", true, "load: send register (false for the bare server)")
	peers := flag.Int("peers", 19000, "drive: idle peers")
	pprofOut := flag.String("profile", "", "drive: write a CPU profile of the server during the broadcast run to this file")
	only := flag.String("only", "", "drive: run only idle or broadcast")
	write := flag.Bool("write", false, "drive: replace the signaling section of docs/benchmarks.md")
	rates := flag.String("rates", "14.3,7.15,1.43", "drive: broadcast signals/s per peer, one run each (14.3 x 9 x 1000 = 128,700 deliveries/s)")
	flag.Parse()
	switch *role {
	case "server":
		runServer(*impl)
	case "load":
		if *mode == "idle" {
			loadIdle(*url, *n, *ipBase, *perIP, *conc, *register)
		} else {
			loadBroadcast(*url, *rooms, *ipBase, *perIP, *rate, *dur)
		}
	default:
		drive(*peers, *pprofOut, *only, *rates, *write)
	}
}

// ---- server ----

type stats struct {
	Goroutines   int     `json:"goroutines"`
	HeapInuse    uint64  `json:"heap_inuse"`
	StackInuse   uint64  `json:"stack_inuse"`
	RSS          uint64  `json:"rss"`
	CPUSeconds   float64 `json:"cpu_seconds"`
	HeartbeatN   uint64  `json:"heartbeat_n"`
	HeartbeatP50 float64 `json:"heartbeat_p50_ms"`
	HeartbeatP99 float64 `json:"heartbeat_p99_ms"`
	Buckets      []float64
	Counts       []uint64
}

func runServer(impl string) {
	reg := prometheus.NewRegistry()
	mux := http.NewServeMux()
	switch impl {
	case "ours":
		cfg := signaling.DefaultConfig()
		cfg.Open = signaling.OpenAll
		cfg.MaxConnsPerIP = 1000
		cfg.MsgRate = 10000
		cfg.MsgBurst = 10000
		cfg.SendQueue = 4096
		srv, err := signaling.New(cfg, signaling.Options{Registerer: reg})
		if err != nil {
			log.Fatal(err)
		}
		go srv.Run(context.Background())
		mux.Handle("/v1/", srv.Handler())
	case "bare":
		// The reference: coder/websocket as its README shows it, one handler
		// goroutine blocked in Read per connection.
		mux.HandleFunc("/v1/ws", func(w http.ResponseWriter, r *http.Request) {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		})
	}
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") != "" {
			runtime.GC()
			debug.FreeOSMemory()
		}
		json.NewEncoder(w).Encode(readStats(reg))
	})
	mux.Handle("/debug/", http.DefaultServeMux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ln.Addr().String())
	hs := &http.Server{Handler: mux}
	log.Fatal(hs.Serve(ln))
}

func readStats(reg *prometheus.Registry) stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := stats{Goroutines: runtime.NumGoroutine(), HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		f := strings.Fields(string(b))
		if len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			s.RSS = pages * uint64(os.Getpagesize())
		}
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	s.CPUSeconds = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "rendezvous_signaling_heartbeat_rtt_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		s.HeartbeatN = h.GetSampleCount()
		for _, b := range h.GetBucket() {
			s.Buckets = append(s.Buckets, b.GetUpperBound())
			s.Counts = append(s.Counts, b.GetCumulativeCount())
		}
		s.HeartbeatP50 = quantile(h, 0.5) * 1000
		s.HeartbeatP99 = quantile(h, 0.99) * 1000
	}
	return s
}

// quantile interpolates linearly inside the histogram bucket.
func quantile(h *dto.Histogram, q float64) float64 {
	total := float64(h.GetSampleCount())
	if total == 0 {
		return 0
	}
	rank := q * total
	lower, prev := 0.0, 0.0
	for _, b := range h.GetBucket() {
		c := float64(b.GetCumulativeCount())
		if c >= rank {
			if c == prev {
				return b.GetUpperBound()
			}
			return lower + (b.GetUpperBound()-lower)*(rank-prev)/(c-prev)
		}
		lower, prev = b.GetUpperBound(), c
	}
	return lower
}

// ---- load generators ----

type dialer struct {
	url     string
	ipBase  int
	perIP   int
	clients map[int]*http.Client
	mu      sync.Mutex
}

func (d *dialer) dial(ctx context.Context, i int) (*websocket.Conn, error) {
	slot := i / d.perIP
	d.mu.Lock()
	hc := d.clients[slot]
	if hc == nil {
		src := net.IPv4(127, byte(d.ipBase), byte(slot/250), byte(1+slot%250))
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
		hc = &http.Client{Transport: &http.Transport{DialContext: nd.DialContext, MaxIdleConnsPerHost: -1}}
		d.clients[slot] = hc
	}
	d.mu.Unlock()
	c, _, err := websocket.Dial(ctx, d.url, &websocket.DialOptions{HTTPClient: hc})
	if err == nil {
		c.SetReadLimit(1 << 20)
	}
	return c, err
}

func frame(typ string, rid uint64, data any) []byte {
	b, _ := json.Marshal(map[string]any{"type": typ, "rid": rid, "data": data})
	return b
}

func registerConn(ctx context.Context, c *websocket.Conn, name string) (client.Registered, error) {
	var reg client.Registered
	if err := c.Write(ctx, websocket.MessageText, frame("register", 1, client.Register{Protocol: 1, Name: name, PublicKey: "pk"})); err != nil {
		return reg, err
	}
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return reg, err
		}
		var env client.Envelope
		json.Unmarshal(b, &env)
		if env.Type == "registered" {
			return reg, json.Unmarshal(env.Data, &reg)
		}
		if env.Type == "error" {
			return reg, fmt.Errorf("register: %s", env.Data)
		}
	}
}

// answerPings reads until the connection ends, answering pings.
func answerPings(c *websocket.Conn, onFrame func(client.Envelope, time.Time)) {
	answerPingsFast(c, onFrame, nil)
}

func answerPingsFast(c *websocket.Conn, onFrame func(client.Envelope, time.Time), onSignal func(int64, time.Time)) {
	var buf bytes.Buffer
	for {
		_, r, err := c.Reader(context.Background())
		if err != nil {
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return
		}
		b := buf.Bytes()
		now := time.Now()
		if onFrame != nil && bytes.HasPrefix(b, []byte(`{"type":"signal"`)) {
			// Fast path: the load generator must not be the bottleneck.
			if i := bytes.LastIndex(b, []byte(`"t":`)); i >= 0 {
				end := i + 4
				for end < len(b) && b[end] >= '0' && b[end] <= '9' {
					end++
				}
				t, _ := strconv.ParseInt(string(b[i+4:end]), 10, 64)
				onSignal(t, now)
			}
			continue
		}
		var env client.Envelope
		if json.Unmarshal(b, &env) != nil {
			continue
		}
		if env.Type == "ping" {
			var p client.Ping
			json.Unmarshal(env.Data, &p)
			c.Write(context.Background(), websocket.MessageText, frame("pong", 0, client.Pong{Seq: p.Seq}))
			continue
		}
		if onFrame != nil {
			onFrame(env, now)
		}
	}
}

func loadIdle(url string, n, ipBase, perIP, conc int, register bool) {
	d := &dialer{url: url, ipBase: ipBase, perIP: perIP, clients: map[int]*http.Client{}}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	conns := make([]*websocket.Conn, n)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				c, err := d.dial(ctx, i)
				if err == nil && register {
					_, err = registerConn(ctx, c, "idle")
				}
				cancel()
				if err != nil {
					failed.Add(1)
					if failed.Load() < 5 {
						log.Printf("conn %d: %v", i, err)
					}
					continue
				}
				conns[i] = c
				go answerPings(c, nil)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	out, _ := json.Marshal(map[string]any{"connected": n - int(failed.Load()), "failed": failed.Load(), "seconds": el.Seconds()})
	fmt.Println(string(out))
	io.Copy(io.Discard, os.Stdin) // hold until the driver closes stdin
	for _, c := range conns {
		if c != nil {
			c.CloseNow()
		}
	}
}

func loadBroadcast(url string, rooms, ipBase, perIP int, rate float64, dur time.Duration) {
	d := &dialer{url: url, ipBase: ipBase, perIP: perIP, clients: map[int]*http.Client{}}
	type peer struct {
		c    *websocket.Conn
		room string
	}
	var (
		delivered atomic.Int64
		latMu     sync.Mutex
		lats      []time.Duration
		measuring atomic.Bool
	)
	onSignal := func(t int64, now time.Time) {
		if !measuring.Load() {
			return
		}
		delivered.Add(1)
		lat := now.Sub(time.Unix(0, t))
		latMu.Lock()
		lats = append(lats, lat)
		latMu.Unlock()
	}
	onFrame := func(client.Envelope, time.Time) {}
	ctx := context.Background()
	all := make([]peer, 0, rooms*10)
	var setup sync.WaitGroup
	var setupErr atomic.Value
	for r := range rooms {
		setup.Add(1)
		go func() {
			defer setup.Done()
			var roomID string
			for k := range 10 {
				c, err := d.dial(ctx, r*10+k)
				if err != nil {
					setupErr.Store(err)
					return
				}
				if _, err := registerConn(ctx, c, "b"); err != nil {
					setupErr.Store(err)
					return
				}
				var req []byte
				if k == 0 {
					req = frame("create_room", 2, client.CreateRoom{Capacity: 10})
				} else {
					req = frame("join", 2, client.Join{RoomID: roomID})
				}
				c.Write(ctx, websocket.MessageText, req)
				for {
					_, b, err := c.Read(ctx)
					if err != nil {
						setupErr.Store(err)
						return
					}
					var env client.Envelope
					json.Unmarshal(b, &env)
					if env.Type == "room_joined" {
						var rj client.RoomJoined
						json.Unmarshal(env.Data, &rj)
						roomID = rj.Room.ID
						break
					}
					if env.Type == "error" {
						setupErr.Store(fmt.Errorf("%s", env.Data))
						return
					}
				}
				latMu.Lock()
				all = append(all, peer{c, roomID})
				latMu.Unlock()
			}
		}()
	}
	setup.Wait()
	if e := setupErr.Load(); e != nil {
		log.Fatal(e)
	}
	for _, p := range all {
		go answerPingsFast(p.c, onFrame, onSignal)
	}
	var sent atomic.Int64
	stop := make(chan struct{})
	interval := time.Duration(float64(time.Second) / rate)
	for i, p := range all {
		go func() {
			// Stagger the senders over one interval.
			time.Sleep(time.Duration(i) * interval / time.Duration(len(all)))
			t := time.NewTicker(interval)
			defer t.Stop()
			prefix := `{"type":"signal","data":{"room_id":"` + p.room + `","payload":{"t":`
			var b []byte
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				b = append(append(append(b[:0], prefix...), strconv.AppendInt(nil, time.Now().UnixNano(), 10)...), "}}}"...)
				if err := p.c.Write(ctx, websocket.MessageText, b); err == nil && measuring.Load() {
					sent.Add(1)
				}
			}
		}()
	}
	time.Sleep(2 * time.Second) // warm-up, not measured
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(dur)
	measuring.Store(false)
	el := time.Since(t0)
	close(stop)
	latMu.Lock()
	slices.Sort(lats)
	pct := func(q float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		return float64(lats[min(len(lats)-1, int(q*float64(len(lats))))].Microseconds()) / 1000
	}
	out, _ := json.Marshal(map[string]any{"peers": len(all), "sent": sent.Load(), "delivered": delivered.Load(),
		"seconds": el.Seconds(), "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
	latMu.Unlock()
	fmt.Println(string(out))
	for _, p := range all {
		p.c.CloseNow()
	}
}

// ---- driver ----

type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func start(args ...string) *proc {
	self, _ := os.Executable()
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	return &proc{cmd: cmd, stdin: in, out: bufio.NewScanner(out)}
}

func (p *proc) line() string {
	if !p.out.Scan() {
		log.Fatalf("%v: no output", p.cmd.Args)
	}
	return p.out.Text()
}

func (p *proc) stop() {
	p.stdin.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
}

func getStats(addr string, gc bool) stats {
	u := "http://" + addr + "/stats"
	if gc {
		u += "?gc=1"
	}
	resp, err := http.Get(u)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var s stats
	json.NewDecoder(resp.Body).Decode(&s)
	return s
}

type idleResult struct {
	impl                  string
	peers                 int
	connsPerSec           float64
	goPerPeer, rssPerPeer float64
	gorPerPeer            float64
	hbP50, hbP99          float64
	hbN                   uint64
	cpuPct                float64
}

func idleRun(impl string, peers int) idleResult {
	srv := start("-role", "server", "-impl", impl)
	defer srv.stop()
	addr := srv.line()
	url := "ws://" + addr + "/v1/ws"
	base := getStats(addr, true)
	half := peers / 2
	var loads []*proc
	for k, n := range []int{half, peers - half} {
		loads = append(loads, start("-role", "load", "-url", url, "-n", strconv.Itoa(n), "-ip-base", strconv.Itoa(10+k),
			"-register="+strconv.FormatBool(impl == "ours")))
	}
	connected, secs := 0, 0.0
	for _, l := range loads {
		var r struct {
			Connected int
			Seconds   float64
		}
		json.Unmarshal([]byte(l.line()), &r)
		connected += r.Connected
		secs = max(secs, r.Seconds)
	}
	res := idleResult{impl: impl, peers: connected, connsPerSec: float64(connected) / secs}
	loaded := getStats(addr, true)
	res.goPerPeer = float64(loaded.HeapInuse+loaded.StackInuse-base.HeapInuse-base.StackInuse) / float64(connected)
	res.rssPerPeer = float64(loaded.RSS-base.RSS) / float64(connected)
	res.gorPerPeer = float64(loaded.Goroutines-base.Goroutines) / float64(connected)
	if impl == "ours" {
		// Two full heartbeat rounds with nothing else going on.
		window := 30 * time.Second
		before := getStats(addr, false)
		time.Sleep(window)
		after := getStats(addr, false)
		res.cpuPct = 100 * (after.CPUSeconds - before.CPUSeconds) / window.Seconds()
		res.hbP50, res.hbP99, res.hbN = after.HeartbeatP50, after.HeartbeatP99, after.HeartbeatN
	}
	for _, l := range loads {
		l.stop()
	}
	return res
}

type bcastResult struct {
	serverCPU                float64 // cores used by the server while measuring
	peers                    int
	sent, delivered          int64
	perSec, p50, p99, target float64
}

func broadcastRun(rate float64, profile string) bcastResult {
	srv := start("-role", "server", "-impl", "ours")
	defer srv.stop()
	addr := srv.line()
	url := "ws://" + addr + "/v1/ws"
	var loads []*proc
	for k := range 2 {
		loads = append(loads, start("-role", "load", "-mode", "broadcast", "-url", url, "-rooms", "50",
			"-rate", fmt.Sprint(rate), "-ip-base", strconv.Itoa(20+k), "-duration", "10s"))
	}
	profDone := make(chan struct{})
	if profile == "" {
		close(profDone)
	} else {
		go func() {
			defer close(profDone)
			time.Sleep(4 * time.Second)
			resp, err := http.Get("http://" + addr + "/debug/pprof/profile?seconds=6")
			if err != nil {
				return
			}
			defer resp.Body.Close()
			f, _ := os.Create(profile)
			io.Copy(f, resp.Body)
			f.Close()
		}()
	}
	var res bcastResult
	cpu := make(chan float64, 1)
	go func() {
		// Sample inside the load generators' measuring window (2 s warm-up + 10 s).
		time.Sleep(4 * time.Second)
		a := getStats(addr, false)
		time.Sleep(6 * time.Second)
		b := getStats(addr, false)
		cpu <- (b.CPUSeconds - a.CPUSeconds) / 6
	}()
	for _, l := range loads {
		var r struct {
			Peers           int
			Sent, Delivered int64
			Seconds         float64
			P50             float64 `json:"p50_ms"`
			P99             float64 `json:"p99_ms"`
		}
		json.Unmarshal([]byte(l.line()), &r)
		res.peers += r.Peers
		res.sent += r.Sent
		res.delivered += r.Delivered
		res.perSec += float64(r.Delivered) / r.Seconds
		res.p50 = max(res.p50, r.P50)
		res.p99 = max(res.p99, r.P99)
	}
	res.target = rate * float64(res.peers) * 9
	res.serverCPU = <-cpu
	<-profDone
	for _, l := range loads {
		l.stop()
	}
	return res
}

func drive(peers int, profile, only, rates string, write bool) {
	log.SetFlags(0)
	var ours, bare idleResult
	if only != "broadcast" {
		fmt.Fprintf(os.Stderr, "idle: %d peers against the signaling server...\n", peers)
		ours = idleRun("ours", peers)
		fmt.Fprintf(os.Stderr, "idle: %d connections against bare coder/websocket...\n", peers)
		bare = idleRun("bare", peers)
	}
	var bc []bcastResult
	top := ""
	if profile == "" {
		profile = filepath.Join(os.TempDir(), "sigbench-broadcast.pprof")
	}
	if only != "idle" {
		fmt.Fprintln(os.Stderr, "broadcast: 100 rooms x 10 peers...")
		for _, r := range strings.Split(rates, ",") {
			rate, err := strconv.ParseFloat(r, 64)
			if err != nil {
				log.Fatal(err)
			}
			bc = append(bc, broadcastRun(rate, profile))
			if top == "" {
				top = profileTop(profile)
			}
			profile = ""
		}
	}
	var b strings.Builder
	pf := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	meets := func(ok bool) string {
		if ok {
			return "meets"
		}
		return "misses"
	}
	kib := func(v float64) string { return fmt.Sprintf("%.1f KiB", v/1024) }
	pf("## Signaling: idle peers, new connections, room broadcast\n\n")
	pf("Command: `ulimit -n 20000; go run ./bench/signaling -write` (from the repository root; about 3 minutes)\n\n")
	pf("One server process (package signaling behind net/http, open mode, 15 s pings) and two load-generator processes on the same\n")
	pf("machine, clients bound to 127.10-11.x.y / 127.20-21.x.y source addresses (200 connections each), every process capped at 20,000 open files.\n")
	pf("The reference column is coder/websocket used as its README shows (handler goroutine blocked in Read), measured in the same run.\n")
	pf("%s; load average at start %s.\n\n", benchdoc.Machine(), loadavg())
	if only != "broadcast" {
		pf("Where an idle peer's memory goes: coder/websocket v1.8.15 needs one goroutine per connection (the reader; its read and write\n")
		pf("timeouts use context.AfterFunc, no timeout goroutine). The server swaps net/http's 4 KiB read and 4 KiB write buffers for 512-byte\n")
		pf("ones at hijack, returns from the handler so net/http's connection goroutine (and its grown stack) exits and reads on a fresh\n")
		pf("goroutine, runs a writer goroutine only while a peer's send queue is non-empty, and arms heartbeats as runtime timers.\n\n")
		pf("| %d idle peers | signaling | bare coder/websocket | ratio | goal |\n|---|---|---|---|---|\n", ours.peers)
		pf("| Go heap+stack per peer | %s | %s | %.2f | ≤ 16 KiB: %s |\n", kib(ours.goPerPeer), kib(bare.goPerPeer), ours.goPerPeer/bare.goPerPeer, meets(ours.goPerPeer <= 16<<10))
		pf("| RSS per peer | %s | %s | %.2f | |\n", kib(ours.rssPerPeer), kib(bare.rssPerPeer), ours.rssPerPeer/bare.rssPerPeer)
		pf("| goroutines per peer | %.2f | %.2f | | |\n", ours.gorPerPeer, bare.gorPerPeer)
		pf("| new connections/s (signaling: upgrade + register + reply) | %.0f | %.0f | %.2f | ≥ 5,000: %s |\n", ours.connsPerSec, bare.connsPerSec, ours.connsPerSec/bare.connsPerSec, meets(ours.connsPerSec >= 5000))
		pf("| heartbeat RTT P50 / P99 (%d pings) | %.1f / %.1f ms | — | | P99 < 28 ms: %s |\n", ours.hbN, ours.hbP50, ours.hbP99, meets(ours.hbP99 < 28))
		pf("| server CPU while idle (heartbeats only, 30 s) | %.1f %% of a core | — | | |\n", ours.cpuPct)
		pf("| peers in 2 GiB at this RSS per peer | %.0f | %.0f | | ≥ 100,000: %s |\n\n", 2*float64(1<<30)/ours.rssPerPeer, 2*float64(1<<30)/bare.rssPerPeer, meets(2*float64(1<<30)/ours.rssPerPeer >= 100000))
	}
	if only != "idle" {
		pf("Room broadcast: 100 rooms x 10 peers (two load processes x 50 rooms), every peer sends `signal` to its room at a fixed rate;\n")
		pf("latency from the sender's timestamp to each receiver's read (same clock), 10 s after a 2 s warm-up.\n\n")
		pf("| offered deliveries/s | delivered/s | P50 | P99 | server CPU (cores) | goal |\n|---|---|---|---|---|---|\n")
		for _, r := range bc {
			goal := "P99 < 41 ms: " + meets(r.p99 < 41)
			if r.target >= 128400 {
				goal = "≥ 128,400/s with P99 < 41 ms: " + meets(r.perSec >= 128400 && r.p99 < 41)
			}
			pf("| %.0f | %.0f | %.1f ms | %.1f ms | %.2f | %s |\n", r.target, r.perSec, r.p50, r.p99, r.serverCPU, goal)
		}
		if top != "" {
			pf("\nServer CPU profile during the first broadcast run (`go tool pprof -top -cum`, first lines):\n\n```\n%s```\n", top)
		}
	}
	fmt.Print(b.String())
	if write {
		if err := benchdoc.Update("signaling-load", b.String()); err != nil {
			log.Fatal(err)
		}
	}
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// profileTop summarises a CPU profile with the go tool, if available.
func profileTop(path string) string {
	self, _ := os.Executable()
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=18", self, path).Output()
	if err != nil {
		return ""
	}
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		if strings.Contains(l, "flat%") {
			return strings.Join(lines[i:min(len(lines), i+19)], "\n") + "\n"
		}
	}
	return ""
}

package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"time"

	"github.com/pion/turn/v5"
)

// probe measures round-trip times through a TURN server while a load runs:
// it allocates with pion's client, sends timestamped packets to an echo
// socket of its own on 127.0.0.1, and prints loss, p50 and p99.
//
// The gaps between probes are random (exponential, mean interval): the load
// (turnutils_uclient) sends in bursts every 5 ms, and a probe on a fixed
// 10 ms tick keeps one phase of that cycle for a whole run, so one run's
// percentiles partly said where its tick happened to fall, not how the
// server does. Poisson arrivals see every phase alike. One run's p99 still
// moves by ±20% between runs; relaybench pooled says how far to trust the
// pooled one.
func probe(args []string) {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	server := fs.String("server", "127.0.0.2:3478", "TURN server")
	user := fs.String("user", "bench", "user")
	pass := fs.String("password", "bench", "password")
	duration := fs.Duration("duration", 10*time.Second, "how long to probe")
	interval := fs.Duration("interval", 10*time.Millisecond, "mean gap between packets (exponential)")
	samples := fs.String("samples", "", "also write every RTT (µs, one per line) to this file")
	_ = fs.Parse(args)

	die := func(err error) { fmt.Fprintln(os.Stderr, "probe:", err); os.Exit(1) }
	echo, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		die(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := echo.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteToUDP(buf[:n], from)
		}
	}()
	// turnutils_uclient leaves allocations behind on ports it has closed; when
	// the kernel hands such a port to the probe, the server rightly answers
	// 437 (Allocation Mismatch), and the probe tries again from another port.
	var client *turn.Client
	var relayConn net.PacketConn
	for attempt := 1; ; attempt++ {
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			die(err)
		}
		client, err = turn.NewClient(&turn.ClientConfig{STUNServerAddr: *server, TURNServerAddr: *server,
			Conn: conn, Username: *user, Password: *pass, Realm: "rendezvous"})
		if err != nil {
			die(err)
		}
		if err := client.Listen(); err != nil {
			die(err)
		}
		relayConn, err = client.Allocate()
		if err == nil {
			break
		}
		client.Close()
		conn.Close()
		if attempt == 3 {
			die(err)
		}
	}
	defer client.Close()
	defer relayConn.Close()

	start := time.Now()
	sent := 0
	var rtts []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			_ = relayConn.SetReadDeadline(time.Now().Add(*duration + 3*time.Second - time.Since(start)))
			n, _, err := relayConn.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 8 {
				rtts = append(rtts, time.Duration(time.Now().UnixNano()-int64(binary.BigEndian.Uint64(buf))))
			}
		}
	}()
	payload := make([]byte, 200)
	next := time.Now()
	for time.Since(start) < *duration {
		next = next.Add(time.Duration(rand.ExpFloat64() * float64(*interval)))
		time.Sleep(time.Until(next))
		binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
		if _, err := relayConn.WriteTo(payload, echo.LocalAddr()); err == nil {
			sent++
		}
	}
	<-done
	slices.Sort(rtts)
	us := make([]int, len(rtts))
	for i, r := range rtts {
		us[i] = int(r.Microseconds())
	}
	if *samples != "" {
		var b []byte
		for _, v := range us {
			b = fmt.Appendf(b, "%d\n", v)
		}
		if err := os.WriteFile(*samples, b, 0o644); err != nil {
			die(err)
		}
	}
	pct := func(q float64) float64 {
		if len(us) == 0 {
			return -1
		}
		return ms(us, q)
	}
	fmt.Printf("probe sent=%d received=%d p50_ms=%.2f p99_ms=%.2f\n", sent, len(rtts), pct(0.5), pct(0.99))
}

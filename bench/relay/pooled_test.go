package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// writeRuns writes run.sh's sample files: rounds of RTTs (µs) for one server and load.
func writeRuns(t *testing.T, dir, server string, load int, rounds ...[]int) {
	t.Helper()
	for i, rtts := range rounds {
		var b strings.Builder
		for _, v := range rtts {
			b.WriteString(strconv.Itoa(v) + "\n")
		}
		name := filepath.Join(dir, "rtt."+server+"."+strconv.Itoa(load)+"."+strconv.Itoa(i+1))
		if err := os.WriteFile(name, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// ramp is n RTTs from base µs up in steps of one µs, so p99 is near base+n.
func ramp(base, n int) []int {
	r := make([]int, n)
	for i := range r {
		r[i] = base + i
	}
	return r
}

func times(rtts []int, f float64) []int {
	out := make([]int, len(rtts))
	for i, v := range rtts {
		out[i] = int(float64(v) * f)
	}
	return out
}

func TestPooledRatioAndInterval(t *testing.T) {
	dir := t.TempDir()
	// Round 2 is slow for both servers (the host had a bad stretch); the
	// relay is 1.5 times coturn in every round.
	writeRuns(t, dir, "coturn", 200, ramp(1000, 1000), ramp(3000, 1000), ramp(1000, 1000))
	writeRuns(t, dir, "rendezvous", 200, times(ramp(1000, 1000), 1.5), times(ramp(3000, 1000), 1.5), times(ramp(1000, 1000), 1.5))
	writeRuns(t, dir, "coturn", 100, ramp(500, 1000), ramp(500, 1000))
	writeRuns(t, dir, "rendezvous", 100, ramp(500, 1000), ramp(500, 1000))
	runs, err := readSamples(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := runs.loads(); len(got) != 2 || got[0] != 100 || got[1] != 200 {
		t.Fatalf("loads %v, want [100 200]", got)
	}
	if got := runs.servers(200); len(got) != 2 || got[0] != "coturn" {
		t.Fatalf("servers %v, want coturn first", got)
	}
	relay, coturn := runs[sampleKey{"rendezvous", 200}], runs[sampleKey{"coturn", 200}]
	if r := ms(pool(relay, nil), 0.99) / ms(pool(coturn, nil), 0.99); r < 1.45 || r > 1.55 {
		t.Errorf("pooled p99 ratio %.2f, want 1.5", r)
	}
	// Paired rounds: whichever rounds are drawn, the ratio stays near 1.5.
	low, high := bootstrapRatio(relay, coturn, 500)
	if low < 1.4 || high > 1.6 || low > high {
		t.Errorf("paired interval %.2f-%.2f, want about 1.5-1.5", low, high)
	}
	low, high = bootstrapRatio(runs[sampleKey{"rendezvous", 100}], runs[sampleKey{"coturn", 100}], 500)
	if low != 1 || high != 1 {
		t.Errorf("same samples: interval %.2f-%.2f, want 1-1", low, high)
	}
}

func TestReadSamplesRejectsBadFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rtt.coturn.100.1"), []byte("120\nfast\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSamples(dir); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("err %v, want one naming line 2", err)
	}
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rtt.coturn.many.1"), []byte("120\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSamples(dir); err == nil {
		t.Error("a file name without a client count was accepted")
	}
}

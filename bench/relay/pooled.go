package main

import (
	"bufio"
	"cmp"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// pooled reads the probe samples that run.sh keeps (DIR/rtt.SERVER.CLIENTS.ROUND,
// one RTT in µs per line) and prints, per load and server, RTT p50/p90/p99
// pooled over all rounds, tab-separated:
//
//	CLIENTS SERVER P50_MS P90_MS P99_MS RATIO LOW HIGH
//
// RATIO is this server's pooled p99 over coturn's at that load, and LOW-HIGH
// its 90% interval from a paired bootstrap over rounds: rounds are drawn
// with replacement, the same rounds for both servers (they ran side by side,
// so a slow stretch of the host hits both), and the p99s recomputed. One
// run's p99 moves by ±20% between rounds, so a ratio whose interval holds 1
// is a tie, not a win or a loss. coturn's own row has RATIO 1 and no interval.
func pooled(args []string) {
	fs := flag.NewFlagSet("pooled", flag.ExitOnError)
	reps := fs.Int("bootstrap", 2000, "bootstrap resamples")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: relaybench pooled [-bootstrap N] DIR")
		os.Exit(2)
	}
	runs, err := readSamples(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "pooled:", err)
		os.Exit(1)
	}
	for _, load := range runs.loads() {
		base := runs[sampleKey{"coturn", load}]
		baseP99 := ms(pool(base, nil), 0.99)
		for _, server := range runs.servers(load) {
			rounds := runs[sampleKey{server, load}]
			all := pool(rounds, nil)
			line := fmt.Sprintf("%d\t%s\t%.2f\t%.2f\t%.2f", load, server, ms(all, 0.5), ms(all, 0.9), ms(all, 0.99))
			switch {
			case server == "coturn":
				line += "\t1\t-\t-"
			case base == nil:
				line += "\t-\t-\t-"
			default:
				ratio := ms(all, 0.99) / baseP99
				low, high := bootstrapRatio(rounds, base, *reps)
				line += fmt.Sprintf("\t%.2f\t%.2f\t%.2f", ratio, low, high)
			}
			fmt.Println(line)
		}
	}
}

type sampleKey struct {
	server string
	load   int
}

// sampleRuns holds each run's sorted RTTs (µs), by round number.
type sampleRuns map[sampleKey]map[int][]int

func readSamples(dir string) (sampleRuns, error) {
	files, err := filepath.Glob(filepath.Join(dir, "rtt.*.*.*"))
	if err != nil {
		return nil, err
	}
	runs := sampleRuns{}
	for _, f := range files {
		parts := strings.Split(filepath.Base(f), ".")
		if len(parts) != 4 {
			return nil, fmt.Errorf("%s: want rtt.SERVER.CLIENTS.ROUND", f)
		}
		load, err1 := strconv.Atoi(parts[2])
		round, err2 := strconv.Atoi(parts[3])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s: want rtt.SERVER.CLIENTS.ROUND", f)
		}
		rtts, err := readRTTs(f)
		if err != nil {
			return nil, err
		}
		if len(rtts) == 0 {
			continue
		}
		k := sampleKey{parts[1], load}
		if runs[k] == nil {
			runs[k] = map[int][]int{}
		}
		runs[k][round] = rtts
	}
	return runs, nil
}

func readRTTs(path string) ([]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rtts []int
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		v, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		rtts = append(rtts, v)
	}
	return rtts, sc.Err()
}

func (r sampleRuns) loads() []int {
	var loads []int
	for k := range r {
		if !slices.Contains(loads, k.load) {
			loads = append(loads, k.load)
		}
	}
	slices.Sort(loads)
	return loads
}

// servers at a load, coturn first.
func (r sampleRuns) servers(load int) []string {
	var s []string
	for k := range r {
		if k.load == load {
			s = append(s, k.server)
		}
	}
	slices.SortFunc(s, func(a, b string) int {
		if (a == "coturn") != (b == "coturn") {
			if a == "coturn" {
				return -1
			}
			return 1
		}
		return cmp.Compare(a, b)
	})
	return s
}

// pool merges the given rounds' samples (all rounds when picks is nil), sorted.
func pool(rounds map[int][]int, picks []int) []int {
	var all []int
	if picks == nil {
		for _, rtts := range rounds {
			all = append(all, rtts...)
		}
	}
	for _, p := range picks {
		all = append(all, rounds[p]...)
	}
	slices.Sort(all)
	return all
}

// ms is the q quantile of sorted µs samples, in ms (nearest rank, like run.sh before).
func ms(sorted []int, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(float64(len(sorted)-1)*q)]) / 1000
}

// bootstrapRatio is the 5th and 95th percentile of p99(a)/p99(b) over reps
// resamples of the rounds both have.
func bootstrapRatio(a, b map[int][]int, reps int) (low, high float64) {
	var common []int
	for round := range a {
		if _, ok := b[round]; ok {
			common = append(common, round)
		}
	}
	if len(common) < 2 {
		return 0, 0
	}
	slices.Sort(common)
	rng := rand.New(rand.NewPCG(1, 2)) // fixed seed: the same samples give the same interval
	ratios := make([]float64, reps)
	picks := make([]int, len(common))
	for i := range ratios {
		for j := range picks {
			picks[j] = common[rng.IntN(len(common))]
		}
		ratios[i] = ms(pool(a, picks), 0.99) / ms(pool(b, picks), 0.99)
	}
	slices.Sort(ratios)
	return ratios[int(0.05*float64(reps-1))], ratios[int(0.95*float64(reps-1))]
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/natlab"
)

// Acceptance (issue 4): `rendezvous natcheck`, run in the lab as the real
// binary against `rendezvous serve` on the lab's server (configured with its
// second address for RFC 5780), reports each profile's behaviour.
func TestNATCheckAgainstServeInLab(t *testing.T) {
	natlab.Require(t)
	var top natlab.Topology
	for _, n := range []natlab.NAT{natlab.FullCone, natlab.AddressRestricted, natlab.PortRestricted, natlab.Symmetric, natlab.None} {
		for _, hp := range []bool{false, true} {
			if n == natlab.None && hp {
				continue
			}
			top.Routers = append(top.Routers, natlab.Router{Name: routerName(n, hp), NAT: n, Hairpin: hp, Hosts: 1})
		}
	}
	lab := natlab.New(t, top)
	srv := lab.Server()
	dir := t.TempDir()
	cfg := fmt.Sprintf("relay:\n  relay-address: %s\n  alternate-address: %s:3479\n", srv.Addr(), srv.AltAddr())
	cfgPath := filepath.Join(dir, "rendezvous.yaml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	cmd := srv.Command(context.Background(), binary, "serve", "--config", cfgPath, "--state-dir", filepath.Join(dir, "state"),
		"--http-listen", srv.Addr().String()+":8080", "--relay-listen", srv.Addr().String()+":3478", "--log-format", "json")
	p := watch(t, cmd)
	t.Cleanup(func() { killGroup(cmd) })
	p.waitLog(t, "rendezvous ready", 20*time.Second)

	for _, r := range top.Routers {
		t.Run(r.Name, func(t *testing.T) {
			t.Parallel()
			want := r.NAT.Behavior(r.Hairpin)
			out, err := lab.Router(r.Name).Hosts()[0].Command(context.Background(), binary, "natcheck", "--server", srv.Addr().String()+":3478", "--json", "--timeout", "500ms").Output()
			if err != nil {
				t.Fatalf("natcheck: %v\n%s", err, out)
			}
			var rep struct {
				UDP           bool   `json:"udp"`
				RFC5780       bool   `json:"rfc5780"`
				BehindNAT     bool   `json:"behind_nat"`
				Mapping       string `json:"mapping"`
				Filtering     string `json:"filtering"`
				PortPreserved bool   `json:"port_preserved"`
				Hairpin       string `json:"hairpin"`
			}
			if err := json.Unmarshal(out, &rep); err != nil {
				t.Fatalf("natcheck --json printed %s: %v", out, err)
			}
			if !rep.UDP || !rep.RFC5780 {
				t.Fatalf("server not usable for RFC 5780: %s", out)
			}
			if r.NAT == natlab.None {
				if rep.BehindNAT || rep.Mapping != "no-nat" {
					t.Errorf("public host reported behind a NAT: %s", out)
				}
				return
			}
			if rep.Mapping != string(want.Mapping) || rep.Filtering != string(want.Filtering) || rep.PortPreserved != want.PortPreserving {
				t.Errorf("%s: mapping %q filtering %q port-preserved %v; want %q %q %v", r.Name, rep.Mapping, rep.Filtering, rep.PortPreserved, want.Mapping, want.Filtering, want.PortPreserving)
			}
			wantHP := "no"
			if r.Hairpin {
				wantHP = "yes"
			}
			if rep.Hairpin != wantHP {
				t.Errorf("%s: hairpin %q, want %q", r.Name, rep.Hairpin, wantHP)
			}
			human, err := lab.Router(r.Name).Hosts()[0].Command(context.Background(), binary, "natcheck", "--server", srv.Addr().String(), "--timeout", "500ms").CombinedOutput()
			if err != nil || len(human) == 0 {
				t.Fatalf("natcheck (text): %v\n%s", err, human)
			}
			t.Logf("%s:\n%s", r.NAT, human)
		})
	}
}

func routerName(n natlab.NAT, hairpin bool) string {
	s := map[natlab.NAT]string{natlab.FullCone: "fc", natlab.AddressRestricted: "ar", natlab.PortRestricted: "pr", natlab.Symmetric: "sy", natlab.None: "pub"}[n]
	if hairpin {
		s += "h"
	}
	return s
}

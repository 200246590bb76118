package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rendezvous-p2p/rendezvous/punch"
)

// The text events say what probing did in words, and nothing when it was
// not needed.
func TestEventPrinterProbing(t *testing.T) {
	for _, c := range []struct {
		ev   punch.AgentEvent
		want string
	}{
		{punch.AgentEvent{Event: "probed", PeerName: "bob", TookMS: 2400, Probe: &punch.ProbeResult{Role: "prober", Probes: 231, Found: true}},
			"found a direct path to bob through a symmetric NAT (prober, 231 probes, 2.4 s)\n"},
		{punch.AgentEvent{Event: "probed", PeerName: "bob", Probe: &punch.ProbeResult{Role: "opener", Probes: 256}},
			"no direct path to bob after 256 sockets: staying on the relay\n"},
		{punch.AgentEvent{Event: "probed", PeerName: "bob", Probe: &punch.ProbeResult{Role: "prober"}}, ""},
		{punch.AgentEvent{Event: "reflexive", Addr: "198.51.100.7:4000", NAT: "address-port-dependent"},
			"public address (seen by the server): 198.51.100.7:4000, NAT mapping: address-port-dependent\n"},
		{punch.AgentEvent{Event: "relay", Addr: "203.0.113.1:50000", Reason: "renewed"},
			"relayed address (renewed): 203.0.113.1:50000\n"},
	} {
		var out bytes.Buffer
		(&eventPrinter{w: &out}).print(c.ev)
		if out.String() != c.want {
			t.Errorf("%s event printed %q, want %q", c.ev.Event, out.String(), c.want)
		}
	}
	var out bytes.Buffer
	(&eventPrinter{w: &out, asJSON: true}).print(punch.AgentEvent{Event: "probed", Probe: &punch.ProbeResult{Role: "prober", Probes: 9, Found: true}})
	if !strings.Contains(out.String(), `"probe":{"role":"prober","probes":9,"found":true}`) {
		t.Errorf("JSON probed event: %s", out.String())
	}
}

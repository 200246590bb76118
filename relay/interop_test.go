package relay

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needCoturn makes sure coturn's test tools are installed: it installs the
// Debian package when missing and possible, skips otherwise, and fails under CI.
func needCoturn(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("turnutils_uclient"); err == nil {
		return
	}
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("coturn's turnutils_uclient is not installed and installing it needs root: apt-get install coturn")
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		fail("coturn's turnutils_uclient is not installed and there is no apt-get to install it")
		return
	}
	install := func() error {
		cmd := exec.Command("apt-get", "install", "-y", "coturn")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("apt-get install coturn: %v\n%s", err, out)
		}
		return err
	}
	if install() != nil {
		_ = exec.Command("apt-get", "update").Run()
		if err := install(); err != nil {
			fail("could not install coturn: %v", err)
			return
		}
	}
	if _, err := exec.LookPath("turnutils_uclient"); err != nil {
		fail("coturn installed but turnutils_uclient not found: %v", err)
	}
}

// freeUDPPort finds a free UDP port on 127.0.0.1 for turnutils_peer.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

var (
	lostRe = regexp.MustCompile(`Total lost packets (\d+) \(([\d.]+)%\)`)
	totRe  = regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)$`)
)

// Acceptance 3: coturn's own client, turnutils_uclient, against our relay
// over UDP and TCP, with channels and with send indications, to a peer and
// client to client, with REST credentials too: 0 loss. Acceptance 5: the
// relay's counters move.
func TestInteropTurnutilsUclient(t *testing.T) {
	needCoturn(t)
	const secret = "interop-secret"
	r := startRelay(t, func(c *Config) {
		c.AllowPeers = []string{"127.0.0.1/32"} // turnutils_peer lives on loopback
		c.AuthSecrets = []string{secret}
		c.UserQuota = 0
		c.MaxAllocationsPerIP = 0
	})
	peerPort := freeUDPPort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	peer := exec.CommandContext(ctx, "turnutils_peer", "-L", "127.0.0.1", "-p", strconv.Itoa(peerPort))
	if err := peer.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = peer.Wait() }()

	port := strconv.Itoa(int(r.addr.Port()))
	// -c: no RTCP allocations (RESERVATION-TOKEN pairs, see docs/relay.md).
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"udp-channels", nil},
		{"udp-send", []string{"-s"}},
		{"udp-client-to-client", []string{"-y"}},
		{"tcp-channels", []string{"-t"}},
		{"tcp-send", []string{"-t", "-s"}},
		{"tcp-client-to-client", []string{"-t", "-y"}},
		{"tcp-relay-rfc6062", []string{"-T"}},
		{"udp-rest-credentials", []string{"-W", secret}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-c", "-n", "30", "-m", "4", "-l", "200", "-z", "5", "-p", port,
				"-e", "127.0.0.1", "-r", strconv.Itoa(peerPort), "-L", "127.0.0.1"}
			if !contains(tc.flags, "-W") {
				args = append(args, "-u", "alice", "-w", "alice-pw")
			} else {
				args = append(args, "-u", "dave")
			}
			args = append(append(args, tc.flags...), relayIP)
			cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
			defer ccancel()
			out, err := exec.CommandContext(cctx, "turnutils_uclient", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("turnutils_uclient %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			var lost, sent, recv = -1, -1, -1
			sc := bufio.NewScanner(strings.NewReader(string(out)))
			for sc.Scan() {
				if m := lostRe.FindStringSubmatch(sc.Text()); m != nil {
					lost, _ = strconv.Atoi(m[1])
				}
				if m := totRe.FindStringSubmatch(sc.Text()); m != nil {
					sent, _ = strconv.Atoi(m[1])
					recv, _ = strconv.Atoi(m[2])
				}
			}
			if lost != 0 || sent <= 0 || recv != sent {
				t.Fatalf("turnutils_uclient %s: lost=%d sent=%d received=%d, want 0 lost\n%s",
					strings.Join(args, " "), lost, sent, recv, out)
			}
			t.Logf("%s: %d messages sent and received, 0 lost", tc.name, sent)
		})
	}
	for _, m := range []struct {
		name   string
		labels map[string]string
	}{
		{"rendezvous_relay_allocations_created_total", nil},
		{"rendezvous_relay_bytes_total", map[string]string{"direction": "to_peer"}},
		{"rendezvous_relay_bytes_total", map[string]string{"direction": "from_peer"}},
		{"rendezvous_relay_packets_total", map[string]string{"direction": "to_peer"}},
		{"rendezvous_relay_allocation_lifetime_seconds", nil},
		{"rendezvous_relay_allocation_bytes", nil},
	} {
		if v := r.metric(t, m.name, m.labels); v == 0 {
			t.Errorf("%s%v did not move", m.name, m.labels)
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

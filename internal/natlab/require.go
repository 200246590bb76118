package natlab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

var (
	requireOnce   sync.Once
	requireReason string
)

// Require skips the test with a clear reason when a lab cannot run here (not
// root, no `ip`, no `nft` and it cannot be installed, namespaces not
// permitted). Under CI=true it fails the test instead: CI must run the lab.
// New calls it; call it first in tests that need the lab's tools otherwise.
func Require(t testing.TB) {
	t.Helper()
	requireOnce.Do(func() { requireReason = checkEnvironment() })
	if requireReason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("natlab: cannot run NAT lab: %s (CI=true, so this is a failure, not a skip)", requireReason)
		return
	}
	t.Skipf("natlab: skipping NAT lab test: %s", requireReason)
}

func checkEnvironment() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, nftables); run as root or under CI"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		if reason := aptInstall("iproute2"); reason != "" {
			return "`ip` (iproute2) missing and " + reason
		}
	}
	if _, err := exec.LookPath("nft"); err != nil {
		if reason := aptInstall("nftables"); reason != "" {
			return "`nft` missing and " + reason
		}
	}
	if _, err := exec.LookPath("tc"); err != nil {
		return "`tc` (iproute2) missing"
	}
	// Namespaces may be forbidden (unprivileged container): try one.
	probe := newLabPrefix() + "probe"
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("cannot create a network namespace: %v: %s", err, bytes.TrimSpace(out))
	}
	defer exec.Command("ip", "netns", "del", probe).Run()
	if out, err := exec.Command("ip", "netns", "exec", probe, "nft", "list", "ruleset").CombinedOutput(); err != nil {
		return fmt.Sprintf("nftables does not work in a namespace: %v: %s", err, bytes.TrimSpace(out))
	}
	return ""
}

// aptInstall installs a Debian package, running apt-get update once if the
// first attempt fails. It returns "" on success or why it failed.
func aptInstall(pkg string) string {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "apt-get is not available to install " + pkg
	}
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err == nil {
		return ""
	}
	if out, err := exec.Command("apt-get", "update").CombinedOutput(); err != nil {
		return fmt.Sprintf("apt-get update failed: %v: %s", err, lastLine(out))
	}
	if out, err := install(); err != nil {
		return fmt.Sprintf("apt-get install %s failed: %v: %s", pkg, err, lastLine(out))
	}
	return ""
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

var (
	netemOnce   sync.Once
	netemReason string
)

// RequireNetem skips the test when the kernel has no netem qdisc
// (CONFIG_NET_SCH_NETEM), which delay and loss need. It skips even under
// CI=true: it is a property of the kernel the machine boots, which no setup
// step can install, and only benchmarks depend on it. New calls it for
// topologies that set Router.Netem.
func RequireNetem(t testing.TB) {
	t.Helper()
	Require(t)
	if !HasNetem() {
		t.Skipf("natlab: skipping test that needs delay/loss: %s", netemReason)
	}
}

// HasNetem reports whether the kernel can delay and drop packets with netem,
// so a benchmark can fall back to delaying in its own sockets. Call it after Require.
func HasNetem() bool {
	netemOnce.Do(func() {
		probe := newLabPrefix() + "probe"
		if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
			netemReason = fmt.Sprintf("cannot create a network namespace: %v: %s", err, bytes.TrimSpace(out))
			return
		}
		defer exec.Command("ip", "netns", "del", probe).Run()
		if out, err := exec.Command("tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms").CombinedOutput(); err != nil {
			netemReason = fmt.Sprintf("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): tc: %s", bytes.TrimSpace(out))
		}
	})
	return netemReason == ""
}

package natlab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Every namespace of a lab is named "rzl<owner pid, base 36>-<lab id, base 36>-<role>",
// e.g. "rzl1b3x-4-r-a". The owner PID lets a later test process remove labs
// whose owner died without cleaning up (SIGKILL, a crashed test binary).
const namePrefix = "rzl"

var labSeq atomic.Uint64

func newLabPrefix() string {
	return fmt.Sprintf("%s%s-%s-", namePrefix, strconv.FormatInt(int64(os.Getpid()), 36),
		strconv.FormatUint(labSeq.Add(1), 36))
}

// ownerPID parses the owner PID from a lab namespace name.
func ownerPID(netns string) (int, bool) {
	rest, ok := strings.CutPrefix(netns, namePrefix)
	if !ok {
		return 0, false
	}
	pid36, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.ParseInt(pid36, 36, 32)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return int(pid), true
}

// alive reports whether a process exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// listNetns lists named network namespaces (/run/netns).
func listNetns() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// CleanStale removes the namespaces of labs whose owner process is dead,
// killing whatever still runs inside them first. It never touches labs of
// living processes, and only namespaces named with the lab prefix. New calls
// it; it returns the namespaces it removed.
func CleanStale() ([]string, error) {
	names, err := listNetns()
	if err != nil {
		return nil, err
	}
	var stale []string
	for _, n := range names {
		pid, ok := ownerPID(n)
		if !ok || pid == os.Getpid() || alive(pid) {
			continue
		}
		stale = append(stale, n)
	}
	if len(stale) == 0 {
		return nil, nil
	}
	killInside(stale)
	var errs []error
	for _, n := range stale {
		if out, err := exec.Command("ip", "netns", "del", n).CombinedOutput(); err != nil {
			// Another process may have removed it at the same moment.
			if _, serr := os.Stat("/run/netns/" + n); serr == nil {
				errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", n, err, bytes.TrimSpace(out)))
			}
		}
	}
	return stale, errors.Join(errs...)
}

// killInside SIGKILLs every process running in the named namespaces.
func killInside(netns []string) {
	for _, n := range netns {
		out, err := exec.Command("ip", "netns", "pids", n).Output()
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
			if err != nil || pid <= 1 || pid == os.Getpid() {
				continue
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

package natlab

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzOwnerPID: stale cleanup parses the owner PID out of any namespace name
// on the machine; it must never panic, and must accept only names it could
// have produced.
func FuzzOwnerPID(f *testing.F) {
	f.Add("rzl1b3x-4-r-a")
	f.Add("rzl-1-sw")
	f.Add("rzlzzzzzzzzzzzzzz-1-sw")
	f.Add("other")
	f.Add("rzl0-1-srv")
	f.Fuzz(func(t *testing.T, name string) {
		pid, ok := ownerPID(name)
		if !ok {
			return
		}
		if pid <= 0 {
			t.Fatalf("ownerPID(%q) = %d", name, pid)
		}
		rest := strings.TrimPrefix(name, namePrefix)
		pid36, _, _ := strings.Cut(rest, "-")
		if v, err := strconv.ParseInt(pid36, 36, 64); err != nil || int(v) != pid {
			t.Fatalf("ownerPID(%q) = %d, but the name encodes %q", name, pid, pid36)
		}
	})
}

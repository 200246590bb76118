package lanbeacon

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportGraph keeps the library light for games: no HTTP server,
// Prometheus, cobra or websocket anywhere below it.
func TestImportGraph(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"net/http", "prometheus", "spf13/cobra", "websocket", "quic-go", "pion/"} {
			if strings.Contains(pkg, banned) {
				t.Errorf("lanbeacon depends on %s", pkg)
			}
		}
	}
}

// Package systemd holds the unit, sysusers.d, tmpfiles.d snippets and default
// config that the rendezvous package installs; these tests build the real
// .deb once (scripts/package.sh), check its contents, install it into a
// scratch root with dpkg, and check the unit with systemd-analyze.
package systemd

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/rendezvous-p2p/rendezvous/internal/config"
	"github.com/rendezvous-p2p/rendezvous/internal/sdnotifytest"
	"github.com/rendezvous-p2p/rendezvous/punch/natcheck"
)

var (
	repoRoot, _ = filepath.Abs("..")
	workDir     string // removed by TestMain
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rendezvous-pkgtest")
	if err != nil {
		panic(err)
	}
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// skip skips the test with a reason, except under CI=true where a missing
// prerequisite is a failure.
func skip(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and %s", msg)
	}
	t.Skip(msg)
}

var (
	toolsOnce sync.Once
	toolsErr  error
)

// needTools makes sure dpkg, dpkg-deb and systemd's tools are on PATH,
// installing Debian's systemd package when run as root with apt-get.
func needTools(t *testing.T) {
	t.Helper()
	want := []string{"dpkg", "dpkg-deb", "systemd-analyze", "systemd-sysusers", "systemd-tmpfiles"}
	toolsOnce.Do(func() {
		var missing []string
		for _, tool := range want {
			if _, err := exec.LookPath(tool); err != nil {
				missing = append(missing, tool)
			}
		}
		if len(missing) == 0 {
			return
		}
		toolsErr = aptInstall("systemd", "dpkg")
	})
	if toolsErr != nil {
		skip(t, "package tests need %v: %v", want, toolsErr)
	}
}

// aptInstall installs Debian packages (root with apt-get only), running
// apt-get update when the first try fails.
func aptInstall(pkgs ...string) error {
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fmt.Errorf("not root with apt-get to install %v", pkgs)
	}
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err == nil {
		return nil
	}
	if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %v: %s", err, out)
	}
	if out, err := install(); err != nil {
		return fmt.Errorf("apt-get install %v: %v: %s", pkgs, err, out)
	}
	return nil
}

var (
	buildOnce sync.Once
	debPath   string
	rpmPath   string
	buildErr  error
)

// packages builds the .deb and .rpm for this machine's architecture once.
func packages(t *testing.T) (deb, rpm string) {
	t.Helper()
	needTools(t)
	buildOnce.Do(func() {
		dist := filepath.Join(workDir, "dist")
		cmd := exec.Command("./scripts/package.sh")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "ARCHES="+runtime.GOARCH, "FORMATS=deb rpm", "DIST="+dist, "VERSION=1.2.3-test")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("scripts/package.sh: %v\n%s", err, out)
			return
		}
		debs, _ := filepath.Glob(filepath.Join(dist, "*.deb"))
		rpms, _ := filepath.Glob(filepath.Join(dist, "*.rpm"))
		if len(debs) != 1 || len(rpms) != 1 {
			buildErr = fmt.Errorf("want one .deb and one .rpm in %s, got %v %v\n%s", dist, debs, rpms, out)
			return
		}
		debPath, rpmPath = debs[0], rpms[0]
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return debPath, rpmPath
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// debArch is Debian's name for this machine's architecture.
func debArch() string {
	if runtime.GOARCH == "arm64" {
		return "arm64"
	}
	return runtime.GOARCH
}

func TestDebContents(t *testing.T) {
	deb, rpm := packages(t)
	info := run(t, "dpkg-deb", "-I", deb)
	for _, want := range []string{
		"Package: rendezvous", "Version: 1.2.3~test", "Architecture: " + debArch(), "Section: net",
		" postinst ", " prerm ", " postrm ", " conffiles ",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb -I lacks %q:\n%s", want, info)
		}
	}
	ctl := filepath.Join(workDir, "control")
	run(t, "dpkg-deb", "-e", deb, ctl)
	cf, err := os.ReadFile(filepath.Join(ctl, "conffiles"))
	if err != nil || strings.TrimSpace(string(cf)) != "/etc/rendezvous/rendezvous.yaml" {
		t.Errorf("conffiles = %q, %v; want the config only, so upgrades keep the operator's edits", cf, err)
	}

	listing := run(t, "dpkg-deb", "-c", deb)
	modes := map[string]string{}
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 {
			modes[strings.TrimPrefix(f[len(f)-1], ".")] = f[0] + " " + f[1]
		}
	}
	for path, want := range map[string]string{
		"/usr/bin/rendezvous":                              "-rwxr-xr-x root/root",
		"/usr/lib/systemd/system/rendezvous.service":       "-rw-r--r-- root/root",
		"/usr/lib/sysusers.d/rendezvous.conf":              "-rw-r--r-- root/root",
		"/usr/lib/tmpfiles.d/rendezvous.conf":              "-rw-r--r-- root/root",
		"/etc/rendezvous/rendezvous.yaml":                  "-rw-r----- root/root",
		"/etc/rendezvous/tls/":                             "drwxr-x--- root/root",
		"/usr/share/doc/rendezvous/self-hosting.md":        "-rw-r--r-- root/root",
		"/usr/share/doc/rendezvous/grafana-dashboard.json": "-rw-r--r-- root/root",
	} {
		if got, ok := modes[path]; !ok {
			t.Errorf("%s missing from the .deb:\n%s", path, listing)
		} else if got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
	if st, err := os.Stat(rpm); err != nil || st.Size() < 1<<20 {
		t.Errorf("rpm %s: %v (size %v): not a package holding the binary", rpm, err, st)
	}
	if _, err := exec.LookPath("rpm"); err == nil {
		list := run(t, "rpm", "-qlp", rpm)
		for _, want := range []string{"/usr/bin/rendezvous", "/usr/lib/systemd/system/rendezvous.service", "/etc/rendezvous/rendezvous.yaml"} {
			if !strings.Contains(list, want) {
				t.Errorf("rpm lacks %s:\n%s", want, list)
			}
		}
		if cf := strings.TrimSpace(run(t, "rpm", "-qpc", rpm)); cf != "/etc/rendezvous/rendezvous.yaml" {
			t.Errorf("rpm config files %q, want the config only", cf)
		}
		if scripts := run(t, "rpm", "-qp", "--scripts", rpm); !strings.Contains(scripts, "systemd-sysusers") {
			t.Errorf("rpm scriptlets do not create the user:\n%s", scripts)
		}
	}
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// installedRoot is a scratch root with the .deb installed by dpkg, maintainer
// scripts included (they honour DPKG_ROOT), plus what systemd-analyze needs
// from a real system: the host's target and slice units and /bin/kill.
func installedRoot(t *testing.T) string {
	t.Helper()
	deb, _ := packages(t)
	rootOnce.Do(func() {
		r := filepath.Join(workDir, "root")
		for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "usr/bin", "usr/lib/systemd/system"} {
			os.MkdirAll(filepath.Join(r, d), 0o755)
		}
		os.WriteFile(filepath.Join(r, "var/lib/dpkg/status"), nil, 0o644)
		os.WriteFile(filepath.Join(r, "var/lib/dpkg/available"), nil, 0o644)
		os.Symlink("usr/bin", filepath.Join(r, "bin")) // merged /usr, as on Debian 12 and Ubuntu
		out, err := exec.Command("dpkg", "--root="+r, "--force-script-chrootless", "--force-not-root", "-i", deb).CombinedOutput()
		if err != nil {
			rootErr = fmt.Errorf("dpkg --root -i: %v\n%s", err, out)
			return
		}
		rootDir = r
	})
	if rootErr != nil {
		t.Fatal(rootErr)
	}
	return rootDir
}

// analyzeRoot adds to the installed root what systemd-analyze resolves.
func analyzeRoot(t *testing.T) string {
	t.Helper()
	r := installedRoot(t)
	if _, err := os.Stat(filepath.Join(r, "usr/bin/kill")); err == nil {
		return r
	}
	kill, err := exec.LookPath("kill")
	if err != nil {
		skip(t, "no kill binary to stand in for /bin/kill: %v", err)
	}
	copyFile(t, kill, filepath.Join(r, "usr/bin/kill"), 0o755)
	for _, dir := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		for _, pat := range []string{"*.target", "*.slice"} {
			units, _ := filepath.Glob(filepath.Join(dir, pat))
			for _, u := range units {
				dst := filepath.Join(r, "usr/lib/systemd/system", filepath.Base(u))
				if _, err := os.Lstat(dst); err == nil {
					continue
				}
				if target, err := os.Readlink(u); err == nil {
					os.Symlink(target, dst)
				} else {
					copyFile(t, u, dst, 0o644)
				}
			}
		}
	}
	return r
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}

// unitDirectives reads the installed unit's [Service] directives.
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// passwdEntry finds name in a passwd or group file: its uid or gid.
func passwdEntry(t *testing.T, file, name string) int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == name {
			id, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("%s: bad id in %q", file, line)
			}
			return id
		}
	}
	t.Fatalf("%s has no entry %q:\n%s", file, name, data)
	return -1
}

func TestDebInstallPutsEverythingWhereTheUnitExpects(t *testing.T) {
	r := installedRoot(t)
	unit := filepath.Join(r, "usr/lib/systemd/system/rendezvous.service")
	d := unitDirectives(t, unit)

	// Every command the unit runs exists and is executable in the root.
	for _, key := range []string{"ExecStart", "ExecStartPre"} {
		for _, cmdline := range d[key] {
			bin := strings.Fields(strings.TrimLeft(cmdline, "-+!@:"))[0]
			st, err := os.Stat(filepath.Join(r, bin))
			if err != nil || st.Mode()&0o111 == 0 {
				t.Errorf("%s=%s: %s not an executable in the installed root: %v", key, cmdline, bin, err)
			}
		}
	}
	// The user the unit runs as was created (sysusers.d, run by postinst).
	user, group := d["User"][0], d["Group"][0]
	uid := passwdEntry(t, filepath.Join(r, "etc/passwd"), user)
	gid := passwdEntry(t, filepath.Join(r, "etc/group"), group)
	if uid == 0 || uid >= 1000 {
		t.Errorf("%s has uid %d, want a system uid (1-999)", user, uid)
	}
	// StateDirectory= and ConfigurationDirectory= exist with the owners and
	// modes the service needs (tmpfiles.d, run by postinst).
	check := func(path string, wantUID, wantGID int, wantMode os.FileMode) {
		t.Helper()
		st, err := os.Stat(filepath.Join(r, path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
			return
		}
		sys := st.Sys().(*syscall.Stat_t)
		if int(sys.Uid) != wantUID || int(sys.Gid) != wantGID || st.Mode().Perm() != wantMode {
			t.Errorf("%s: uid %d gid %d mode %v, want %d %d %v", path, sys.Uid, sys.Gid, st.Mode().Perm(), wantUID, wantGID, wantMode)
		}
	}
	state := "var/lib/" + d["StateDirectory"][0]
	conf := "etc/" + d["ConfigurationDirectory"][0]
	check(state, uid, gid, 0o700)
	check(conf, 0, gid, 0o750)
	check(conf+"/rendezvous.yaml", 0, gid, 0o640) // readable by the service, not by others: it may hold secrets
	check(conf+"/tls", 0, gid, 0o750)

	// The binary is static and the packaged config is accepted by it, with
	// the state directory the unit gives it.
	bin := filepath.Join(r, "usr/bin/rendezvous")
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: not a static binary", bin)
		}
	}
	ef.Close()
	if out := run(t, bin, "version"); !strings.Contains(out, "rendezvous 1.2.3-test") {
		t.Errorf("rendezvous version: %q, want the package version", out)
	}
	printed := run(t, bin, "serve", "--config", filepath.Join(r, conf, "rendezvous.yaml"), "--print-config")
	var got struct {
		StateDir string `yaml:"state-dir"`
	}
	if err := yaml.Unmarshal([]byte(printed), &got); err != nil || got.StateDir != "/"+state {
		t.Errorf("packaged config: state-dir %q (%v), want the unit's StateDirectory /%s", got.StateDir, err, state)
	}

}

func TestUnitVerifies(t *testing.T) {
	r := analyzeRoot(t)
	cmd := exec.Command("systemd-analyze", "verify", "--root="+r, "rendezvous.service")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v; every warning counts:\n%s", err, out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for rendezvous\.service: ([0-9.]+)`)

func exposure(t *testing.T, r string) float64 {
	t.Helper()
	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", "--root="+r, "--no-pager", "rendezvous.service").CombinedOutput()
	m := exposureRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in systemd-analyze security output:\n%s", out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func TestUnitExposureAtMost2(t *testing.T) {
	r := analyzeRoot(t)
	if v := exposure(t, r); v > 2.0 {
		t.Errorf("exposure %.1f, want at most 2.0", v)
	} else {
		t.Logf("systemd-analyze security --offline=true: exposure %.1f", v)
	}

	// The drop-in the guide gives for ports below 1024 stays within bounds too.
	dropDir := filepath.Join(r, "etc/systemd/system/rendezvous.service.d")
	if err := os.MkdirAll(dropDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dropIn := filepath.Join(dropDir, "low-ports.conf")
	defer os.RemoveAll(filepath.Join(r, "etc/systemd/system"))
	if err := os.WriteFile(dropIn, []byte(lowPortsDropIn(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if v := exposure(t, r); v > 2.0 {
		t.Errorf("with the low-ports drop-in: exposure %.1f, want at most 2.0", v)
	} else {
		t.Logf("with the CAP_NET_BIND_SERVICE drop-in: exposure %.1f", v)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--root="+r, "rendezvous.service").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("verify with the drop-in: %v\n%s", err, out)
	}
}

// lowPortsDropIn is the drop-in documented in the unit's header comment.
func lowPortsDropIn(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("rendezvous.service")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "#   AmbientCapabilities=") || strings.HasPrefix(l, "#   CapabilityBoundingSet=") {
			lines = append(lines, strings.TrimPrefix(l, "#   "))
		}
	}
	if len(lines) != 2 {
		t.Fatalf("the unit's header does not document the two-line low-ports drop-in: %q", lines)
	}
	return "[Service]\n" + strings.Join(lines, "\n") + "\n"
}

// defaultLine is a commented default in the shipped config: "#key: value",
// no space after '#'.
var defaultLine = regexp.MustCompile(`^(\s*)#([a-z][a-z0-9-]*:.*)$`)

func TestShippedConfigIsValidAndItsCommentedDefaultsAreTheDefaults(t *testing.T) {
	data, err := os.ReadFile("rendezvous.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shipped, err := config.Parse("rendezvous.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if err := shipped.Validate(); err != nil {
		t.Fatalf("shipped config does not validate: %v", err)
	}
	var uncommented []string
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if m := defaultLine.FindStringSubmatch(l); m != nil {
			l = m[1] + m[2]
			n++
		}
		uncommented = append(uncommented, l)
	}
	if n < 20 {
		t.Fatalf("only %d commented defaults found; the pattern no longer matches the file", n)
	}
	all, err := config.Parse("uncommented", []byte(strings.Join(uncommented, "\n")))
	if err != nil {
		t.Fatalf("uncommenting every default gives an invalid config: %v", err)
	}
	a, _ := config.Marshal(all)
	b, _ := config.Marshal(shipped)
	if !bytes.Equal(a, b) {
		t.Errorf("a commented line is not the built-in default:\nuncommented:\n%s\nshipped:\n%s", a, b)
	}
}

func TestPackagedBinaryServesAndDashboardMetricsExist(t *testing.T) {
	r := installedRoot(t)
	bin := filepath.Join(r, "usr/bin/rendezvous")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "rendezvous.yaml")
	os.WriteFile(cfg, []byte("relay:\n  listen: \"127.0.0.1:0\"\n  relay-address: 127.0.0.1\n"), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--config", cfg, "--state-dir", filepath.Join(dir, "state"),
		"--http-listen", "127.0.0.1:0", "--log-format", "json")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, HTTP string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "rendezvous ready" {
				addr <- line.HTTP
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-ctx.Done():
		t.Fatal("the packaged binary did not log \"rendezvous ready\"")
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}

	// Every metric the dashboard queries is served now, or (labelled series
	// that appear on first use) is declared in the source.
	dash, err := os.ReadFile(filepath.Join(repoRoot, "docs/grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("docs/grafana-dashboard.json: %v", err)
	}
	source := goSource(t)
	metricRE := regexp.MustCompile(`\b((?:rendezvous|process|go)_[a-z0-9_]+)`)
	checked := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricRE.FindAllString(tg.Expr, -1) {
				name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				checked++
				if _, ok := families[name]; ok {
					continue
				}
				if strings.HasPrefix(name, "rendezvous_") && declared(source, name) {
					continue
				}
				t.Errorf("panel %q queries %s, which the server neither serves nor declares", p.Title, name)
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d metric references found in the dashboard", checked)
	}
}

// goSource is every non-test Go file of the module, concatenated.
func goSource(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(repoRoot, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != repoRoot {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			data, _ := os.ReadFile(path)
			b.Write(data)
		}
		return nil
	})
	return b.String()
}

// declared reports whether name is registered in the source: as a full
// literal, or as Name "x" under Namespace "rendezvous" and Subsystem "sub".
func declared(source, name string) bool {
	if strings.Contains(source, `"`+name+`"`) {
		return true
	}
	rest := strings.TrimPrefix(name, "rendezvous_")
	sub, short, ok := strings.Cut(rest, "_")
	return ok && strings.Contains(source, `"`+sub+`"`) && strings.Contains(source, `Name: "`+short+`"`)
}

// syscallGroups expands systemd's syscall groups (`systemd-analyze syscall-filter`).
func syscallGroups(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("systemd-analyze", "syscall-filter", "--no-pager").Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter: %v", err)
	}
	groups := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(string(out), "\n") {
		s := strings.TrimSpace(line)
		switch {
		case s == "" || strings.HasPrefix(s, "#"):
		case strings.HasPrefix(line, "@"):
			cur = s
		case cur != "":
			groups[cur] = append(groups[cur], s)
		}
	}
	return groups
}

func expandSyscalls(groups map[string][]string, names []string) map[string]bool {
	out := map[string]bool{}
	for _, n := range names {
		if strings.HasPrefix(n, "@") {
			for m := range expandSyscalls(groups, groups[n]) {
				out[m] = true
			}
		} else {
			out[n] = true
		}
	}
	return out
}

// The unit's SystemCallFilter= and RestrictAddressFamilies= are enforced by
// systemd, which this machine may not run as PID 1; so the packaged binary is
// traced (strace) through what the service does — READY and watchdog
// notifications, /metrics, a STUN exchange, a SIGHUP reload, a SIGTERM drain —
// and every system call and socket family it uses must be inside the unit's
// sandbox: one outside would be EPERM (SystemCallErrorNumber=EPERM) in production.
func TestPackagedBinaryStaysInsideTheUnitSandbox(t *testing.T) {
	r := installedRoot(t)
	if _, err := exec.LookPath("strace"); err != nil {
		if err := aptInstall("strace"); err != nil {
			skip(t, "strace is not installed and could not be: %v", err)
		}
	}
	d := unitDirectives(t, filepath.Join(r, "usr/lib/systemd/system/rendezvous.service"))
	groups := syscallGroups(t)
	allowed := map[string]bool{}
	for _, f := range d["SystemCallFilter"] {
		if deny, ok := strings.CutPrefix(f, "~"); ok {
			for sc := range expandSyscalls(groups, strings.Fields(deny)) {
				delete(allowed, sc)
			}
		} else {
			for sc := range expandSyscalls(groups, strings.Fields(f)) {
				allowed[sc] = true
			}
		}
	}
	if len(allowed) < 100 {
		t.Fatalf("SystemCallFilter= expands to only %d system calls: parsing went wrong", len(allowed))
	}
	families := map[string]bool{}
	for _, f := range strings.Fields(strings.Join(d["RestrictAddressFamilies"], " ")) {
		families[f] = true
	}

	dir := t.TempDir()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0") // a free port for the relay, released before start
	if err != nil {
		t.Fatal(err)
	}
	relayAddr := udp.LocalAddr().String()
	udp.Close()
	cfg := filepath.Join(dir, "rendezvous.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("relay:\n  listen: %q\n  relay-address: 127.0.0.1\n", relayAddr)), 0o600)
	notify := sdnotifytest.New(t)
	trace := filepath.Join(dir, "trace")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "strace", "-f", "-qq", "-o", trace,
		filepath.Join(r, "usr/bin/rendezvous"), "serve", "--config", cfg, "--state-dir", filepath.Join(dir, "state"),
		"--http-listen", "127.0.0.1:0", "--log-format", "json")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify.Path, "WATCHDOG_USEC=400000", "WATCHDOG_PID=")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, HTTP string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "rendezvous ready" {
				addr <- line.HTTP
			}
		}
	}()
	notify.Expect(t, "READY=1", 30*time.Second)
	notify.Expect(t, "WATCHDOG=1", 5*time.Second)
	base := "http://" + <-addr
	for _, path := range []string{"/readyz", "/metrics"} {
		resp, err := http.Get(base + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", path, err, resp)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	ncCtx, ncCancel := context.WithTimeout(ctx, 20*time.Second)
	report, err := natcheck.Check(ncCtx, natcheck.Options{Server: relayAddr, Timeout: time.Second})
	ncCancel()
	if err != nil || !report.UDP {
		t.Fatalf("natcheck against the traced server: %v %+v", err, report)
	}
	// The strace parent relays signals to nobody: signal the traced process itself.
	child := tracedChild(t, cmd.Process.Pid)
	child.Signal(syscall.SIGHUP)
	notify.Expect(t, "RELOADING=1", 10*time.Second)
	notify.Expect(t, "READY=1", 10*time.Second)
	child.Signal(syscall.SIGTERM)
	notify.Expect(t, "STOPPING=1", 10*time.Second)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("strace/rendezvous exit: %v", err)
	}

	data, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	callRE := regexp.MustCompile(`(?m)^\d+\s+([a-z0-9_]+)\(`)
	famRE := regexp.MustCompile(`socket\((AF_[A-Z0-9]+)`)
	used := map[string]bool{}
	for _, m := range callRE.FindAllStringSubmatch(string(data), -1) {
		used[m[1]] = true
	}
	if len(used) < 20 {
		t.Fatalf("only %d distinct system calls traced: the trace is not of the server", len(used))
	}
	var outside []string
	for sc := range used {
		if !allowed[sc] {
			outside = append(outside, sc)
		}
	}
	if len(outside) > 0 {
		t.Errorf("system calls outside SystemCallFilter= (EPERM under systemd): %v", outside)
	}
	for _, m := range famRE.FindAllStringSubmatch(string(data), -1) {
		if !families[m[1]] {
			t.Errorf("socket family %s outside RestrictAddressFamilies=%v", m[1], d["RestrictAddressFamilies"])
		}
	}
	t.Logf("%d distinct system calls, all inside the unit's filter", len(used))
}

// tracedChild is the process strace started.
func tracedChild(t *testing.T, stracePID int) *os.Process {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", stracePID, stracePID))
	if err != nil {
		t.Fatalf("finding the traced process: %v", err)
	}
	f := strings.Fields(string(data))
	if len(f) != 1 {
		t.Fatalf("strace has children %q, want one", f)
	}
	pid, _ := strconv.Atoi(f[0])
	p, err := os.FindProcess(pid)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// LimitNOFILE must hold the default peer target: a WebSocket per peer up to
// signaling.max-peers, plus two sockets per relay port (a UDP allocation's
// relay socket and its client's own socket).
func TestLimitNOFILECoversThePeerTarget(t *testing.T) {
	d := unitDirectives(t, "rendezvous.service")
	limit, err := strconv.Atoi(d["LimitNOFILE"][0])
	if err != nil {
		t.Fatalf("LimitNOFILE=%v: %v", d["LimitNOFILE"], err)
	}
	def := config.Default()
	need := def.Signaling.MaxPeers + 2*(def.Relay.PortRangeMax-def.Relay.PortRangeMin+1)
	if limit < need {
		t.Errorf("LimitNOFILE=%d < %d (max-peers %d + 2 × relay ports %d-%d)", limit, need,
			def.Signaling.MaxPeers, def.Relay.PortRangeMin, def.Relay.PortRangeMax)
	}
}

// Runs last (tests run in file order): the other tests use the installed root.
func TestDebPurgeRemovesFilesAndState(t *testing.T) {
	r := installedRoot(t)
	secret := filepath.Join(r, "var/lib/rendezvous/turn-secret")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dpkg", "--root="+r, "--force-script-chrootless", "--purge", "rendezvous").CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg --purge: %v\n%s", err, out)
	}
	for _, gone := range []string{"usr/bin/rendezvous", "usr/lib/systemd/system/rendezvous.service", "etc/rendezvous/rendezvous.yaml", "var/lib/rendezvous"} {
		if _, err := os.Stat(filepath.Join(r, gone)); err == nil {
			t.Errorf("/%s left behind by purge", gone)
		}
	}
	passwdEntry(t, filepath.Join(r, "etc/passwd"), "rendezvous") // the user stays: its uid must not be recycled
	rootOnce = sync.Once{}                                       // a later test (-count>1) installs afresh
	os.RemoveAll(r)
}

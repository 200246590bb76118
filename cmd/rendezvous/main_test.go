package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/turn/v5"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
	"github.com/spf13/cobra"
)

// binary is the real rendezvous built once for the end-to-end tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rendezvous-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "rendezvous")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building rendezvous: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running `rendezvous serve` whose JSON log lines are collected.
type proc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []map[string]any
	added chan struct{}
	exit  chan error
}

// startServe runs the binary as a new user would: in an empty directory, with
// a fresh HOME, no config file. extra flags are appended.
func startServe(t *testing.T, home string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"serve", "--http-listen", "127.0.0.1:0", "--relay-listen", "127.0.0.1:0", "--public-host", "127.0.0.1", "--log-format", "json"}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.Dir = home
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_STATE_HOME="+filepath.Join(home, "xdg"), "STATE_DIRECTORY=", "NOTIFY_SOCKET=")
	return watch(t, cmd)
}

// watch starts cmd and collects its stderr as JSON log lines (or text).
func watch(t testing.TB, cmd *exec.Cmd) *proc {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	return watchPipe(t, cmd, stderr)
}

// watchStdout is watch for a command that prints its JSON lines on stdout.
func watchStdout(t testing.TB, cmd *exec.Cmd) *proc {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	return watchPipe(t, cmd, stdout)
}

func watchPipe(t testing.TB, cmd *exec.Cmd, stderr io.ReadCloser) *proc {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, added: make(chan struct{}, 1), exit: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"msg": sc.Text()}
			}
			p.mu.Lock()
			p.lines = append(p.lines, m)
			p.mu.Unlock()
			select {
			case p.added <- struct{}{}:
			default:
			}
		}
		p.exit <- cmd.Wait()
	}()
	// Kill is safe beside the goroutine's Wait and a no-op once the process
	// is done; reading cmd.ProcessState here would race with that Wait.
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return p
}

// waitLog waits for a log line with the given msg and returns it.
func (p *proc) waitLog(t testing.TB, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	return p.waitLine(t, "msg="+msg, func(l map[string]any) bool { return l["msg"] == msg }, timeout)
}

// waitEvent waits for a `connect --json` event of the given kind.
func (p *proc) waitEvent(t testing.TB, event string, timeout time.Duration) map[string]any {
	t.Helper()
	return p.waitLine(t, "event="+event, func(l map[string]any) bool { return l["event"] == event }, timeout)
}

func (p *proc) waitLine(t testing.TB, what string, match func(map[string]any) bool, timeout time.Duration) map[string]any {
	t.Helper()
	l, err := p.findLine(match, timeout)
	if err != nil {
		t.Fatalf("%v before %s; output:\n%s", err, what, p.dump())
	}
	return l
}

// findLine is waitLine that reports instead of failing the test: nil and why
// when the process exited or the timeout passed first.
func (p *proc) findLine(match func(map[string]any) bool, timeout time.Duration) (map[string]any, error) {
	deadline := time.After(timeout)
	seen := 0
	for {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if match(p.lines[seen]) {
				l := p.lines[seen]
				p.mu.Unlock()
				return l, nil
			}
		}
		p.mu.Unlock()
		select {
		case <-p.added:
		case err := <-p.exit:
			p.exit <- err
			p.mu.Lock()
			n := len(p.lines)
			p.mu.Unlock()
			if seen < n {
				continue // lines arrived with the exit: look at them first
			}
			return nil, fmt.Errorf("process exited (%v)", err)
		case <-deadline:
			return nil, fmt.Errorf("nothing within %v", timeout)
		}
	}
}

func (p *proc) dump() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines {
		j, _ := json.Marshal(l)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func (p *proc) waitExit(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.exit:
		return err
	case <-time.After(timeout):
		t.Fatalf("rendezvous did not exit within %v", timeout)
		return nil
	}
}

func httpGet(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestServeAsANewUser(t *testing.T) {
	home := t.TempDir()
	p := startServe(t, home)
	ready := p.waitLog(t, "rendezvous ready", 20*time.Second)
	base := "http://" + ready["http"].(string)
	stateDir := ready["state_dir"].(string)
	if want := filepath.Join(home, "xdg", "rendezvous"); stateDir != want {
		t.Errorf("state dir %q, want the XDG default %q", stateDir, want)
	}

	if code, body := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d %s", code, body)
	}
	code, body := httpGet(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := parser.TextToMetricFamilies(bytes.NewReader(body)); err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
	}

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.waitExit(t, 11*time.Second); err != nil {
		t.Fatalf("SIGTERM: exit %v, want 0; log:\n%s", err, p.dump())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("drain took %v, over the 10s bound", d)
	}
}

func TestSIGHUPReload(t *testing.T) {
	home := t.TempDir()
	cfgPath := filepath.Join(home, "rendezvous.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfgPath, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("log:\n  level: info\n")
	p := startServe(t, home, "--config", cfgPath)
	ready := p.waitLog(t, "rendezvous ready", 20*time.Second)
	base := "http://" + ready["http"].(string)

	write("log:\n  level: info\n  colour: blue\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	refused := p.waitLog(t, "reload refused; the old configuration keeps running", 10*time.Second)
	if !strings.Contains(fmt.Sprint(refused["error"]), `log.colour`) {
		t.Errorf("refusal does not name the key: %v", refused["error"])
	}
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("not serving after a refused reload: %d", code)
	}

	write("log:\n  level: debug\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog(t, "configuration reloaded", 10*time.Second)
	_, body := httpGet(t, base+"/metrics")
	if !strings.Contains(string(body), `rendezvous_config_reloads_total{result="applied"} 1`) {
		t.Errorf("applied reload not counted")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 11*time.Second); err != nil {
		t.Fatalf("exit %v", err)
	}
}

func run(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_STATE_HOME="+filepath.Join(dir, "xdg"), "STATE_DIRECTORY=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct{ file, want string }{
		{write("unknown.yaml", "http:\n  listen: \":8080\"\n  tls: yes\n"), `line 3: unknown key "http.tls"`},
		{write("port.yaml", "http:\n  listen: \":65536\"\n"), `http.listen: port "65536"`},
	}
	for _, tc := range cases {
		out, err := run(t, dir, "serve", "--config", tc.file, "--check")
		if err == nil {
			t.Errorf("%s: serve --check succeeded", tc.file)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("%s: output %q does not contain %q", tc.file, out, tc.want)
		}
	}
	if out, err := run(t, dir, "serve", "--config", filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(out, "missing.yaml") {
		t.Errorf("missing explicit config: %v %q", err, out)
	}
}

func TestPrintConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	first, err := run(t, dir, "serve", "--print-config", "--http-listen", "127.0.0.1:9", "--log-level", "warn", "--state-dir", dir)
	if err != nil {
		t.Fatalf("%v: %s", err, first)
	}
	cfgPath := filepath.Join(dir, "printed.yaml")
	os.WriteFile(cfgPath, []byte(first), 0o600)
	second, err := run(t, dir, "serve", "--print-config", "--config", cfgPath)
	if err != nil {
		t.Fatalf("printed config not accepted: %v: %s", err, second)
	}
	if first != second {
		t.Errorf("print-config is not a fixed point:\n--- first\n%s\n--- second\n%s", first, second)
	}
	if !strings.Contains(first, "listen: 127.0.0.1:9") || !strings.Contains(first, "level: warn") {
		t.Errorf("flags did not override defaults:\n%s", first)
	}
}

func TestCheckFailsOnPortInUse(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	dir := t.TempDir()
	out, err := run(t, dir, "serve", "--check", "--relay-listen", "127.0.0.1:0", "--http-listen", held.Addr().String())
	if err == nil {
		t.Fatalf("--check passed with the port taken: %s", out)
	}
	if want := "tcp " + held.Addr().String() + ": address already in use"; !strings.Contains(out, want) {
		t.Errorf("output %q lacks %q", out, want)
	}
	held.Close()
	if out, err := run(t, dir, "serve", "--check", "--relay-listen", "127.0.0.1:0", "--http-listen", held.Addr().String()); err != nil || !strings.Contains(out, "configuration OK") {
		t.Errorf("--check on a free port: %v %s", err, out)
	}
}

func TestEveryCommandHasHelpWithExample(t *testing.T) {
	root := newRootCmd()
	var check func(path string, c *cobra.Command)
	check = func(path string, c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		if c.Runnable() && strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s has no example in --help", path)
		}
		for _, sub := range c.Commands() {
			check(path+" "+sub.Name(), sub)
		}
	}
	check("rendezvous", root)
}

// A credential handed out before a restart still works after it: the TURN
// secret is generated once and kept in the state directory.
func TestSecretsSurviveRestart(t *testing.T) {
	home := t.TempDir()
	// Relay sockets on loopback; found through the ./rendezvous.yaml search.
	if err := os.WriteFile(filepath.Join(home, "rendezvous.yaml"), []byte("relay:\n  relay-address: 127.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, home)
	ready := p.waitLog(t, "rendezvous ready", 20*time.Second)
	code, body := httpGet(t, "http://"+ready["http"].(string)+"/v1/ice-servers")
	if code != 200 {
		t.Fatalf("/v1/ice-servers = %d %s", code, body)
	}
	var ice struct {
		ICEServers []struct {
			URLs       []string `json:"urls"`
			Username   string   `json:"username"`
			Credential string   `json:"credential"`
		} `json:"ice_servers"`
	}
	if err := json.Unmarshal(body, &ice); err != nil {
		t.Fatal(err)
	}
	var user, pass string
	for _, s := range ice.ICEServers {
		if s.Username != "" {
			user, pass = s.Username, s.Credential
		}
	}
	if user == "" {
		t.Fatalf("no TURN credential in %s", body)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.waitExit(t, 11*time.Second); err != nil {
		t.Fatal(err)
	}

	p2 := startServe(t, home)
	ready2 := p2.waitLog(t, "rendezvous ready", 20*time.Second)
	relayAddr := ready2["relay"].(string)
	if err := allocate(t, relayAddr, user, pass); err != nil {
		t.Fatalf("credential from before the restart refused: %v", err)
	}
	if err := allocate(t, relayAddr, user, pass+"x"); err == nil {
		t.Fatal("a wrong password was accepted: the check proves nothing")
	}
}

// allocate makes a TURN allocation over UDP with pion's client.
func allocate(t *testing.T, server, user, pass string) error {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := turn.NewClient(&turn.ClientConfig{STUNServerAddr: server, TURNServerAddr: server, Conn: conn, Username: user, Password: pass, Realm: "rendezvous"})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Listen(); err != nil {
		return err
	}
	relayConn, err := c.Allocate()
	if err != nil {
		return err
	}
	return relayConn.Close()
}

// creds and token, run beside the server, sign with the secrets it uses.
func TestCredsAndTokenUseTheServersSecrets(t *testing.T) {
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "rendezvous.yaml"), []byte("relay:\n  relay-address: 127.0.0.1\nsignaling:\n  open: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Before the server ever ran there is no secret: creds must say so, not make one.
	if out, err := run(t, home, "creds", "--user", "alice"); err == nil || !strings.Contains(out, "start the server once") {
		t.Fatalf("creds before any server start: %v %s", err, out)
	}
	first := startServe(t, home)
	first.waitLog(t, "rendezvous ready", 20*time.Second)
	first.cmd.Process.Signal(syscall.SIGTERM)
	if err := first.waitExit(t, 11*time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, home, "creds", "--user", "alice", "--ttl", "1h", "--json")
	if err != nil {
		t.Fatalf("creds: %v\n%s", err, out)
	}
	var cred struct {
		Username, Credential string
		ICEServers           []struct{ URLs []string } `json:"iceServers"`
	}
	if err := json.Unmarshal([]byte(out), &cred); err != nil || !strings.HasSuffix(cred.Username, ":alice") || len(cred.ICEServers) == 0 {
		t.Fatalf("creds --json printed %q (%v)", out, err)
	}
	tok, err := run(t, home, "token", "--ttl", "5m", "--name", "alice")
	if err != nil {
		t.Fatalf("token: %v\n%s", err, tok)
	}
	tok = strings.TrimSpace(tok)

	p := startServe(t, home)
	ready := p.waitLog(t, "rendezvous ready", 20*time.Second)
	if err := allocate(t, ready["relay"].(string), cred.Username, cred.Credential); err != nil {
		t.Fatalf("the relay refused a credential from `rendezvous creds`: %v", err)
	}
	url := "http://" + ready["http"].(string)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func(token, name string) error {
		c, err := client.Dial(ctx, client.Config{URL: url, Token: token, NoReconnect: true, Register: client.Register{Name: name}})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(tok, "alice"); err != nil {
		t.Fatalf("a token from `rendezvous token` was refused: %v", err)
	}
	if err := dial("", "alice"); err == nil {
		t.Fatal("open: false admitted a client without a token")
	}
	if err := dial(tok, "mallory"); err == nil {
		t.Fatal("a token bound to the name alice admitted mallory")
	}
}

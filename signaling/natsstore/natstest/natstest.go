// Package natstest runs real nats-server processes for tests: a JetStream
// cluster on loopback with its store in a temporary directory.
package natstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var installOnce sync.Once

// Binary returns the nats-server path, installing the Debian package when it
// is missing and we are root. Without it the test skips, or fails when
// CI=true.
func Binary(t testing.TB) string {
	t.Helper()
	installOnce.Do(func() {
		if _, err := exec.LookPath("nats-server"); err == nil || os.Geteuid() != 0 {
			return
		}
		if _, err := exec.LookPath("apt-get"); err != nil {
			return
		}
		install := func() error {
			cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", "nats-server")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			return cmd.Run()
		}
		if install() != nil {
			exec.Command("apt-get", "update", "-qq").Run()
			install()
		}
	})
	p, err := exec.LookPath("nats-server")
	if err != nil {
		msg := "nats-server is needed for the NATS store tests (apt-get install nats-server; scripts/test.sh installs it as root)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// Server is one nats-server process.
type Server struct {
	Name        string
	URL         string
	ClusterPort int
	cmd         *exec.Cmd
	bin         string
	args        []string
	done        chan struct{}
	log         *strings.Builder
	mu          sync.Mutex
}

// Cluster is a set of clustered nats-servers with JetStream.
type Cluster struct {
	Servers []*Server
}

// URLs are the client URLs of all servers.
func (c *Cluster) URLs() []string {
	var out []string
	for _, s := range c.Servers {
		out = append(out, s.URL)
	}
	return out
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type logWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.b.Len() < 1<<20 {
		w.b.Write(p)
	}
	return len(p), nil
}

// StartCluster starts n servers (n = 1: no cluster) and waits until
// JetStream answers on every one of them. Processes are killed at cleanup.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(Binary(t), t.TempDir(), n)
	if c != nil {
		t.Cleanup(c.Kill)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Start runs n nats-server processes from bin with their stores under dir
// (see StartCluster). On error the servers started so far are still in the
// returned Cluster for the caller to Kill.
func Start(bin, dir string, n int) (*Cluster, error) {
	c := &Cluster{}
	cports := make([]int, n)
	for i := range cports {
		p, err := freePort()
		if err != nil {
			return c, err
		}
		cports[i] = p
	}
	for i := 0; i < n; i++ {
		port, err := freePort()
		if err != nil {
			return c, err
		}
		name := fmt.Sprintf("rzv-test-%d", i)
		args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-n", name, "-js", "-sd", filepath.Join(dir, name)}
		if n > 1 {
			var routes []string
			for j, cp := range cports {
				if j != i {
					routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(cp))
				}
			}
			args = append(args, "--cluster_name", "rzv-test", "--cluster", "nats://127.0.0.1:"+strconv.Itoa(cports[i]), "--routes", strings.Join(routes, ","))
		}
		s := &Server{Name: name, URL: "nats://127.0.0.1:" + strconv.Itoa(port), ClusterPort: cports[i], log: &strings.Builder{}, done: make(chan struct{})}
		s.bin, s.args = bin, args
		if err := s.start(); err != nil {
			return c, err
		}
		c.Servers = append(c.Servers, s)
	}
	for _, s := range c.Servers {
		if err := s.waitJetStream(30 * time.Second); err != nil {
			return c, fmt.Errorf("nats-server %s not ready: %v\n%s", s.Name, err, s.Log())
		}
	}
	return c, nil
}

// Kill stops every server.
func (c *Cluster) Kill() {
	for _, s := range c.Servers {
		s.Kill()
	}
}

// PID is the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

func (s *Server) start() error {
	s.cmd = exec.Command(s.bin, s.args...)
	w := logWriter{&s.mu, s.log}
	s.cmd.Stdout, s.cmd.Stderr = w, w
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start nats-server: %v", err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { cmd.Wait(); close(done) }()
	return nil
}

// Restart starts a killed server again on the same ports and store and
// waits for JetStream.
func (s *Server) Restart() error {
	s.Kill()
	if err := s.start(); err != nil {
		return err
	}
	return s.waitJetStream(30 * time.Second)
}

// Log is what the server printed so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// Kill stops the process (SIGKILL) and waits for it.
func (s *Server) Kill() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

func (s *Server) waitJetStream(d time.Duration) error {
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("exited")
		default:
		}
		nc, err := nats.Connect(s.URL, nats.Timeout(time.Second))
		if err == nil {
			js, _ := jetstream.New(nc)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = js.AccountInfo(ctx)
			cancel()
			nc.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		// Polling an external process that offers no readiness signal.
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

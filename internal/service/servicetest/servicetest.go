// Package servicetest runs a service.Service for the length of a test.
package servicetest

import (
	"context"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/internal/service"
)

// Start runs svc until the test ends and returns once it is ready. It fails
// the test if svc does not get ready within 10 s, or stops with an error.
func Start(t testing.TB, svc service.Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() { runErr = svc.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if runErr != nil {
			t.Errorf("%s stopped with %v", svc.Name(), runErr)
		}
	})
	select {
	case <-svc.Ready():
	case <-done:
		t.Fatalf("%s failed to start: %v", svc.Name(), runErr)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s not ready after 10s", svc.Name())
	}
}

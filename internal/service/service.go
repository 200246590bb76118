// Package service is the lifecycle every long-running part of rendezvous shares.
//
// A service package follows one shape (after Caddy's Validate/Start/Stop):
//
//	cfg := pkg.DefaultConfig()   // typed, yaml-tagged (kebab-case keys)
//	err := cfg.Validate()        // errors name the key, relative to the section
//	srv, err := pkg.New(cfg, pkg.Options{Logger, Registerer, Network, ...}) // no I/O
//	err = srv.Run(ctx)           // binds, closes Ready(), serves; returns when ctx ends, after cleaning up
//
// Run binds its listeners through the injected Network, so tests put a service on
// port 0 or inside a network namespace. A service whose settings can change without
// a restart also implements Reloader.
package service

import "context"

// Service is what `rendezvous serve` runs.
type Service interface {
	// Name is a short lowercase label used in logs ("relay", "http").
	Name() string
	// Run blocks until ctx ends or the service fails. It closes every socket it
	// opened before returning. A nil return means a clean stop.
	Run(ctx context.Context) error
	// Ready is closed once every listener of the service is bound.
	Ready() <-chan struct{}
}

// Reloader is implemented by services that apply a new config in place (SIGHUP).
// Reload must either apply all of cfg or none of it: on error the old settings
// stay in force. cfg has already passed Validate.
type Reloader[C any] interface {
	Reload(cfg C) error
}

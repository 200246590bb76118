package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/rendezvous-p2p/rendezvous/punch/natcheck"
)

func newNATCheckCmd() *cobra.Command {
	var (
		server   string
		asJSON   bool
		timeout  time.Duration
		lifetime time.Duration
	)
	cmd := &cobra.Command{
		Use:   "natcheck",
		Short: "Tell what your NAT does and whether direct connections will work",
		Long: `Measure this network's NAT against a rendezvous server's STUN port: mapping
and filtering behaviour (RFC 4787/5780), hairpinning, port preservation,
IPv6 reachability and, with --lifetime, how long idle mappings last. The
server answers the full test when its operator configured a second address
(relay.alternate-address); otherwise only mapping is tested.`,
		Example: `  rendezvous natcheck --server rv.example.com
  rendezvous natcheck --server 203.0.113.1:3478 --json
  rendezvous natcheck --server rv.example.com --lifetime 2m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" {
				return errors.New("--server is required (the rendezvous server's host, port 3478 by default)")
			}
			if _, _, err := net.SplitHostPort(server); err != nil {
				server = net.JoinHostPort(server, "3478")
			}
			if lifetime > natcheck.MaxLifetime {
				return fmt.Errorf("--lifetime %v is above the %v maximum", lifetime, natcheck.MaxLifetime)
			}
			if !asJSON {
				wait := "a few seconds"
				if lifetime > 0 {
					wait = "up to " + (lifetime + 20*time.Second).String()
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "testing your NAT against %s (takes %s)…\n", server, wait)
			}
			rep, err := natcheck.Check(cmd.Context(), natcheck.Options{Server: server, Timeout: timeout, Lifetime: lifetime})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), rep.Summary())
			return err
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "rendezvous server: host[:port] of its STUN port")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "how long each test waits for an answer")
	cmd.Flags().DurationVar(&lifetime, "lifetime", 0, "also estimate how long idle mappings last, probing up to this long")
	return cmd
}

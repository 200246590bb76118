package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rendezvous-p2p/rendezvous/internal/buildinfo"
)

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "version",
		Short:   "Print the version, VCS revision and Go version of this binary",
		Example: "  rendezvous version\n  rendezvous version --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bi := buildinfo.Get()
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(bi)
			}
			modified := ""
			if bi.Modified {
				modified = " (modified)"
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "rendezvous %s\nrevision   %s%s\ngo         %s %s\n", bi.Version, bi.Revision, modified, bi.GoVersion, bi.Platform)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

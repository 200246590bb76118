// Command rendezvous is the one binary of the rendezvous appliance: the
// signaling server and TURN relay (`serve`), and the tools around them.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "rendezvous:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "rendezvous",
		Short: "Self-hosted signaling, NAT traversal and relay for peer-to-peer games and apps",
		Long: `rendezvous lets game and app peers find each other and talk directly.
Its server exchanges peers' endpoints and keys, coordinates UDP hole punching,
and relays their traffic (standard TURN) when punching fails.`,
		Example:       "  rendezvous serve\n  rendezvous serve --config /etc/rendezvous/rendezvous.yaml --check\n  rendezvous version",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newConnectCmd(), newTunnelCmd(), newCredsCmd(), newTokenCmd(), newNATCheckCmd(), newBeaconCmd(), newVersionCmd())
	addCompletionExamples(root)
	return root
}

// addCompletionExamples gives cobra's generated completion commands the
// example every command of ours shows in --help.
func addCompletionExamples(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	examples := map[string]string{
		"bash":       "  rendezvous completion bash > /etc/bash_completion.d/rendezvous",
		"zsh":        "  rendezvous completion zsh > \"${fpath[1]}/_rendezvous\"",
		"fish":       "  rendezvous completion fish > ~/.config/fish/completions/rendezvous.fish",
		"powershell": "  rendezvous completion powershell | Out-String | Invoke-Expression",
	}
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = "  source <(rendezvous completion bash)"
		for _, sub := range c.Commands() {
			sub.Example = examples[sub.Name()]
		}
	}
}

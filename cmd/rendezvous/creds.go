package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/rendezvous-p2p/rendezvous/internal/app"
	"github.com/rendezvous-p2p/rendezvous/internal/config"
	"github.com/rendezvous-p2p/rendezvous/internal/state"
	"github.com/rendezvous-p2p/rendezvous/internal/turncreds"
	"github.com/rendezvous-p2p/rendezvous/signaling"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// serverConfigFlags find the server's configuration and state, for commands
// that act on a server's behalf (creds, token).
type serverConfigFlags struct {
	configPath, stateDir, publicHost string
}

func (f *serverConfigFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.configPath, "config", "c", "", "the server's config file (default: as serve finds it)")
	fs.StringVar(&f.stateDir, "state-dir", "", "the server's state directory (default: as serve finds it)")
	fs.StringVar(&f.publicHost, "public-host", "", "host name or IP clients reach the server at")
}

// load returns the server's effective relay and signaling config, with the
// secrets the running server uses.
func (f *serverConfigFlags) load() (config.Config, error) {
	path, err := config.Find(f.configPath)
	if err != nil {
		return config.Config{}, err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return config.Config{}, err
	}
	if f.stateDir != "" {
		cfg.StateDir = f.stateDir
	}
	if f.publicHost != "" {
		cfg.PublicHost = f.publicHost
	}
	return cfg, cfg.Validate()
}

func (f *serverConfigFlags) secrets(cfg config.Config) (turn, join []string, err error) {
	st, err := state.Open(cfg.StateDir)
	if err != nil {
		return nil, nil, err
	}
	r, s, err := app.Effective(cfg, st.ReadOnly())
	if err != nil {
		return nil, nil, err
	}
	return r.AuthSecrets, s.JoinTokenSecrets, nil
}

func newCredsCmd() *cobra.Command {
	var (
		f      serverConfigFlags
		user   string
		ttl    time.Duration
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "creds",
		Short: "Print a TURN credential and the RTCIceServer JSON a WebRTC app needs",
		Long: `Mint an ephemeral TURN credential (coturn-compatible REST API scheme) with the
server's secret, and print it with the RTCIceServer list to pass to
new RTCPeerConnection({iceServers: ...}). Run it where the server's config and
state directory are (as root for the system service).`,
		Example: `  rendezvous creds --user alice --ttl 1h
  rendezvous creds --user alice --ttl 24h --json > ice.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if user == "" || strings.Contains(user, ":") {
				return errors.New("--user is required and must not contain ':'")
			}
			if ttl <= 0 || ttl > 30*24*time.Hour {
				return fmt.Errorf("--ttl %v is out of range (0, 720h]", ttl)
			}
			cfg, err := f.load()
			if err != nil {
				return err
			}
			turnSecrets, _, err := f.secrets(cfg)
			if err != nil {
				return err
			}
			cred, err := turncreds.Mint([]byte(turnSecrets[0]), user, ttl, time.Now())
			if err != nil {
				return err
			}
			urls := cfg.Relay.ICEServerURLs(app.PublicHost(cfg))
			var turnURLs, stunURLs []string
			for _, u := range urls {
				if strings.HasPrefix(u, "stun:") {
					stunURLs = append(stunURLs, u)
				} else {
					turnURLs = append(turnURLs, u)
				}
			}
			servers := []client.ICEServer{{URLs: turnURLs, Username: cred.Username, Credential: cred.Password}, {URLs: stunURLs}}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Username   string             `json:"username"`
					Credential string             `json:"credential"`
					Expires    time.Time          `json:"expires"`
					ICEServers []client.ICEServer `json:"iceServers"`
				}{cred.Username, cred.Password, cred.Expires, servers})
			}
			ice, _ := json.MarshalIndent(servers, "", "  ")
			fmt.Fprintf(out, "username:   %s\ncredential: %s\nexpires:    %s\n\nnew RTCPeerConnection({ iceServers: %s })\n", cred.Username, cred.Password, cred.Expires.Format(time.RFC3339), ice)
			return nil
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "user name carried in the credential (for logs and quotas)")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the credential is valid")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	f.register(cmd.Flags())
	return cmd
}

func newTokenCmd() *cobra.Command {
	var (
		f                   serverConfigFlags
		room, name, subject string
		ttl                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint a join token a game client presents to the signaling API",
		Long: `Mint a short-lived join token signed with the server's join-token secret. A
game backend normally mints them itself (docs/signaling.md shows the format);
this command is for trying things out and for scripts.`,
		Example: `  rendezvous token --ttl 10m
  rendezvous token --room r_lobby1 --name alice --ttl 1h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			_, joinSecrets, err := f.secrets(cfg)
			if err != nil {
				return err
			}
			tok, err := signaling.MintJoinToken([]byte(joinSecrets[0]), signaling.JoinClaims{Room: room, Name: name, Subject: subject}, ttl, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	cmd.Flags().StringVar(&room, "room", "", "restrict the token to this room id")
	cmd.Flags().StringVar(&name, "name", "", "restrict the token to this display name")
	cmd.Flags().StringVar(&subject, "subject", "", "your backend's user id, for the server's logs")
	cmd.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "how long the token admits new connections")
	f.register(cmd.Flags())
	return cmd
}

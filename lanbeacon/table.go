package lanbeacon

import (
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"
	"time"
)

// WriteTable prints peers as the aligned table `rendezvous beacon listen`
// shows: name, address, game, room, age (since the last beacon) and whether
// the beacon was signed with the LAN key. Texts are safe to print: the parser
// refuses control and bidi characters.
func WriteTable(w io.Writer, peers []Peer, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tGAME\tROOM\tAGE\tAUTH")
	for _, p := range peers {
		auth := "no"
		if p.Authenticated {
			auth = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", orDash(p.Name), orDash(peerAddress(p)), orDash(p.App),
			orDash(p.Room), now.Sub(p.LastSeen).Round(100*time.Millisecond), auth)
	}
	return tw.Flush()
}

// peerAddress is the most recent source address with the first service
// port ("10.0.1.3:30000", "[fe80::1%eth0]:30000"), or the bare address when
// the peer announces no port.
func peerAddress(p Peer) string {
	a := p.Addr()
	if !a.IsValid() {
		return ""
	}
	if len(p.Ports) == 0 {
		return a.String()
	}
	s := netip.AddrPortFrom(a, p.Ports[0].Port).String()
	if p.Ports[0].Protocol == TCP {
		s += "/tcp"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

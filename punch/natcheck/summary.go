package natcheck

import (
	"fmt"
	"strings"
	"time"
)

// Difficulty ranks how easily direct connections work, for a one-word verdict.
type Difficulty string

const (
	// Open: anyone can reach the player directly.
	Open Difficulty = "open"
	// Easy: direct connections work with almost every other player.
	Easy Difficulty = "easy"
	// Moderate: direct connections work with most players (hole punching).
	Moderate Difficulty = "moderate"
	// Hard: direct connections fail with players behind strict routers; the
	// relay carries those games.
	Hard Difficulty = "hard"
	// Blocked: no UDP to the server; only a relay over TCP/TLS can work.
	Blocked Difficulty = "blocked"
	// Undetermined: the server could not run the behaviour tests.
	Undetermined Difficulty = "undetermined"
)

// Difficulty is the one-word verdict of the report.
func (r *Report) Difficulty() Difficulty {
	switch {
	case !r.UDP:
		return Blocked
	case !r.BehindNAT && r.Filtering != FilteringAddressDependent && r.Filtering != FilteringAddressAndPortDependent:
		return Open
	case r.Mapping == MappingEndpointIndependent && r.Filtering == FilteringEndpointIndependent:
		return Easy
	case r.Mapping == MappingEndpointIndependent || r.Mapping == MappingNoNAT:
		return Moderate
	case r.Mapping == MappingAddressDependent || r.Mapping == MappingAddressAndPortDependent:
		return Hard
	}
	return Undetermined
}

// Summary explains the report to a player, one sentence per finding.
func (r *Report) Summary() string {
	var s []string
	add := func(format string, args ...any) { s = append(s, fmt.Sprintf(format, args...)) }
	if !r.UDP {
		add("The server did not answer over UDP: your network (or a firewall) blocks UDP to it. " +
			"Games can still connect through the relay over TCP/TLS, with some extra delay.")
		return strings.Join(s, "\n")
	}
	switch {
	case !r.BehindNAT:
		add("You have a public address (no NAT): other players can connect to you directly.")
		if r.Filtering == FilteringAddressDependent || r.Filtering == FilteringAddressAndPortDependent {
			add("A firewall only lets in players you contacted first; rendezvous has both sides contact each other at the same moment (hole punching), so this works with most players.")
		}
	case r.Mapping == MappingEndpointIndependent && r.PortPreserved:
		add("Your router keeps the same public port for every destination: direct connections will work with most players.")
	case r.Mapping == MappingEndpointIndependent:
		add("Your router keeps one public port per game socket for every destination (though not the game's own port number): direct connections will work with most players.")
	case r.Mapping == MappingAddressDependent || r.Mapping == MappingAddressAndPortDependent:
		add("Your router picks a new public port for every player you talk to (a \"symmetric\" NAT, common on mobile networks and carrier-grade NAT): " +
			"rendezvous still reaches most players directly (with players behind strict routers it probes for a path, which takes a few seconds, relaying meanwhile), " +
			"but not players whose router does the same: those games go through the relay, which adds a little delay.")
	default:
		add("Your router translates addresses (NAT); this server could not test how, so rendezvous will try a direct connection and fall back to the relay if it fails.")
	}
	if r.BehindNAT {
		switch r.Filtering {
		case FilteringEndpointIndependent:
			add("Once you have started playing, anyone can reach your game directly (\"full cone\"): the easiest kind of router for peer-to-peer games.")
		case FilteringAddressDependent:
			add("Your router only lets in computers you have contacted first; rendezvous has both sides contact each other at the same moment (hole punching).")
		case FilteringAddressAndPortDependent:
			add("Your router only lets in the exact address and port you have contacted first; rendezvous has both sides contact each other at the same moment (hole punching).")
		}
		switch r.Hairpin {
		case Yes:
			add("Players on your own network can also reach you through your public address.")
		case No:
			add("Players on your own network cannot reach you through your public address (no hairpinning); they will find you on the local network instead.")
		}
	}
	if lt := r.Lifetime; lt != nil && lt.Tested {
		switch {
		case lt.ExpiredBy > 0 && lt.AliveAfter > 0:
			add("Your router forgets an idle connection after between %v and %v; games send keep-alives more often than that.", round(lt.AliveAfter), round(lt.ExpiredBy))
		case lt.ExpiredBy > 0:
			add("Your router forgets an idle connection within %v; games must send keep-alives often.", round(lt.ExpiredBy))
		default:
			add("Your router keeps an idle connection for at least %v.", round(lt.AliveAfter))
		}
	}
	if r.IPv6.Tested {
		if r.IPv6.Reachable {
			switch r.IPv6.Filtering {
			case FilteringEndpointIndependent:
				add("IPv6 works and nothing blocks incoming IPv6: players with IPv6 can connect to you directly.")
			case FilteringAddressDependent, FilteringAddressAndPortDependent:
				add("IPv6 works; a firewall only lets in players you contacted first, which hole punching handles: players with IPv6 can connect to you directly.")
			default:
				add("IPv6 works: players with IPv6 can also connect to you over it.")
			}
		} else {
			add("IPv6 does not work from here; IPv4 is used.")
		}
	}
	return strings.Join(s, "\n")
}

func round(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

// Package natlab builds real kernel NATs for tests: network namespaces wired
// with veths and bridges, and nftables rules on each router.
//
//	               server (203.0.113.1, .2; 2001:db8::1, ::2)
//	                 |
//	   [switch ns: bridge rz-br]  <- the "internet" (198.51.100.0/24, 2001:db8::/64)
//	     |                     |
//	  router a              router b         (WAN 198.51.100.<i+1>, 2001:db8::1<i>)
//	  (NAT, firewall)       (NAT, firewall)
//	     |                     |
//	[switch ns: LAN a]    [switch ns: LAN b]  (10.0.<i+1>.0/24, 2001:db8:1:<i+1>::/64)
//	  |      |               |
//	 a/0    a/1             b/0
//
// Every namespace is named "rzl<owner pid base36>-<lab id>-<role>"; veths are
// created directly inside their namespaces, so nothing of a lab appears in the
// root namespace. New removes labs whose owner process died (SIGKILLed test
// binaries), killing what still runs inside them.
//
// A Host implements netx.Network: its sockets are created on a thread switched
// into the host's namespace (setns), so services under test run in-process.
// Host.Command and Host.Start run real binaries through `ip netns exec`.
//
// Before New returns, a self-check measures every router's mapping, filtering,
// port preservation, hairpinning and IPv6 firewall from its first host against
// a reflector on the server's 2 addresses x 2 ports, and fails the test with a
// table when a router does not behave as its profile says.
//
// See docs/natlab.md for the profile table and examples.
package natlab

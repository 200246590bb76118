// Package lanbeacon lets players on one network find each other with no
// server: an Announcer broadcasts a small signed-or-not datagram, a Listener
// keeps a table of who is out there.
//
// # Paths
//
// An announcer sends each round to
//   - the limited broadcast 255.255.255.255:9999 (Config.Broadcast), which on
//     a multi-homed host leaves through one interface only, so also
//   - the directed broadcast of every IPv4 prefix of every up,
//     broadcast-capable interface (10.0.1.255:9999), and
//   - the IPv6 link-local multicast group ff02::1e52:5a42 port 9999 on every
//     up, multicast-capable interface (Config.Group6).
//
// Rounds happen at once on start, at once on Update, at once when an
// interface or address appears or goes, then every 90-100% of
// Config.Interval (2 s); a goodbye round goes out when the announcer stops.
// An application that also listens calls Announcer.Nudge on every Found
// event, so a newcomer hears everyone at once (budgeted: a burst of two, then
// one per interval).
// Routers forward none of these, so discovery stays on the LAN.
//
// Listeners bind the port with SO_REUSEADDR and SO_REUSEPORT, so a game and
// `rendezvous beacon listen` on one host each receive every broadcast and
// multicast beacon. They skip their own process's announcers by instance id
// (Options.Ignore), rate-limit each source address, expire a peer after three
// of its announced intervals of silence, and never send anything: a beacon
// cannot be used to reflect traffic.
//
// # Wire format
//
// All integers are big-endian. One beacon is one UDP datagram of at most
// 1200 bytes:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  0x1E         |  'R' 0x52     |  'Z' 0x5A     |  'B' 0x42     |  0 magic
//	+---------------+---------------+---------------+---------------+
//	|  version = 1  |     flags     |        interval (ms) ...      |  4
//	+---------------+---------------+-------------------------------+
//	|      ... interval (uint32)    |  instance id (8 bytes) ...    |  8
//	+-------------------------------+-------------------------------+
//	|                      ... instance id ...                      | 12
//	+-------------------------------+---------------+---------------+
//	|      ... instance id          | app len       | app ...       | 16
//	+-------------------------------+---------------+---------------+
//
//	variable part from byte 18, in this order (len is one byte):
//	+-----+---------------+   app          len 0-64, printable UTF-8
//	| len | app           |   name         len 0-64, printable UTF-8
//	+-----+---------------+   room         len 0-64, printable UTF-8
//	| len | name          |
//	+-----+---------------+
//	| len | room / code   |
//	+-----+---------------+------+------+-----+
//	|count| proto | port (uint16) | ...       |  count 0-8; proto 6 = TCP, 17 = UDP; port 1-65535
//	+-----+-------+---------------+-----------+
//	| len | key fingerprint       |              len 0-32 (e.g. SHA-256 of the public key)
//	+-----+-----+-----+-----+-----+-----+
//	|count| len | key | len | value | ...|       metadata: count 0-16; key len 1-32, value len 0-255,
//	+-----+-----+-----+-----+-------+----+       printable UTF-8; keys strictly ascending
//
//	auth trailer, present iff flags bit 1 is set:
//	+---------------------------------------------------------------+
//	|            timestamp (uint64, Unix milliseconds)              |  8 bytes
//	+---------------------------------------------------------------+
//	|            nonce (8 random bytes, fresh per datagram)         |  8 bytes
//	+---------------------------------------------------------------+
//	|   HMAC-SHA256 (32 bytes) over every byte before it, keyed     |
//	|   with SHA-256("rendezvous lanbeacon v1 hmac key\x00" || LAN key)
//	+---------------------------------------------------------------+
//
// The magic's first byte (0x1E) is below 0x40, so quic-go's Transport hands a
// beacon to ReadNonQUICPacket, and it differs from punch's probes (0x1D).
// Flags: bit 0 goodbye (the sender is stopping; listeners drop it at once),
// bit 1 signed (auth trailer present); the other bits must be zero. The
// interval (10 ms - 1 h) is the sender's, so listeners expire it after three
// of its own intervals. The instance id is random per announcer start.
//
// Parsing is strict: any length out of bounds, non-printable text (control
// and bidi characters are refused, since listeners print names in
// terminals), an unknown version or flag, unsorted metadata keys or a
// trailing byte drops the datagram (Stats().Malformed); so does one larger
// than 1200 bytes (Stats().Oversized).
//
// # Authentication
//
// With Config.LANKey set, announcers sign every datagram and listeners drop
// beacons that are unsigned, carry a bad MAC (forged), are more than
// Config.MaxClockSkew (30 s) from the listener's clock (stale), or repeat an
// (instance id, nonce) seen within that window (replayed). Every path gets its
// own nonce, so one beacon heard over broadcast and multicast is not a
// replay. Without a LAN key every beacon is accepted and its peer is marked
// Authenticated=false, signed or not. The key only proves LAN membership: any
// holder can announce under any name.
package lanbeacon

// Package client is the Go side of the rendezvous signaling protocol: the wire
// types shared with the server, a reconnecting client, and a helper that sends
// the STUN Binding carrying the peer token.
//
// The protocol is JSON text frames over a WebSocket at /v1/ws (documented in
// docs/signaling.md). Every frame is one envelope:
//
//	{"type":"join","rid":7,"data":{"code":"K7QX2M"}}
//
// type names the message, rid (optional, chosen by the client) is echoed in the
// reply or error so requests can be matched with answers, and data holds the
// type-specific body. Frames the server sends on its own (events) carry no rid.
//
// This package is imported by games: it must not import the server, an HTTP
// server, Prometheus or cobra.
package client

import (
	"encoding/json"
	"time"
)

// ProtocolVersion is the version of the wire protocol described here. A client
// sends it in register; the server refuses versions it does not speak with
// CodeUnsupportedProtocol.
const ProtocolVersion = 1

// Paths served by the signaling server, relative to its HTTP base URL.
const (
	PathWS         = "/v1/ws"
	PathICEServers = "/v1/ice-servers"
	PathRooms      = "/v1/rooms"
)

// Envelope is one frame on the wire.
type Envelope struct {
	Type string          `json:"type"`
	RID  uint64          `json:"rid,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
}

// Message types. Client → server requests are answered by the type in the
// comment (or by an "error" frame with the same rid).
const (
	TypeRegister      = "register"        // → registered
	TypePing          = "ping"            // both directions; answered by pong
	TypePong          = "pong"            //
	TypeCreateRoom    = "create_room"     // → room_joined
	TypeJoin          = "join"            // → room_joined
	TypeLeave         = "leave"           // → left
	TypeUpdateRoom    = "update_room"     // → room_updated (host only)
	TypeListRooms     = "list_rooms"      // → rooms
	TypeConnect       = "connect"         // → connect_ack, then punch to both sides
	TypeConnectResult = "connect_result"  // → ack
	TypeSignal        = "signal"          // forwarded to the target as signal
	TypeUpdatePeer    = "update_peer"     // → ack (new candidates / NAT report)
	TypeGetICEServers = "get_ice_servers" // → ice_servers (fresh TURN credentials)

	TypeRegistered  = "registered"
	TypeRoomJoined  = "room_joined"
	TypeLeft        = "left"
	TypeRooms       = "rooms"
	TypeICEServers  = "ice_servers"
	TypeConnectAck  = "connect_ack"
	TypePunch       = "punch"
	TypeAck         = "ack"
	TypeError       = "error"
	TypeReflexive   = "reflexive"    // the server learned this peer's reflexive address
	TypePeerJoined  = "peer_joined"  // event: a member joined a room
	TypePeerLeft    = "peer_left"    // event: a member left a room
	TypePeerUpdated = "peer_updated" // event: a member's endpoints changed
	TypeRoomUpdated = "room_updated" // event: room metadata/host/settings changed
)

// Error codes. They are stable: clients switch on them; the message is for humans.
const (
	CodeBadRequest          = "bad_request"          // malformed JSON or a missing/invalid field
	CodeUnknownType         = "unknown_type"         // the type is not one this server knows
	CodeFrameTooLarge       = "frame_too_large"      // frame over limits.max_frame_bytes; it was discarded
	CodeRateLimited         = "rate_limited"         // over limits.msg_rate; the frame was dropped
	CodeUnauthorized        = "unauthorized"         // no or bad credentials at upgrade
	CodeTokenExpired        = "token_expired"        // join token past its exp
	CodeForbidden           = "forbidden"            // a token claim does not allow this
	CodeUnsupportedProtocol = "unsupported_protocol" // register.protocol not spoken here
	CodeNotRegistered       = "not_registered"       // register first
	CodeAlreadyRegistered   = "already_registered"   // register sent twice
	CodeResumeFailed        = "resume_failed"        // resume token unknown or grace over
	CodeRoomNotFound        = "room_not_found"       // no such room id / join code
	CodePeerNotFound        = "peer_not_found"       // no such peer (or not in a shared room)
	CodeRoomFull            = "room_full"            // room at capacity
	CodeRoomExists          = "room_exists"          // a room with that id exists
	CodeWrongPassword       = "wrong_password"       // private room password mismatch
	CodeTooManyRooms        = "too_many_rooms"       // over limits.max_rooms_per_peer
	CodeTooManyConnections  = "too_many_connections" // over the per-IP connection cap
	CodeNotInRoom           = "not_in_room"          // the request needs membership
	CodeNotHost             = "not_host"             // only the room host may do this
	CodeSlowConsumer        = "slow_consumer"        // send queue overflowed; connection closed
	CodeServerShutdown      = "server_shutdown"      // server is going away
	CodeUnavailable         = "unavailable"          // the shared state (NATS) is unreachable; retry shortly
	CodeInternal            = "internal"             // server bug; report it
)

// ErrorBody is the data of an "error" frame.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// RetryAfterMS is set for rate_limited.
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
}

// Error is an error frame received by the client, usable as a Go error.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return "signaling: " + e.Code + ": " + e.Message }

// Candidate is one transport address at which a peer may be reached.
type Candidate struct {
	// Type is "host" (a local interface address, LAN), "srflx" (server
	// reflexive, learned by STUN) or "relay".
	Type string `json:"type"`
	// Addr is "ip:port" (IPv6 in brackets).
	Addr string `json:"addr"`
	// Proto is "udp" (default when empty) or "tcp".
	Proto string `json:"proto,omitempty"`
}

// NATReport is what a peer measured about its own NAT.
type NATReport struct {
	// Type is the NAT's mapping behaviour (RFC 4787 §4.1), what decides how
	// a pair punches: "open" (no NAT), "endpoint-independent" (one public
	// port for every destination: easy to punch), "address-dependent" or
	// "address-port-dependent" (a new public port per destination: a
	// "symmetric" NAT, reached by birthday probing), or "unknown".
	Type string `json:"type"`
	// Mapping and Filtering are free-form details (RFC 4787 terms).
	Mapping   string `json:"mapping,omitempty"`
	Filtering string `json:"filtering,omitempty"`
	// PortPreserving is true when the NAT kept the local port.
	PortPreserving bool `json:"port_preserving,omitempty"`
}

// NAT types accepted in NATReport.Type and connect_result.
var NATTypes = []string{"open", "endpoint-independent", "address-dependent", "address-port-dependent", "unknown"}

// ICEServer is the JSON form of the WebRTC RTCIceServer dictionary.
type ICEServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

// ICEServersResponse is the body of GET /v1/ice-servers.
type ICEServersResponse struct {
	ICEServers []ICEServer `json:"ice_servers"`
	// ExpiresAt is when the TURN credentials stop working (unix ms); 0 if none.
	ExpiresAt int64 `json:"expires_at,omitempty"`
}

// Register is the first frame a client sends.
type Register struct {
	Protocol   int         `json:"protocol"`
	Name       string      `json:"name"`
	PublicKey  string      `json:"public_key,omitempty"`
	Candidates []Candidate `json:"candidates,omitempty"`
	NAT        *NATReport  `json:"nat,omitempty"`
	// Game scopes list_rooms defaults and room creation.
	Game string `json:"game,omitempty"`
	// ResumeToken, when set, asks to take back a previous session's id and rooms.
	ResumeToken string `json:"resume_token,omitempty"`
}

// Limits are the limits in force, sent in registered.
type Limits struct {
	MaxFrameBytes   int     `json:"max_frame_bytes"`
	MsgRate         float64 `json:"msg_rate"`
	MsgBurst        int     `json:"msg_burst"`
	MaxRoomsPerPeer int     `json:"max_rooms_per_peer"`
	MaxRoomCapacity int     `json:"max_room_capacity"`
	PingIntervalMS  int64   `json:"ping_interval_ms"`
	MissedPings     int     `json:"missed_pings"`
	ResumeGraceMS   int64   `json:"resume_grace_ms"`
	SendQueue       int     `json:"send_queue"`
}

// Registered answers register.
type Registered struct {
	Protocol    int         `json:"protocol"`
	PeerID      string      `json:"peer_id"`
	ResumeToken string      `json:"resume_token"`
	PeerToken   string      `json:"peer_token"`
	ICEServers  []ICEServer `json:"ice_servers"`
	// ServerTime is the server clock in unix milliseconds when the frame was sent.
	ServerTime int64  `json:"server_time"`
	Limits     Limits `json:"limits"`
	// Resumed is true when ResumeToken matched; Rooms then lists the rooms given back.
	Resumed bool       `json:"resumed,omitempty"`
	Rooms   []RoomInfo `json:"rooms,omitempty"`
	// Reflexive is the server-reflexive address if already known.
	Reflexive string `json:"reflexive,omitempty"`
}

// Ping is sent by the server every ping interval (and may be sent by the
// client); the receiver answers with Pong echoing Seq.
type Ping struct {
	Seq        uint64 `json:"seq"`
	ServerTime int64  `json:"server_time,omitempty"`
	// RTTMS is the last round trip the server measured for this peer.
	RTTMS float64 `json:"rtt_ms,omitempty"`
}

// Pong answers Ping.
type Pong struct {
	Seq        uint64 `json:"seq"`
	ServerTime int64  `json:"server_time,omitempty"`
}

// PeerInfo is what other peers learn about a peer.
type PeerInfo struct {
	ID         string      `json:"id"`
	Name       string      `json:"name"`
	PublicKey  string      `json:"public_key,omitempty"`
	Candidates []Candidate `json:"candidates,omitempty"`
	// Reflexive is the address the server saw in the peer's STUN Binding.
	Reflexive string     `json:"reflexive,omitempty"`
	NAT       *NATReport `json:"nat,omitempty"`
	// RTTMS is the round trip the server measured to this peer.
	RTTMS float64 `json:"rtt_ms,omitempty"`
}

// RoomInfo describes a room.
type RoomInfo struct {
	ID        string          `json:"id"`
	Code      string          `json:"code"`
	Name      string          `json:"name"`
	Game      string          `json:"game,omitempty"`
	Capacity  int             `json:"capacity"`
	Members   int             `json:"members"`
	Public    bool            `json:"public"`
	HasPass   bool            `json:"has_password,omitempty"`
	Host      string          `json:"host"`
	Metadata  json.RawMessage `json:"metadata,omitempty"`
	CreatedAt int64           `json:"created_at"`
}

// CreateRoom creates a room; the creator joins it and becomes its host.
type CreateRoom struct {
	// ID is optional; the server picks one when empty. [A-Za-z0-9_.-]{1,64}.
	ID       string          `json:"id,omitempty"`
	Name     string          `json:"name"`
	Capacity int             `json:"capacity,omitempty"`
	Public   bool            `json:"public,omitempty"`
	Password string          `json:"password,omitempty"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// Join joins a room by id or by join code (exactly one).
type Join struct {
	RoomID   string `json:"room_id,omitempty"`
	Code     string `json:"code,omitempty"`
	Password string `json:"password,omitempty"`
}

// RoomJoined answers create_room and join.
type RoomJoined struct {
	Room RoomInfo `json:"room"`
	// Members is every member including the caller, with endpoints and keys.
	Members []PeerInfo `json:"members"`
	// ICEServers carries fresh TURN credentials.
	ICEServers []ICEServer `json:"ice_servers,omitempty"`
}

// Leave leaves a room.
type Leave struct {
	RoomID string `json:"room_id"`
}

// Left answers leave.
type Left struct {
	RoomID string `json:"room_id"`
}

// UpdateRoom changes a room (host only). Nil fields are left alone.
type UpdateRoom struct {
	RoomID   string          `json:"room_id"`
	Name     *string         `json:"name,omitempty"`
	Public   *bool           `json:"public,omitempty"`
	Capacity *int            `json:"capacity,omitempty"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// ListRooms asks for public rooms, paged.
type ListRooms struct {
	Game   string `json:"game,omitempty"`
	Cursor string `json:"cursor,omitempty"`
	Limit  int    `json:"limit,omitempty"`
}

// GetICEServers asks for the ICE servers with fresh TURN credentials: a
// long-lived peer renews its relay allocations with them before the ones it
// registered with expire.
type GetICEServers struct{}

// ICEServerList answers get_ice_servers.
type ICEServerList struct {
	ICEServers []ICEServer `json:"ice_servers"`
}

// Rooms answers list_rooms.
type Rooms struct {
	Rooms      []RoomInfo `json:"rooms"`
	NextCursor string     `json:"next_cursor,omitempty"`
}

// PeerJoined is the event sent to the other members when a peer joins.
type PeerJoined struct {
	RoomID  string   `json:"room_id"`
	Peer    PeerInfo `json:"peer"`
	Resumed bool     `json:"resumed,omitempty"`
}

// PeerLeft is the event sent to the remaining members.
type PeerLeft struct {
	RoomID string `json:"room_id"`
	PeerID string `json:"peer_id"`
	// Reason is "left", "timeout" (missed heartbeats), "disconnected" or "expired".
	Reason string `json:"reason"`
	// NewHost is set when the leaver was the host.
	NewHost string `json:"new_host,omitempty"`
}

// PeerUpdated is sent to room members when a member's endpoints change.
type PeerUpdated struct {
	RoomID string   `json:"room_id"`
	Peer   PeerInfo `json:"peer"`
}

// RoomUpdated is sent to members when the room changes.
type RoomUpdated struct {
	Room RoomInfo `json:"room"`
	// Reason is "metadata", "settings" or "host_migrated".
	Reason string `json:"reason"`
}

// UpdatePeer replaces the caller's candidates and/or NAT report.
type UpdatePeer struct {
	Candidates []Candidate `json:"candidates,omitempty"`
	NAT        *NATReport  `json:"nat,omitempty"`
}

// Reflexive tells a peer the address the server saw in its STUN Binding.
type Reflexive struct {
	Addr string `json:"addr"`
}

// Connect asks the server to coordinate a connection to PeerID, or between
// every pair in RoomID when All is set.
type Connect struct {
	PeerID string `json:"peer_id,omitempty"`
	RoomID string `json:"room_id,omitempty"`
	All    bool   `json:"all,omitempty"`
}

// ConnectAck answers connect with the sessions created.
type ConnectAck struct {
	Sessions []string `json:"sessions"`
}

// Punch is sent to both sides of a connect.
type Punch struct {
	SessionID string   `json:"session_id"`
	Peer      PeerInfo `json:"peer"`
	// Role is "initiator" or "responder" (who sends the first authenticated packet).
	Role string `json:"role"`
	// StartAt is the server time (unix ms) at which both sides start sending.
	StartAt int64 `json:"start_at"`
	// IntervalMS is the gap between punch packets; Attempts how many to send.
	IntervalMS int64       `json:"interval_ms"`
	Attempts   int         `json:"attempts"`
	ICEServers []ICEServer `json:"ice_servers,omitempty"`
	ServerTime int64       `json:"server_time"`
}

// ConnectResult reports how a connect ended.
type ConnectResult struct {
	SessionID string `json:"session_id"`
	PeerID    string `json:"peer_id"`
	// Outcome is "direct", "relayed" or "failed".
	Outcome string `json:"outcome"`
	// DurationMS is the time from StartAt to the outcome.
	DurationMS float64 `json:"duration_ms"`
	LocalNAT   string  `json:"local_nat,omitempty"`
	RemoteNAT  string  `json:"remote_nat,omitempty"`
	// Probes is how many birthday probes this side sent (the side behind the
	// endpoint-independent NAT probes; zero when the pair did not probe).
	Probes int `json:"probes,omitempty"`
}

// Signal carries an opaque payload to another peer in a shared room. The
// server fills From on delivery.
type Signal struct {
	To      string          `json:"to,omitempty"`
	From    string          `json:"from,omitempty"`
	RoomID  string          `json:"room_id,omitempty"`
	Payload json.RawMessage `json:"payload"`
}

// Ack is a generic success reply.
type Ack struct {
	OK bool `json:"ok"`
}

// ServerTime converts a protocol timestamp to time.Time.
func ServerTime(ms int64) time.Time { return time.UnixMilli(ms) }

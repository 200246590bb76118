package signaling

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"unicode/utf8"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// request is a decoded client frame.
type request struct {
	Type string
	RID  uint64
	Body any // pointer to the client.* struct for Type
}

// envelope mirrors client.Envelope with the data kept raw.
type envelope struct {
	Type string          `json:"type"`
	RID  uint64          `json:"rid"`
	Data json.RawMessage `json:"data"`
}

// encodeFrame marshals an envelope; body marshal errors cannot happen for our
// own types.
func encodeFrame(typ string, rid uint64, body any) []byte {
	out := struct {
		Type string `json:"type"`
		RID  uint64 `json:"rid,omitempty"`
		Data any    `json:"data,omitempty"`
	}{typ, rid, body}
	b, err := json.Marshal(out)
	if err != nil {
		b, _ = json.Marshal(struct {
			Type string           `json:"type"`
			RID  uint64           `json:"rid,omitempty"`
			Data client.ErrorBody `json:"data"`
		}{client.TypeError, rid, client.ErrorBody{Code: client.CodeInternal, Message: "encode: " + err.Error()}})
	}
	return b
}

// encodeSignal builds a signal frame without reflection: it is the hot path
// of room broadcast. from, to and roomID are ids the server issued or
// validated (to matched a room member), so they need no escaping; payload was
// validated by the JSON decoder.
func encodeSignal(from, to, roomID string, payload json.RawMessage) []byte {
	b := make([]byte, 0, 64+len(from)+len(to)+len(roomID)+len(payload))
	b = append(b, `{"type":"signal","data":{"from":"`...)
	b = append(b, from...)
	if to != "" {
		b = append(b, `","to":"`...)
		b = append(b, to...)
	}
	b = append(b, `","room_id":"`...)
	b = append(b, roomID...)
	b = append(b, `","payload":`...)
	b = append(b, payload...)
	return append(b, "}}"...)
}

// peekRID extracts the rid of a frame that will not be fully handled.
func peekRID(b []byte) uint64 {
	var e struct {
		RID uint64 `json:"rid"`
	}
	json.Unmarshal(b, &e)
	return e.RID
}

var (
	nameRe   = regexp.MustCompile(`^[^\x00-\x1f\x7f]{1,64}$`)
	roomIDRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// parseRequest decodes and validates one client frame. On error the returned
// request carries whatever rid could be read.
func parseRequest(b []byte) (request, *client.Error) {
	var env envelope
	if !utf8.Valid(b) {
		return request{}, errorf(client.CodeBadRequest, "frame is not valid UTF-8")
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return request{RID: peekRID(b)}, errorf(client.CodeBadRequest, "malformed JSON: %v", err)
	}
	req := request{Type: env.Type, RID: env.RID}
	if env.Type == "" {
		return req, errorf(client.CodeBadRequest, "frame has no type")
	}
	var body any
	switch env.Type {
	case client.TypeRegister:
		body = new(client.Register)
	case client.TypePing:
		body = new(client.Ping)
	case client.TypePong:
		body = new(client.Pong)
	case client.TypeCreateRoom:
		body = new(client.CreateRoom)
	case client.TypeJoin:
		body = new(client.Join)
	case client.TypeLeave:
		body = new(client.Leave)
	case client.TypeUpdateRoom:
		body = new(client.UpdateRoom)
	case client.TypeListRooms:
		body = new(client.ListRooms)
	case client.TypeConnect:
		body = new(client.Connect)
	case client.TypeConnectResult:
		body = new(client.ConnectResult)
	case client.TypeSignal:
		body = new(client.Signal)
	case client.TypeUpdatePeer:
		body = new(client.UpdatePeer)
	case client.TypeGetICEServers:
		body = new(client.GetICEServers)
	default:
		return req, errorf(client.CodeUnknownType, "unknown message type %q", truncate(env.Type, 40))
	}
	if len(env.Data) > 0 && !bytes.Equal(env.Data, []byte("null")) {
		if err := json.Unmarshal(env.Data, body); err != nil {
			return req, errorf(client.CodeBadRequest, "%s: data: %v", env.Type, err)
		}
	}
	if e := validate(body); e != nil {
		return req, e
	}
	req.Body = body
	return req, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func validCandidates(cs []client.Candidate) *client.Error {
	if len(cs) > 32 {
		return errorf(client.CodeBadRequest, "candidates: at most 32, got %d", len(cs))
	}
	for i, c := range cs {
		switch c.Type {
		case "host", "srflx", "relay", "prflx":
		default:
			return errorf(client.CodeBadRequest, "candidates[%d].type: %q is not host, srflx, prflx or relay", i, truncate(c.Type, 20))
		}
		if !validAddr(c.Addr) {
			return errorf(client.CodeBadRequest, "candidates[%d].addr: %q is not ip:port", i, truncate(c.Addr, 60))
		}
		if c.Proto != "" && c.Proto != "udp" && c.Proto != "tcp" {
			return errorf(client.CodeBadRequest, "candidates[%d].proto: %q is not udp or tcp", i, truncate(c.Proto, 20))
		}
	}
	return nil
}

func validNAT(n *client.NATReport) *client.Error {
	if n == nil {
		return nil
	}
	if !slices.Contains(client.NATTypes, n.Type) {
		return errorf(client.CodeBadRequest, "nat.type: %q is not one of %v", truncate(n.Type, 30), client.NATTypes)
	}
	if len(n.Mapping) > 64 || len(n.Filtering) > 64 {
		return errorf(client.CodeBadRequest, "nat.mapping/filtering: at most 64 characters")
	}
	return nil
}

func validate(body any) *client.Error {
	switch b := body.(type) {
	case *client.Register:
		if b.Name == "" {
			// May be filled from the token's name claim; checked in handleRegister.
		} else if !nameRe.MatchString(b.Name) {
			return errorf(client.CodeBadRequest, "name: 1..64 characters without control characters")
		}
		if len(b.PublicKey) > 256 {
			return errorf(client.CodeBadRequest, "public_key: at most 256 characters")
		}
		if len(b.Game) > 64 {
			return errorf(client.CodeBadRequest, "game: at most 64 characters")
		}
		if e := validCandidates(b.Candidates); e != nil {
			return e
		}
		return validNAT(b.NAT)
	case *client.CreateRoom:
		if b.ID != "" && !roomIDRe.MatchString(b.ID) {
			return errorf(client.CodeBadRequest, "id: 1..64 of [A-Za-z0-9_.-]")
		}
		if b.Name != "" && !nameRe.MatchString(b.Name) {
			return errorf(client.CodeBadRequest, "name: 1..64 characters without control characters")
		}
		if b.Capacity < 0 {
			return errorf(client.CodeBadRequest, "capacity: must not be negative")
		}
		if len(b.Password) > 128 {
			return errorf(client.CodeBadRequest, "password: at most 128 characters")
		}
	case *client.Join:
		if (b.RoomID == "") == (b.Code == "") {
			return errorf(client.CodeBadRequest, "join: give exactly one of room_id and code")
		}
	case *client.Leave:
		if b.RoomID == "" {
			return errorf(client.CodeBadRequest, "leave: room_id is required")
		}
	case *client.UpdateRoom:
		if b.RoomID == "" {
			return errorf(client.CodeBadRequest, "update_room: room_id is required")
		}
		if b.Name != nil && !nameRe.MatchString(*b.Name) {
			return errorf(client.CodeBadRequest, "name: 1..64 characters without control characters")
		}
	case *client.Connect:
		if (b.PeerID == "") == (b.RoomID == "" || !b.All) {
			return errorf(client.CodeBadRequest, "connect: give peer_id, or room_id with all=true")
		}
	case *client.ConnectResult:
		switch b.Outcome {
		case "direct", "relayed", "failed":
		default:
			return errorf(client.CodeBadRequest, "outcome: %q is not direct, relayed or failed", truncate(b.Outcome, 20))
		}
		if b.SessionID == "" {
			return errorf(client.CodeBadRequest, "connect_result: session_id is required")
		}
		if b.DurationMS < 0 || b.DurationMS > 3_600_000 {
			return errorf(client.CodeBadRequest, "duration_ms: out of range")
		}
		if b.Probes < 0 || b.Probes > 1_000_000 {
			return errorf(client.CodeBadRequest, "probes: out of range")
		}
	case *client.Signal:
		if b.To == "" && b.RoomID == "" {
			return errorf(client.CodeBadRequest, "signal: give to (a peer id) and/or room_id (broadcast)")
		}
		if len(b.Payload) == 0 {
			return errorf(client.CodeBadRequest, "signal: payload is required")
		}
	case *client.UpdatePeer:
		if e := validCandidates(b.Candidates); e != nil {
			return e
		}
		return validNAT(b.NAT)
	}
	return nil
}

func validAddr(s string) bool {
	_, err := parseAddrPort(s)
	return err == nil
}

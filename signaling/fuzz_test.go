package signaling

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

var knownCodes = []string{client.CodeBadRequest, client.CodeUnknownType}

// FuzzParseRequest feeds arbitrary frames to the decoder: it must never panic,
// must reject with bad_request or unknown_type and a message, and whatever it
// accepts must be a known type whose body re-encodes and decodes to the same
// request.
func FuzzParseRequest(f *testing.F) {
	seeds := []string{
		`{"type":"register","rid":1,"data":{"protocol":1,"name":"alice","public_key":"pk","candidates":[{"type":"host","addr":"10.0.0.2:5000"}],"nat":{"type":"endpoint-independent"}}}`,
		`{"type":"create_room","rid":2,"data":{"name":"lobby","capacity":4,"public":true,"password":"pw","metadata":{"map":"x"}}}`,
		`{"type":"join","rid":3,"data":{"code":"K7QX2M"}}`,
		`{"type":"join","data":{"room_id":"r_1","password":"x"}}`,
		`{"type":"leave","data":{"room_id":"r_1"}}`,
		`{"type":"update_room","data":{"room_id":"r","name":"n","public":false,"capacity":3,"metadata":[1]}}`,
		`{"type":"list_rooms","data":{"game":"g","cursor":"3","limit":10}}`,
		`{"type":"connect","data":{"peer_id":"p_x"}}`,
		`{"type":"connect","data":{"room_id":"r","all":true}}`,
		`{"type":"connect_result","data":{"session_id":"s","peer_id":"p","outcome":"relayed","duration_ms":12.5,"local_nat":"open"}}`,
		`{"type":"signal","rid":9,"data":{"to":"p_x","payload":{"sdp":"v=0"}}}`,
		`{"type":"update_peer","data":{"candidates":[{"type":"srflx","addr":"[2001:db8::1]:9","proto":"udp"}]}}`,
		`{"type":"ping","data":{"seq":5}}`,
		`{"type":"pong","data":{"seq":5}}`,
		`{"type":"teleport"}`,
		`{"type":"join","data":null}`,
		`{"type":`,
		`[]`,
		"\xff",
		`{"type":"signal","data":{"to":"a","payload":null}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, e := parseRequest(b)
		if e != nil {
			if !slices.Contains(knownCodes, e.Code) || e.Message == "" {
				t.Fatalf("error %+v for %q", e, b)
			}
			if req.Body != nil {
				t.Fatal("body returned with an error")
			}
			return
		}
		if req.Body == nil || req.Type == "" {
			t.Fatalf("accepted %q without a body", b)
		}
		again, e2 := parseRequest(encodeFrame(req.Type, req.RID, req.Body))
		if e2 != nil {
			t.Fatalf("re-encoded %q rejected: %+v", b, e2)
		}
		x, _ := json.Marshal(req.Body)
		y, _ := json.Marshal(again.Body)
		if string(x) != string(y) || again.RID != req.RID || again.Type != req.Type {
			t.Fatalf("round trip changed %s into %s", x, y)
		}
	})
}

// FuzzVerifyJoinToken checks the token parser never panics and never accepts
// a token it did not sign.
func FuzzVerifyJoinToken(f *testing.F) {
	secret := []byte("fuzz-secret-0123456789")
	now := time.Unix(1_800_000_000, 0)
	good, _ := MintJoinToken(secret, JoinClaims{Room: "r", Name: "n"}, time.Hour, now)
	f.Add(good)
	f.Add("rzv1..")
	f.Add("rzv1.e30.AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := VerifyJoinToken([][]byte{secret}, tok, now)
		if err != nil {
			return
		}
		if tok != good {
			// Another encoding of a valid signature over the same bytes is
			// impossible with RawURLEncoding unless the MAC verified.
			again, _ := MintJoinToken(secret, c, 0, now)
			if _, err := VerifyJoinToken([][]byte{secret}, again, now); err != nil {
				t.Fatalf("accepted %q but its claims do not re-sign", tok)
			}
		}
	})
}

// FuzzEncodeSignal checks the hand-built signal frame is the same JSON the
// generic encoder produces, for any payload the decoder accepts.
func FuzzEncodeSignal(f *testing.F) {
	f.Add(`{"sdp":"v=0\r\n"}`, "p_abc", "r_1.x-y")
	f.Add(`"\u2028 </script>"`, "p_x", "room")
	f.Add(`[1, 2.5e3, null, true]`, "p_y", "r")
	f.Fuzz(func(t *testing.T, payload, to, room string) {
		if !json.Valid([]byte(payload)) || !roomIDRe.MatchString(room) || !roomIDRe.MatchString(to) {
			return
		}
		got := encodeSignal("p_from", to, room, json.RawMessage(payload))
		var a, b client.Signal
		if err := json.Unmarshal(got, &struct {
			Type string
			Data *client.Signal
		}{Data: &a}); err != nil {
			t.Fatalf("invalid frame %s: %v", got, err)
		}
		want := encodeFrame(client.TypeSignal, 0, client.Signal{From: "p_from", To: to, RoomID: room, Payload: json.RawMessage(payload)})
		json.Unmarshal(want, &struct {
			Type string
			Data *client.Signal
		}{Data: &b})
		var pa, pb any
		json.Unmarshal(a.Payload, &pa)
		json.Unmarshal(b.Payload, &pb)
		if a.From != b.From || a.To != b.To || a.RoomID != b.RoomID || !reflect.DeepEqual(pa, pb) {
			t.Fatalf("encodeSignal %s != encodeFrame %s", got, want)
		}
	})
}

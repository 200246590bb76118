package signaling

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// maskedTextFrame is a client→server WebSocket text frame (RFC 6455 §5.2).
func maskedTextFrame(payload []byte) []byte {
	key := [4]byte{1, 2, 3, 4}
	f := []byte{0x81}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	default:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	}
	f = append(f, key[:]...)
	for i, b := range payload {
		f = append(f, b^key[i%4])
	}
	return f
}

// TestFrameSentWithHandshake covers bytes that arrive together with the
// upgrade request: they sit in net/http's reader at hijack time and must
// reach the WebSocket (the server swaps in smaller buffers there).
func TestFrameSentWithHandshake(t *testing.T) {
	ts := startServer(t, DefaultConfig())
	addr := strings.TrimPrefix(ts.URL, "http://")
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(waitFor))
	req := "GET " + client.PathWS + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	reg := mustFrame(client.TypeRegister, 1, client.Register{Protocol: 1, Name: "eager"})
	if _, err := nc.Write(append([]byte(req), maskedTextFrame(reg)...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatal(err)
		}
		n := int(hdr[1] & 0x7f)
		if n == 126 {
			var ext [2]byte
			io.ReadFull(br, ext[:])
			n = int(binary.BigEndian.Uint16(ext[:]))
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			t.Fatal(err)
		}
		var env client.Envelope
		if err := json.Unmarshal(payload, &env); err != nil {
			t.Fatalf("frame %q: %v", payload, err)
		}
		if env.Type == client.TypeError {
			t.Fatalf("server refused the early frame: %s", env.Data)
		}
		if env.Type == client.TypeRegistered && env.RID == 1 {
			return
		}
	}
}

package client

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestWSURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":         "ws://127.0.0.1:8080/v1/ws",
		"https://sig.example.com/":      "wss://sig.example.com/v1/ws",
		"ws://127.0.0.1:1/v1/ws":        "ws://127.0.0.1:1/v1/ws",
		"wss://h/custom/path?token=abc": "wss://h/custom/path?token=abc",
	} {
		got, err := wsURL(in)
		if err != nil || got != want {
			t.Errorf("wsURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := wsURL("ftp://x"); err == nil {
		t.Error("ftp scheme accepted")
	}
}

func TestBindPeerTokenRejectsBadToken(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	long := make([]byte, 65)
	for i := range long {
		long[i] = 'a'
	}
	for _, tok := range []string{"", string(long)} {
		if _, err := BindPeerToken(ctx, pc, pc.LocalAddr(), tok); err == nil {
			t.Errorf("token of %d bytes accepted", len(tok))
		}
	}
}

func TestBindPeerTokenTimesOut(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// A socket that never answers.
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := BindPeerToken(ctx, pc, silent.LocalAddr(), "p_x.y"); err == nil {
		t.Fatal("no answer but no error")
	}
}

package punch_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/rendezvous-p2p/rendezvous/punch"
	"github.com/rendezvous-p2p/rendezvous/signaling/client"
)

// A game hosts a room on a rendezvous server and talks to every player who
// joins over an encrypted QUIC session: direct when the NATs allow it
// (birthday probing included), else relayed, switching as paths come and go.
// The player's side calls agent.Join(ctx, code) instead of CreateRoom.
func Example() {
	ctx := context.Background()
	// One UDP socket carries STUN, punching and every session.
	conn, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		log.Fatal(err)
	}
	id, err := punch.NewIdentity() // or punch.IdentityFromKey with a key the game keeps
	if err != nil {
		log.Fatal(err)
	}
	ep, err := punch.NewEndpoint(conn, id, punch.DefaultConfig(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Close()

	agent, err := punch.StartAgent(ctx, ep, punch.AgentConfig{
		Signaling: client.Config{URL: "https://rendezvous.example.com", Token: "join-token-from-your-backend",
			Register: client.Register{Name: "host", Game: "my-game"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	room, err := agent.CreateRoom(ctx, client.CreateRoom{Name: "friday night", Capacity: 8})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("tell your friends the code", room.Room.Code)

	for s := range agent.Sessions() {
		go func() {
			defer s.Close()
			fmt.Println(s.PeerName, "joined over", s.Path().Kind)
			// Game state as unreliable datagrams (RFC 9221); chat or files on streams.
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-tick.C:
					if err := s.SendDatagram([]byte("state")); err != nil {
						return
					}
				case <-s.Done():
					return
				}
			}
		}()
	}
}

package punch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/quic-go/quic-go"
)

// Pipe exchanges two byte streams over a session, like a chat between two
// terminals, and returns once both are complete, with nothing lost at the end:
//
//   - each side opens one stream and writes its input, then closes it (FIN);
//   - each side reads the peer's stream to EOF into its output, then writes
//     "ok" back on that stream's return direction: proof it has every byte;
//   - a side is done when it read the peer's EOF and got "ok" for its own data.
//
// The dialing side then closes the session; the other side waits for that
// close (up to linger), so the final "ok" is never cut off.
func Pipe(ctx context.Context, s *Session, in <-chan []byte, out io.Writer, linger time.Duration) error {
	errc := make(chan error, 2)
	go func() { errc <- pipeSend(ctx, s, in) }()
	go func() { errc <- pipeReceive(ctx, s, out) }()
	for range 2 {
		if err := <-errc; err != nil {
			if isGracefulClose(err) || isGracefulClose(s.Err()) {
				return nil // the peer finished first and closed: it had all our data
			}
			return err
		}
	}
	if s.a.dialer {
		return s.Close()
	}
	t := time.NewTimer(linger)
	defer t.Stop()
	select {
	case <-s.Done():
	case <-t.C:
		s.Close()
	case <-ctx.Done():
		s.Close()
	}
	return nil
}

// isGracefulClose says whether err is the peer ending the session with code 0
// (Close). A stream read can report it before the session's own context does,
// so both are asked.
func isGracefulClose(err error) bool {
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote && ae.ErrorCode == 0
}

func pipeSend(ctx context.Context, s *Session, in <-chan []byte) error {
	st, err := s.OpenStream(ctx)
	if err != nil {
		return err
	}
	for {
		select {
		case b, ok := <-in:
			if !ok {
				if err := st.Close(); err != nil {
					return err
				}
				ack, err := io.ReadAll(io.LimitReader(st, 16))
				if err != nil {
					return fmt.Errorf("waiting for the peer to confirm our data: %w", err)
				}
				if string(ack) != "ok" {
					return fmt.Errorf("peer confirmed our data with %q", ack)
				}
				return nil
			}
			if _, err := st.Write(b); err != nil {
				return err
			}
		case <-ctx.Done():
			st.Abort()
			return ctx.Err()
		}
	}
}

func pipeReceive(ctx context.Context, s *Session, out io.Writer) error {
	st, err := s.AcceptStream(ctx)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, st); err != nil {
		return err
	}
	if _, err := st.Write([]byte("ok")); err != nil {
		return err
	}
	return st.Close()
}

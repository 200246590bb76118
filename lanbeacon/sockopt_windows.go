//go:build windows

package lanbeacon

import "syscall"

// setSocketOptions: on Windows SO_REUSEADDR alone lets several sockets bind
// the port and receive every broadcast and multicast datagram.
func setSocketOptions(fd uintptr) error {
	for _, opt := range []int{syscall.SO_REUSEADDR, syscall.SO_BROADCAST} {
		if err := syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, opt, 1); err != nil {
			return err
		}
	}
	return nil
}

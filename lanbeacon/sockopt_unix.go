//go:build unix

package lanbeacon

import "golang.org/x/sys/unix"

// setSocketOptions lets several sockets bind the beacon port (the kernel
// delivers each broadcast and multicast datagram to all of them) and allows
// sending broadcasts.
func setSocketOptions(fd uintptr) error {
	for _, opt := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT, unix.SO_BROADCAST} {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 1); err != nil {
			return err
		}
	}
	return nil
}

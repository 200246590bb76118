package natlab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// linksUp waits until every interface (except lo and bridges) of the namespace is
// operationally up. A veth's carrier reaches the bridge and the qdisc through
// the kernel's linkwatch work, which can lag "ip link set up" by up to a
// second; frames sent before that are dropped (a lost first ARP costs a 1 s
// retransmit), so the lab is not handed out before.
func linksUp(netns string, deadline time.Time) error {
	f, err := os.Open(filepath.Join("/run/netns", netns))
	if err != nil {
		return err
	}
	defer f.Close()
	h := &Host{netns: netns, nsFile: f}
	for {
		var down []string
		err := h.Do(func() error {
			var err error
			down, err = linksDown()
			return err
		})
		if err != nil {
			return err
		}
		if len(down) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("links not up in %s: %s", netns, strings.Join(down, ", "))
		}
		time.Sleep(2 * time.Millisecond) // polling the kernel; there is no event to wait on without a netlink subscription
	}
}

// linksDown lists interfaces of the current thread's namespace that are not
// operationally up.
func linksDown() ([]string, error) {
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETLINK, syscall.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("netlink getlink: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return nil, err
	}
	var down []string
	for _, m := range msgs {
		if m.Header.Type != syscall.RTM_NEWLINK {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			return nil, err
		}
		var name string
		oper := -1
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.IFLA_IFNAME:
				name = strings.TrimRight(string(a.Value), "\x00")
			case unix.IFLA_OPERSTATE:
				if len(a.Value) > 0 {
					oper = int(a.Value[0])
				}
			}
		}
		// A bridge's own operstate follows through the rate-limited linkwatch
		// work; it does not matter for forwarding between its ports.
		if name != "lo" && name != "rz-br" && oper != ifOperUp {
			down = append(down, fmt.Sprintf("%s(operstate %d)", name, oper))
		}
	}
	return down, nil
}

// ifOperUp is IF_OPER_UP (RFC 2863 "up") in IFLA_OPERSTATE.
const ifOperUp = 6

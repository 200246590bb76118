// Package buildinfo says which build of rendezvous is running.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version and Revision may be set at link time:
//
//	go build -ldflags "-X github.com/rendezvous-p2p/rendezvous/internal/buildinfo.Version=v1.2.3 \
//	  -X github.com/rendezvous-p2p/rendezvous/internal/buildinfo.Revision=$(git rev-parse HEAD)"
//
// Otherwise they come from the module and VCS information Go embeds.
var (
	Version  string
	Revision string
)

// Info describes the running binary.
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

// Get reports the running binary's build.
func Get() Info {
	info := Info{Version: Version, Revision: Revision, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if info.Version == "" {
			info.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if info.Revision == "" {
					info.Revision = s.Value
				}
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	if info.Revision == "" {
		info.Revision = "unknown"
	}
	return info
}

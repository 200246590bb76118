// Package benchdoc keeps docs/benchmarks.md: each benchmark owns one section,
// delimited by HTML comments, and replaces only that section when it runs.
//
//	<!-- begin: punch -->
//	## ...
//	<!-- end: punch -->
package benchdoc

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Path is docs/benchmarks.md, found from the calling package's directory.
func Path() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "docs", "benchmarks.md"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("benchdoc: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Machine describes where the figures were measured.
func Machine() string {
	return fmt.Sprintf("%s, %d CPUs, %s/%s, measured %s", runtime.Version(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format("2006-01-02"))
}

// Update replaces the named section of docs/benchmarks.md with body (which
// should start with a "## " heading and name the command that reproduces it),
// appending the section when it is new.
func Update(section, body string) error {
	path, err := Path()
	if err != nil {
		return err
	}
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(old)
	if doc == "" {
		doc = "# Benchmarks\n\nEvery figure here was written by the benchmark named in its section, with the command that\nreproduces it. Figures from one run are compared side by side (ratios), since these machines are noisy.\n"
	}
	begin, end := "<!-- begin: "+section+" -->", "<!-- end: "+section+" -->"
	block := begin + "\n" + strings.TrimSpace(body) + "\n" + end
	if i := strings.Index(doc, begin); i >= 0 {
		if j := strings.Index(doc[i:], end); j >= 0 {
			doc = doc[:i] + block + doc[i+j+len(end):]
			return os.WriteFile(path, []byte(doc), 0o644)
		}
	}
	doc = strings.TrimRight(doc, "\n") + "\n\n" + block + "\n"
	return os.WriteFile(path, []byte(doc), 0o644)
}

// Package logx builds the process logger: text on a terminal, JSON otherwise
// or on request, with a level that a reload can change.
package logx

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Config is the `log` section.
type Config struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // auto (text on a terminal, else JSON), text, json
}

// DefaultConfig logs at info, text on a terminal and JSON elsewhere.
func DefaultConfig() Config { return Config{Level: "info", Format: "auto"} }

// Validate names the bad key.
func (c Config) Validate() error {
	if _, err := ParseLevel(c.Level); err != nil {
		return fmt.Errorf("level: %w", err)
	}
	switch c.Format {
	case "auto", "text", "json":
		return nil
	}
	return fmt.Errorf("format: %q is not one of auto, text, json", c.Format)
}

// ParseLevel reads debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
}

// New returns a logger writing to w at the level held in level (which the
// caller may change later, e.g. on reload).
func New(cfg Config, w io.Writer, level *slog.LevelVar) *slog.Logger {
	l, _ := ParseLevel(cfg.Level)
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" || cfg.Format == "auto" && !isTerminal(w) {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

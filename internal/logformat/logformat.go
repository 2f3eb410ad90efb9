// Package logformat builds the slog logger that every lastcall binary
// configures with --log-format and --log-level. It imports only the
// standard library, so the sidecar binary stays small.
package logformat

import (
	"fmt"
	"io"
	"log/slog"
)

// New returns a logger writing to w in format ("json" or "text") at level
// ("debug", "info", "warn" or "error"). Errors name the flag at fault.
func New(format, level string, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

package logformat

import (
	"bytes"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		format, level string
		wantErr       string
		want          string // a fragment of a debug line, "" when filtered
	}{
		{"json", "debug", "", `"msg":"hello"`},
		{"text", "debug", "", "msg=hello"},
		{"text", "info", "", ""},
		{"yaml", "info", "--log-format", ""},
		{"json", "loud", "--log-level", ""},
	} {
		var buf bytes.Buffer
		log, err := New(tc.format, tc.level, &buf)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New(%q, %q) error %v, want one naming %s", tc.format, tc.level, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("New(%q, %q): %v", tc.format, tc.level, err)
		}
		log.Debug("hello")
		if got := buf.String(); (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("New(%q, %q) wrote %q, want %q", tc.format, tc.level, got, tc.want)
		}
	}
}

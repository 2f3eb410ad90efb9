package fleet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestYield lowers this test process's priority by one and checks that
// every thread has it, read back from /proc.
func TestYield(t *testing.T) {
	if err := Yield(1); err != nil {
		t.Fatal(err)
	}
	stats, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil || len(stats) == 0 {
		t.Fatalf("no threads in /proc/self/task: %v", err)
	}
	for _, path := range stats {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue // the thread ended
		}
		line := string(raw)
		// After the name: state(3) ... priority(18) nice(19).
		f := strings.Fields(line[strings.LastIndexByte(line, ')')+1:])
		if f[16] != "1" {
			t.Errorf("%s: nice %s, want 1", path, f[16])
		}
	}
}

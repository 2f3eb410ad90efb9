package worker

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the client light: a worker that imports it builds
// in the standard library and package wire, nothing else (no Prometheus,
// client-go or NATS server).
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	allowed := map[string]bool{
		"github.com/lastcall-dev/lastcall/sidecar/wire":   true,
		"github.com/lastcall-dev/lastcall/sidecar/worker": true,
	}
	for _, pkg := range strings.Fields(string(out)) {
		if !allowed[pkg] {
			t.Errorf("package worker depends on %s", pkg)
		}
	}
}

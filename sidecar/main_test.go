package sidecar_test

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bins holds the binaries TestMain builds for the tests that run real
// processes; empty under -short.
var bins struct {
	dir, sidecar, worker string
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if !testing.Short() {
		dir, err := os.MkdirTemp("", "lastcall-sidecar-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bins.dir = dir
		bins.sidecar = filepath.Join(dir, "sidecar")
		bins.worker = filepath.Join(dir, "testworker")
		for pkg, out := range map[string]string{
			"github.com/lastcall-dev/lastcall/cmd/sidecar":                 bins.sidecar,
			"github.com/lastcall-dev/lastcall/sidecar/internal/testworker": bins.worker,
		} {
			// As make build builds them: static, stripped (what the image
			// holds, and what BenchmarkNotify110 measures).
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
				return 1
			}
		}
	}
	return m.Run()
}

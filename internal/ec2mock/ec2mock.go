// Package ec2mock runs the real amazon-ec2-metadata-mock for tests: on a
// loopback port, in IMDSv2-only mode, stopped when the test ends. The
// binary comes from `make testbin` (.testbin/ at the repository root, or
// the directory named by LASTCALL_TESTBIN). The package is for tests only.
package ec2mock

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Binary returns the mock's path. A missing binary fails the test, and the
// test is skipped under -short only: an integration test that silently
// skips proves nothing.
func Binary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test against ec2-metadata-mock; skipped with -short")
	}
	dir := os.Getenv("LASTCALL_TESTBIN")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatalf("find the repository root: %v", err)
		}
		dir = filepath.Join(root, ".testbin")
	}
	bin := filepath.Join(dir, "ec2-metadata-mock")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("ec2-metadata-mock not found at %s (%v): run make testbin", bin, err)
	}
	return bin
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

// FreePort returns a port that was free on 127.0.0.1 a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// Mock is one run of ec2-metadata-mock.
type Mock struct {
	// URL is the mock's base URL, http://127.0.0.1:port.
	URL    string
	t      testing.TB
	cmd    *exec.Cmd
	output *Buffer
	done   chan struct{}
}

// Start runs ec2-metadata-mock with args on 127.0.0.1:port in IMDSv2-only
// mode (-I), waits until it accepts connections, and stops it when the test
// ends, logging its output if the test failed.
func Start(t testing.TB, port string, args ...string) *Mock {
	t.Helper()
	bin := Binary(t)
	home := t.TempDir() // it looks for a config file in $HOME
	args = append(args, "-n", "127.0.0.1", "-p", port, "-I")
	cmd := exec.Command(bin, args...)
	cmd.Dir = home
	cmd.Env = append(os.Environ(), "HOME="+home)
	m := &Mock{URL: "http://127.0.0.1:" + port, t: t, cmd: cmd, output: &Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = m.output, m.output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		defer close(m.done)
		_ = cmd.Wait()
	}()
	t.Cleanup(m.Stop)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for {
		c, err := (&net.Dialer{Timeout: 100 * time.Millisecond}).DialContext(ctx, "tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
			return m
		}
		select {
		case <-m.done:
			t.Fatalf("ec2-metadata-mock %v exited:\n%s", args, m.output.String())
		case <-ctx.Done():
			t.Fatalf("ec2-metadata-mock not listening on %s: %v\n%s", port, err, m.output.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop kills the mock and waits for it; it is safe to call twice.
func (m *Mock) Stop() {
	select {
	case <-m.done:
		return
	default:
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	if m.t.Failed() {
		m.t.Logf("ec2-metadata-mock output:\n%s", m.output.String())
	}
}

// Buffer is a bytes.Buffer safe for concurrent writes, for a process's
// output.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

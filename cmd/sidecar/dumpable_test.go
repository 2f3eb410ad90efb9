//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestUndumpable: a process of the sidecar's own user (a worker in a pod
// that shares its process namespace) cannot reach the sidecar through
// /proc/PID/root once the sidecar is undumpable. The two run as user 65534
// when the test runs as root (root's CAP_SYS_PTRACE would pass anyway).
func TestUndumpable(t *testing.T) {
	if os.Getenv("LASTCALL_UNDUMPABLE_CHILD") != "" {
		if err := undumpable(); err != nil {
			fmt.Println("undumpable:", err)
			os.Exit(3)
		}
		fmt.Println("ready")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "undumpable-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The test binary, where the other user may run it.
	bin := filepath.Join(dir, "sidecar.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
	}
	child := exec.Command(bin, "-test.run=^TestUndumpable$")
	child.Env = append(os.Environ(), "LASTCALL_UNDUMPABLE_CHILD=1")
	child.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("child said %q, want ready", line)
	}
	for _, path := range []string{"root/", "cwd/", "environ"} {
		attacker := exec.Command("ls", "-d", fmt.Sprintf("/proc/%d/%s", child.Process.Pid, path))
		if path == "environ" {
			attacker = exec.Command("cat", fmt.Sprintf("/proc/%d/environ", child.Process.Pid))
		}
		attacker.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		got, err := attacker.CombinedOutput()
		if err == nil {
			t.Errorf("a process of the same user read /proc/PID/%s of the sidecar: %q", path, got)
		}
	}
}

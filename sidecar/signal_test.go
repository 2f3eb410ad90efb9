package sidecar_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/sidecartest"
	"github.com/lastcall-dev/lastcall/sidecar/worker"
	"github.com/lastcall-dev/lastcall/watcher"
)

// TestSignalNeedsTheWorkersUser runs the real sidecar as an injected one
// runs (a non-root user, no capabilities) next to a worker process of user
// 1000: as 65532, the injector's default, its SIGTSTP fails with EPERM; as
// the worker's user, which the injector now sets when a signal is asked
// for, the worker is stopped.
func TestSignalNeedsTheWorkersUser(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes")
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test runs processes as other users and needs root (CI runs as root)")
	}
	// Binaries other users can run: a world-readable folder, a copy of
	// sleep under a name no other process on the machine has.
	dir, err := os.MkdirTemp("", "lastcall-signal-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "sidecar")
	proc := fmt.Sprintf("lcwork%d", os.Getpid()%100000)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{bins.sidecar: bin, sleep: filepath.Join(dir, proc)} {
		if err := copyFile(src, dst); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name    string
		uid     uint32
		stopped bool
	}{
		{"sidecar as 65532: EPERM", 65532, false},
		{"sidecar as the worker's user", 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := exec.Command(filepath.Join(dir, proc), "300")
			// Its own process group: a stop signal to a process of an
			// orphaned group (as this test's may be, run without a
			// terminal) is discarded by the kernel.
			w.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}, Setpgid: true}
			if err := w.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Process.Kill(); _ = w.Wait() })

			ref := sidecar.PodRef{Namespace: "jobs", Name: "signalled"}
			ips := sidecartest.NewPodIPs()
			ips.Set(ref, "127.0.9.1")
			hub := sidecartest.StartHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips})
			sc := sidecartest.StartSidecar(t.Context(), t, sidecartest.SidecarSpec{
				Bin: bin, Ref: ref, IP: "127.0.9.1", Hub: hub.URL(), UID: tc.uid,
				Args: []string{"--signal=TSTP", "--signal-process=" + proc},
			})
			hub.Hub.Tell(sidecar.NoticeState(watcher.Notice{Kind: watcher.KindPreemption, ID: "sig", Deadline: time.Now().Add(time.Minute)}))
			if _, err := sc.WaitState(t.Context(), t, func(s worker.State) bool { return s.Draining() }); err != nil {
				t.Fatal(err)
			}
			// The sidecar signals once it has the drain; wait for its log
			// line, then look at the worker.
			if _, _, err := sc.Proc.WaitLine(t.Context(), 0, func(l string) bool {
				return strings.Contains(l, "signal") && strings.Contains(l, proc) || strings.Contains(l, "signaling worker failed")
			}); err != nil {
				t.Fatalf("no signal logged: %v\n%s", err, strings.Join(sc.Proc.Output(), "\n"))
			}
			stopped := false
			for range 100 {
				if stopped = procState(w.Process.Pid) == "T"; stopped {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if stopped != tc.stopped {
				t.Errorf("worker stopped: %v, want %v; sidecar log:\n%s", stopped, tc.stopped, strings.Join(sc.Proc.Output(), "\n"))
			}
			if !tc.stopped && !strings.Contains(strings.Join(sc.Proc.Output(), "\n"), "operation not permitted") {
				t.Errorf("the sidecar did not log the EPERM:\n%s", strings.Join(sc.Proc.Output(), "\n"))
			}
		})
	}
}

// procState returns the state letter of pid from /proc/pid/stat.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok || rest == "" {
		return ""
	}
	return rest[:1]
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

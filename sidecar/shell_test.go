package sidecar_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
)

// TestShellWorker runs examples/shell/worker.sh against a real sidecar: it
// works through its jobs, idles in a curl long-poll, and on the drain stops,
// reports done with curl, and exits.
func TestShellWorker(t *testing.T) {
	needBinaries(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("the shell worker needs curl")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ips, dl := newPodIPs(), newDoneLog()
	ref := sidecar.PodRef{Namespace: "work", Name: "shell"}
	ips.set(ref, "127.0.8.1")
	hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: dl.onDone})
	p := startPod(ctx, t, podSpec{ref: ref, ip: "127.0.8.1", hub: hs.url(), noWorker: true})
	if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
		t.Fatal(err)
	}
	jobs := t.TempDir()
	for _, j := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(jobs, j), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w := startProc(t, "worker.sh", "sh", []string{"../examples/shell/worker.sh"},
		[]string{"LASTCALL_DIR=" + p.dir, "LASTCALL_ADDR=" + p.addr, "JOBS=" + jobs}, true)
	for { // the jobs are taken
		entries, err := os.ReadDir(jobs)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("jobs left: %v", entries)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := hs.hub.Draining(ctx, testNotice(time.Now().Add(time.Minute))); err != nil {
		t.Fatal(err)
	}
	if err := w.wait(ctx); err != nil {
		t.Fatalf("worker.sh: %v; output %q", err, w.output())
	}
	if out := strings.Join(w.output(), "\n"); !strings.Contains(out, "drained: preemption") {
		t.Errorf("worker.sh output %q", out)
	}
	select {
	case got := <-dl.ch:
		if got != ref {
			t.Errorf("OnDone(%s)", got)
		}
	case <-ctx.Done():
		t.Error("the hub never heard the shell worker was done")
	}
}

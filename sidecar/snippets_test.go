package sidecar_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
)

// TestSnippetWorkers runs the Python (standard library only) and Node.js
// (no dependencies) workers in examples/ against a real sidecar: each works
// through its jobs, and on a notice mid-job, or the pod's deletion through
// the preStop hook, stops taking jobs, hands back
// the job that cannot finish before the deadline, reports done, and prints
// the deadline it parsed from the sidecar's answer. LASTCALL_PYTHON and
// LASTCALL_NODE choose other interpreters than python3 and node.
func TestSnippetWorkers(t *testing.T) {
	needBinaries(t)
	python, node := "../examples/python/worker.py", "../examples/node/worker.js"
	cases := []struct {
		lang, interpreter, script string
		prestop                   bool // the pod's deletion instead of a node notice
	}{
		{"python", "python3", python, false},
		{"python", "python3", python, true},
		{"node", "node", node, false},
		{"node", "node", node, true},
	}
	for i, tt := range cases {
		name := tt.lang + "/notice"
		if tt.prestop {
			name = tt.lang + "/prestop"
		}
		t.Run(name, func(t *testing.T) {
			interpreter := tt.interpreter
			if v := os.Getenv("LASTCALL_" + strings.ToUpper(tt.lang)); v != "" {
				interpreter = v // another version: LASTCALL_PYTHON=python3.9
			}
			bin, err := exec.LookPath(interpreter)
			if err != nil {
				t.Fatalf("%s is needed (Debian package %s): %v", tt.interpreter, map[string]string{"python3": "python3", "node": "nodejs"}[tt.interpreter], err)
			}
			out, _ := exec.Command(bin, "--version").CombinedOutput()
			t.Logf("%s", strings.TrimSpace(string(out)))
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			ips, dl := newPodIPs(), newDoneLog()
			ref := sidecar.PodRef{Namespace: "work", Name: fmt.Sprintf("%s-%d", tt.lang, i)}
			ip := fmt.Sprintf("127.0.9.%d", i+1)
			ips.set(ref, ip)
			hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: dl.onDone})
			p := startPod(ctx, t, podSpec{ref: ref, ip: ip, hub: hs.url(), noWorker: true})
			if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
				t.Fatal(err)
			}

			// Quick jobs, then one that cannot finish inside the drain
			// window, then more that must not be taken.
			jobs := t.TempDir()
			all := map[string]string{"a1": "0.05", "a2": "0.05", "b-long": "30", "c1": "0.05", "c2": "0.05"}
			for name, cost := range all {
				if err := os.WriteFile(filepath.Join(jobs, name), []byte(cost), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			w := startProc(t, tt.lang+" worker", bin, []string{tt.script},
				[]string{"LASTCALL_ADDR=" + p.addr, "JOBS=" + jobs}, true)
			if _, _, err := w.waitLine(ctx, 0, is("took b-long")); err != nil {
				t.Fatal(err)
			}
			// A node notice, or the pod's deletion: the preStop hook, which
			// returns once the worker said done, with the sidecar's
			// --prestop-timeout (20s) as the deadline.
			deadline, wantReason := time.Now().Add(5*time.Second), "preemption"
			hook := make(chan string, 1)
			if tt.prestop {
				deadline, wantReason = time.Now().Add(20*time.Second), sidecar.ReasonPodTerminating
				go func() {
					out, err := p.sc.Prestop(ctx)
					hook <- fmt.Sprintf("%s %v", out, err)
				}()
			} else if _, err := hs.hub.Draining(ctx, testNotice(deadline)); err != nil {
				t.Fatal(err)
			}
			if err := w.wait(ctx); err != nil {
				t.Fatalf("worker: %v; output %q", err, w.output())
			}
			if tt.prestop {
				if out := <-hook; !strings.Contains(out, "reason=pod-terminating done=true") {
					t.Errorf("preStop hook: %s", out)
				}
			}
			got := w.output()
			want := []string{"ready", "took a1", "finished a1", "took a2", "finished a2", "took b-long", "handed back b-long"}
			if len(got) != len(want)+1 || !slices.Equal(got[:len(want)], want) {
				t.Fatalf("worker said %q; want %q and the drain", got, want)
			}
			var reason, at string
			if _, err := fmt.Sscanf(got[len(want)], "drained: %s deadline %s", &reason, &at); err != nil || reason != wantReason {
				t.Fatalf("last line %q: %v; want reason %s", got[len(want)], err, wantReason)
			}
			parsed, err := time.Parse(time.RFC3339, at)
			exact := parsed.Equal(deadline.Truncate(time.Millisecond))
			if tt.prestop { // the sidecar set it: within the time the hook took to start
				exact = parsed.Sub(deadline).Abs() < time.Second
			}
			if err != nil || !exact {
				t.Errorf("the worker read the deadline as %q (%v); it is %s", at, err, deadline.UTC().Format(time.RFC3339Nano))
			}
			for dir, names := range map[string][]string{"": {"b-long", "c1", "c2"}, "finished": {"a1", "a2"}, "work": nil} {
				entries, err := os.ReadDir(filepath.Join(jobs, dir))
				if err != nil {
					t.Fatal(err)
				}
				var files []string
				for _, e := range entries {
					if !e.IsDir() {
						files = append(files, e.Name())
					}
				}
				if !slices.Equal(files, names) {
					t.Errorf("jobs in %q: %v, want %v", dir, files, names)
				}
			}
			select {
			case got := <-dl.ch:
				if got != ref {
					t.Errorf("OnDone(%s)", got)
				}
			case <-ctx.Done():
				t.Error("the hub never heard the worker was done")
			}
		})
	}
}

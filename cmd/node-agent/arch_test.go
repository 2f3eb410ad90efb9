package main_test

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// checkArch checks that bin is an ELF executable for the Go architecture
// arch (this machine's when empty), so that a run meant for arm64 cannot
// silently test amd64 binaries.
func checkArch(bin, arch string) error {
	if arch == "" {
		arch = runtime.GOARCH
	}
	want, ok := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if !ok {
		return fmt.Errorf("no ELF machine known for %q", arch)
	}
	f, err := elf.Open(bin)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("%s is for %v, want %v (%s)", bin, f.Machine, want, arch)
	}
	return nil
}

// TestVersions runs each binary with --version: each names itself and one
// version, the same for all three.
func TestVersions(t *testing.T) {
	var versions []string
	for name, bin := range map[string]string{"node-agent": agentBin, "sidecar": sidecarBin, "injector": injectorBin} {
		out, err := command(bin, "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", name, err, out)
		}
		f := strings.Fields(string(out))
		if len(f) != 2 || f[0] != name {
			t.Fatalf("%s --version printed %q, want %q and a version", name, out, name)
		}
		t.Logf("%s (%s%s): %s", bin, binExec, map[bool]string{true: " ", false: ""}[binExec != ""], strings.TrimSpace(string(out)))
		versions = append(versions, f[1])
	}
	for _, v := range versions[1:] {
		if v != versions[0] {
			t.Errorf("versions %v differ", versions)
		}
	}
}

// TestGCENoticeThroughSidecar: a GCE preemption notice from the metadata
// server reaches a worker through the agent and a real sidecar process: the
// worker sees running, then draining with the notice's reason; once it says
// done its pod is evicted and the node drained. `make test-arm64` runs it
// with the arm64 binaries under qemu-aarch64.
func TestGCENoticeThroughSidecar(t *testing.T) {
	c := newCluster(t, 1, kubetest.WithGrace(5))
	c.waitRunning(t, 2)
	gce := newGCEMetadata(t)
	p := c.startAgent(t, "--cloud=gce", "--gce-metadata-host="+gce.host())
	sp := c.startSidecar(t, p.hub, "worker-0")
	eventually(t, 20*time.Second, "the sidecar subscribed", func() bool { return p.metric(t, "lastcall_sidecars_connected") == 1 })
	eventually(t, 10*time.Second, "the worker sees running", func() bool { return sp.phase() == "running" })

	gce.set("instance/preempted", "TRUE")
	start := time.Now()
	eventually(t, 10*time.Second, "the worker sees draining", func() bool { return sp.phase() == "draining" })
	t.Logf("worker saw draining %.2fs after instance/preempted became TRUE", time.Since(start).Seconds())
	st := sp.state(t)
	if st.Reason != "preemption" || st.Deadline.IsZero() || st.Deadline.After(start.Add(31*time.Second)) {
		t.Errorf("state %+v: want reason preemption and a deadline within the 30 s notice", st)
	}
	if c.terminating(t, "worker-0") {
		t.Fatal("the worker's pod was evicted while its worker was busy")
	}
	sp.done_(t)
	eventually(t, 20*time.Second, "the worker's pod gone", func() bool { return c.workersLeft(t) == 0 })
	eventually(t, 10*time.Second, "drain reported", func() bool { return p.metric(t, `lastcall_drains_total{result="drained"}`) == 1 })
}

// workerState is what a worker reads from the sidecar's /v1/state.
type workerState struct {
	Phase    string    `json:"phase"`
	Reason   string    `json:"reason"`
	Deadline time.Time `json:"deadline"`
}

func (sp *sidecarProc) state(t *testing.T) workerState {
	t.Helper()
	resp, err := http.Get("http://" + sp.api + "/v1/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st workerState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

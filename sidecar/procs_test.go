package sidecar_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/sidecartest"
)

// needBinaries skips under -short, where TestMain builds nothing.
func needBinaries(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the built sidecar: not under -short")
	}
}

// podIPs is a PodIPs the test can change.
type podIPs struct{ *sidecartest.PodIPs }

func newPodIPs() *podIPs { return &podIPs{sidecartest.NewPodIPs()} }

func (p *podIPs) set(ref sidecar.PodRef, ip string) { p.Set(ref, ip) }

// doneLog records the pods OnDone was called for.
type doneLog struct {
	mu   sync.Mutex
	pods []sidecar.PodRef
	ch   chan sidecar.PodRef
}

func newDoneLog() *doneLog { return &doneLog{ch: make(chan sidecar.PodRef, 1024)} }

func (d *doneLog) onDone(p sidecar.PodRef) {
	d.mu.Lock()
	d.pods = append(d.pods, p)
	d.mu.Unlock()
	d.ch <- p
}

// hubServer is a Hub served on a real loopback listener.
type hubServer struct {
	*sidecartest.HubServer
	hub  *sidecar.Hub
	addr string
}

// startHub serves a new Hub on addr ("127.0.0.1:0" for any port).
func startHub(t testing.TB, addr string, opts sidecar.HubOptions) *hubServer {
	t.Helper()
	hs := sidecartest.StartHub(t, addr, opts)
	return &hubServer{HubServer: hs, hub: hs.Hub, addr: hs.Addr}
}

func (hs *hubServer) url() string { return hs.URL() }

// stop shuts the server down; the sidecars' long-polls are answered first.
func (hs *hubServer) stop() { hs.Stop() }

// proc is a child process whose output lines are kept and can be waited
// for.
type proc struct{ *sidecartest.Proc }

// startProc starts bin with args and env; lines of stream (stdout or
// stderr) are kept.
func startProc(t testing.TB, name, bin string, args, env []string, stdoutLines bool) *proc {
	t.Helper()
	return &proc{sidecartest.StartProc(t, name, bin, args, env, stdoutLines)}
}

func (p *proc) pid() int                       { return p.PID() }
func (p *proc) signal(sig os.Signal)           { p.Signal(sig) }
func (p *proc) kill()                          { p.Kill() }
func (p *proc) wait(ctx context.Context) error { return p.Wait(ctx) }
func (p *proc) output() []string               { return p.Output() }

func (p *proc) waitLine(ctx context.Context, from int, match func(string) bool) (string, int, error) {
	return p.WaitLine(ctx, from, match)
}

// podProcs are the processes of one simulated pod: its sidecar and worker.
type podProcs struct {
	sc      *sidecartest.Sidecar
	ref     sidecar.PodRef
	ip      string
	dir     string
	sidecar *proc
	worker  *proc
	addr    string // the sidecar's workers' API
}

type podSpec struct {
	ref       sidecar.PodRef
	ip        string // POD_IP, 127.0.x.y
	hub       string // agent URL
	signal    bool   // send TSTP to the worker
	want      string // testworker --want
	done      bool   // testworker --done
	noWorker  bool
	extraArgs []string
}

// startPod starts a sidecar (and a worker unless noWorker) for spec, and
// waits until the sidecar serves.
func startPod(ctx context.Context, t testing.TB, spec podSpec) *podProcs {
	t.Helper()
	workerName := "w-" + strings.ReplaceAll(spec.ip, ".", "-")
	args := spec.extraArgs
	if spec.signal {
		args = append(args, "--signal", "TSTP", "--signal-process", workerName)
	}
	sc := sidecartest.StartSidecar(ctx, t, sidecartest.SidecarSpec{Bin: bins.sidecar, Ref: spec.ref, IP: spec.ip, Hub: spec.hub, Args: args})
	pp := &podProcs{sc: sc, ref: spec.ref, ip: spec.ip, dir: sc.Dir, sidecar: &proc{sc.Proc}, addr: sc.Addr}
	if !spec.noWorker {
		// The worker runs under its own name, as in its own container.
		link := filepath.Join(pp.dir, "..", workerName)
		if err := os.Symlink(bins.worker, link); err != nil {
			t.Fatal(err)
		}
		want := spec.want
		if want == "" {
			want = "http"
		}
		pp.worker = startProc(t, workerName, link,
			[]string{"--addr", pp.addr, "--dir", pp.dir, "--want", want, fmt.Sprintf("--done=%v", spec.done)}, nil, true)
		if _, _, err := pp.worker.waitLine(ctx, 0, is("ready")); err != nil {
			t.Fatal(err)
		}
	}
	return pp
}

// startSidecar restarts the pod's sidecar with its flags, at the address
// the workers know, and waits until it serves.
func (pp *podProcs) startSidecar(ctx context.Context, t testing.TB) {
	t.Helper()
	pp.sc.Restart(ctx, t)
	pp.sidecar = &proc{pp.sc.Proc}
}

func (pp *podProcs) client(t testing.TB) *sidecar.Client {
	t.Helper()
	return pp.sc.Client(t)
}

// waitState long-polls the pod's sidecar until ok accepts its state.
func (pp *podProcs) waitState(ctx context.Context, t testing.TB, ok func(sidecar.State) bool) (sidecar.State, error) {
	t.Helper()
	return pp.sc.WaitState(ctx, t, ok)
}

func is(s string) func(string) bool { return func(l string) bool { return l == s } }

func hasPrefix(s string) func(string) bool {
	return func(l string) bool { return strings.HasPrefix(l, s) }
}

func phaseIs(p sidecar.Phase) func(sidecar.State) bool {
	return func(s sidecar.State) bool { return s.Phase == p }
}

// rssKiB reads VmRSS of pid.
func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kib int
			_, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kib)
			return kib, err
		}
	}
	return 0, errors.New("no VmRSS")
}

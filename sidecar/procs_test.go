package sidecar_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
)

// needBinaries skips under -short, where TestMain builds nothing.
func needBinaries(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the built sidecar: not under -short")
	}
}

// podIPs is a PodIPs the test can change.
type podIPs struct {
	mu  sync.Mutex
	ips map[sidecar.PodRef]string
}

func newPodIPs() *podIPs { return &podIPs{ips: map[sidecar.PodRef]string{}} }

func (p *podIPs) set(ref sidecar.PodRef, ip string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ips[ref] = ip
}

func (p *podIPs) PodIP(namespace, name string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ip, ok := p.ips[sidecar.PodRef{Namespace: namespace, Name: name}]
	return ip, ok
}

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
	hub  *sidecar.Hub
	addr string
	srv  *http.Server
	errc chan error
}

// startHub serves a new Hub on addr ("127.0.0.1:0" for any port).
func startHub(t testing.TB, addr string, opts sidecar.HubOptions) *hubServer {
	t.Helper()
	hub, err := sidecar.NewHub(opts)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for range 50 { // the port of a stopped hub may linger for a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	hs := &hubServer{hub: hub, addr: ln.Addr().String(), errc: make(chan error, 1)}
	hs.srv = &http.Server{Handler: hub.Handler(), ReadHeaderTimeout: 5 * time.Second}
	hs.srv.RegisterOnShutdown(hub.Close)
	go func() { hs.errc <- hs.srv.Serve(ln) }()
	t.Cleanup(hs.stop)
	return hs
}

func (hs *hubServer) url() string { return "http://" + hs.addr }

// stop shuts the server down; the sidecars' long-polls are answered first.
func (hs *hubServer) stop() {
	if hs.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hs.srv.Shutdown(ctx)
	<-hs.errc
	hs.srv = nil
}

// proc is a child process whose output lines are kept and can be waited
// for.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd

	mu    sync.Mutex
	lines []string
	more  chan struct{} // closed and replaced when a line arrives
	eof   bool
	exit  chan struct{} // closed when the process has exited
	err   error         // exit status, once exit is closed
	start time.Time
}

// startProc starts bin with args and env; lines of stream (stdout or
// stderr) are kept.
func startProc(t testing.TB, name, bin string, args, env []string, stdoutLines bool) *proc {
	t.Helper()
	p := &proc{t: t, name: name, more: make(chan struct{}), exit: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	var r io.ReadCloser
	var err error
	if stdoutLines {
		r, err = p.cmd.StdoutPipe()
		p.cmd.Stderr = os.Stderr
	} else {
		r, err = p.cmd.StderrPipe()
	}
	if err != nil {
		t.Fatal(err)
	}
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.more)
			p.more = make(chan struct{})
			p.mu.Unlock()
		}
		p.mu.Lock()
		p.eof = true
		close(p.more)
		p.mu.Unlock()
		err := p.cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.exit)
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Errorf("%s: signal %v: %v", p.name, sig, err)
	}
}

// kill ends the process and waits for it.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exit
}

// wait waits for the process to exit and returns its status.
func (p *proc) wait(ctx context.Context) error {
	select {
	case <-p.exit:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("%s still running: %w", p.name, ctx.Err())
	}
}

// waitLine returns the first line (from index from on) that match accepts,
// and its index.
func (p *proc) waitLine(ctx context.Context, from int, match func(string) bool) (string, int, error) {
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if match(p.lines[i]) {
				l := p.lines[i]
				p.mu.Unlock()
				return l, i, nil
			}
		}
		from = max(from, len(p.lines))
		more, eof := p.more, p.eof
		p.mu.Unlock()
		if eof {
			return "", 0, fmt.Errorf("%s: output ended before the line wanted:\n%s", p.name, strings.Join(p.output(), "\n"))
		}
		select {
		case <-more:
		case <-ctx.Done():
			return "", 0, fmt.Errorf("%s: no line wanted: %w; output:\n%s", p.name, ctx.Err(), strings.Join(p.output(), "\n"))
		}
	}
}

func (p *proc) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// podProcs are the processes of one simulated pod: its sidecar and worker.
type podProcs struct {
	ref     sidecar.PodRef
	ip      string
	dir     string
	args    []string
	env     []string
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
	pp := &podProcs{ref: spec.ref, ip: spec.ip, dir: t.TempDir()}
	workerName := "w-" + strings.ReplaceAll(spec.ip, ".", "-")
	pp.args = append([]string{"--listen", spec.ip + ":0", "--dir", pp.dir, "--prestop-timeout", "20s"}, spec.extraArgs...)
	if spec.signal {
		pp.args = append(pp.args, "--signal", "TSTP", "--signal-process", workerName)
	}
	pp.env = []string{
		"POD_NAME=" + spec.ref.Name, "POD_NAMESPACE=" + spec.ref.Namespace,
		"POD_IP=" + spec.ip, "LASTCALL_AGENT=" + spec.hub,
	}
	pp.startSidecar(ctx, t)
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

// startSidecar (re)starts the pod's sidecar with its flags and waits until
// it serves.
func (pp *podProcs) startSidecar(ctx context.Context, t testing.TB) {
	t.Helper()
	pp.sidecar = startProc(t, "sidecar "+pp.ref.String(), bins.sidecar, pp.args, pp.env, false)
	line, _, err := pp.sidecar.waitLine(ctx, 0, func(l string) bool { return strings.Contains(l, `"msg":"serving workers"`) })
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Addr string `json:"addr"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Addr == "" {
		t.Fatalf("sidecar log line %q: %v", line, err)
	}
	pp.addr = rec.Addr
	// A restarted sidecar listens where the workers know it.
	for i, a := range pp.args {
		if a == "--listen" {
			pp.args[i+1] = pp.addr
		}
	}
}

func (pp *podProcs) client(t testing.TB) *sidecar.Client {
	t.Helper()
	c, err := sidecar.NewClient(pp.addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitState long-polls the pod's sidecar until ok accepts its state.
func (pp *podProcs) waitState(ctx context.Context, t testing.TB, ok func(sidecar.State) bool) (sidecar.State, error) {
	t.Helper()
	c := pp.client(t)
	c.Wait = 5 * time.Second
	var gen uint64
	var last sidecar.State
	for {
		st, err := c.Next(ctx, gen)
		if err == nil {
			last = st
			if ok(st) {
				return st, nil
			}
			gen = st.Generation
		} else if ctx.Err() != nil {
			return last, fmt.Errorf("%s: last state %+v: %w", pp.ref, last, err)
		} else {
			time.Sleep(20 * time.Millisecond) // the sidecar is restarting
		}
	}
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

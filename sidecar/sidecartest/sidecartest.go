// Package sidecartest runs lastcall's node-local path for tests of workers:
// a node agent's Hub served on loopback, and real sidecar processes (the
// cmd/sidecar binary) subscribed to it, each calling from its own loopback
// address as a pod calls from its IP. Tests then drain the node with
// HubServer.Hub.Draining, or delete a pod with Sidecar.Prestop, and watch
// what the workers do.
//
// Like net/http/httptest it is for tests only; it imports package testing.
package sidecartest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/worker"
	"github.com/lastcall-dev/lastcall/watcher"
)

// BuildSidecar builds the sidecar binary into dir and returns its path.
func BuildSidecar(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "sidecar")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/lastcall-dev/lastcall/cmd/sidecar")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build the sidecar: %w", err)
	}
	return bin, nil
}

// Main is for a TestMain: unless the tests run with -short it builds the
// sidecar binary into a temporary directory and stores its path in bin,
// then runs the tests and returns their exit code.
//
//	func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m, &sidecarBin)) }
func Main(m *testing.M, bin *string) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "lastcall-sidecartest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if *bin, err = BuildSidecar(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// PodIPs is a sidecar.PodIPs the test can change.
type PodIPs struct {
	mu  sync.Mutex
	ips map[sidecar.PodRef]string
}

// NewPodIPs returns an empty PodIPs.
func NewPodIPs() *PodIPs { return &PodIPs{ips: map[sidecar.PodRef]string{}} }

// Set records the IP of pod ref.
func (p *PodIPs) Set(ref sidecar.PodRef, ip string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ips[ref] = ip
}

// PodIP returns the IP of pod namespace/name.
func (p *PodIPs) PodIP(namespace, name string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ip, ok := p.ips[sidecar.PodRef{Namespace: namespace, Name: name}]
	return ip, ok
}

// HubServer is a Hub served on a real loopback listener.
type HubServer struct {
	Hub  *sidecar.Hub
	Addr string // host:port

	srv  *http.Server
	errc chan error
}

// StartHub serves a new Hub on addr ("127.0.0.1:0" for any port) until
// the test ends.
func StartHub(t testing.TB, addr string, opts sidecar.HubOptions) *HubServer {
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
	hs := &HubServer{Hub: hub, Addr: ln.Addr().String(), errc: make(chan error, 1)}
	hs.srv = &http.Server{Handler: hub.Handler(), ReadHeaderTimeout: 5 * time.Second}
	hs.srv.RegisterOnShutdown(hub.Close)
	go func() { hs.errc <- hs.srv.Serve(ln) }()
	t.Cleanup(hs.Stop)
	return hs
}

// URL is the Hub's base URL, the sidecars' --agent.
func (hs *HubServer) URL() string { return "http://" + hs.Addr }

// Stop shuts the server down; the sidecars' long-polls are answered first.
func (hs *HubServer) Stop() {
	if hs.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hs.srv.Shutdown(ctx)
	<-hs.errc
	hs.srv = nil
}

// Proc is a child process whose output lines are kept and can be waited
// for. It is killed when the test ends.
type Proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd

	mu    sync.Mutex
	lines []string
	more  chan struct{} // closed and replaced when a line arrives
	eof   bool
	exit  chan struct{} // closed when the process has exited
	err   error         // exit status, once exit is closed
}

// StartProc starts bin with args and env added to this process's
// environment; the lines of its stdout (stdoutLines) or stderr are kept,
// the other stream goes to this process's stderr.
func StartProc(t testing.TB, name, bin string, args, env []string, stdoutLines bool) *Proc {
	t.Helper()
	return startProc(t, name, bin, args, env, stdoutLines, 0)
}

// startProc is StartProc, as user uid when it is not 0.
func startProc(t testing.TB, name, bin string, args, env []string, stdoutLines bool, uid uint32) *Proc {
	t.Helper()
	p := &Proc{t: t, name: name, more: make(chan struct{}), exit: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	if uid != 0 {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
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
	t.Cleanup(p.Kill)
	return p
}

// PID is the process's ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process; failing to is an error of the test.
func (p *Proc) Signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Errorf("%s: signal %v: %v", p.name, sig, err)
	}
}

// Kill ends the process and waits for it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exit
}

// Wait waits for the process to exit and returns its status.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.exit:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("%s still running: %w", p.name, ctx.Err())
	}
}

// WaitLine returns the first line, from index from on, that match accepts,
// and its index.
func (p *Proc) WaitLine(ctx context.Context, from int, match func(string) bool) (string, int, error) {
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
			return "", 0, fmt.Errorf("%s: output ended before the line wanted:\n%s", p.name, strings.Join(p.Output(), "\n"))
		}
		select {
		case <-more:
		case <-ctx.Done():
			return "", 0, fmt.Errorf("%s: no line wanted: %w; output:\n%s", p.name, ctx.Err(), strings.Join(p.Output(), "\n"))
		}
	}
}

// Output returns the lines kept so far.
func (p *Proc) Output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// SidecarSpec says how to run one pod's sidecar.
type SidecarSpec struct {
	Bin string         // the sidecar binary (BuildSidecar)
	Ref sidecar.PodRef // the pod
	IP  string         // the pod's IP: a loopback address such as 127.0.7.1
	Hub string         // the agent's URL (HubServer.URL)
	// Args are added to the sidecar's flags (--listen IP:0, --dir, and
	// --prestop-timeout 20s).
	Args []string
	// UID, when not 0, is the user the sidecar runs as (the test must run
	// as root); Bin and its folders must be readable by that user.
	UID uint32
}

// Sidecar is one pod's running sidecar process.
type Sidecar struct {
	Spec SidecarSpec
	Dir  string   // its --dir: state.json, the draining file, the installed binary
	Addr string   // the workers' API, host:port
	Args []string // its flags; a restart keeps its address
	Env  []string // its environment (the downward API's variables)
	Proc *Proc
}

// StartSidecar starts a sidecar for spec and waits until it serves.
func StartSidecar(ctx context.Context, t testing.TB, spec SidecarSpec) *Sidecar {
	t.Helper()
	s := &Sidecar{Spec: spec, Dir: t.TempDir()}
	if spec.UID != 0 {
		if err := os.Chown(s.Dir, int(spec.UID), int(spec.UID)); err != nil {
			t.Fatal(err)
		}
	}
	s.Args = append([]string{"--listen", spec.IP + ":0", "--dir", s.Dir, "--prestop-timeout", "20s"}, spec.Args...)
	s.Env = []string{
		"POD_NAME=" + spec.Ref.Name, "POD_NAMESPACE=" + spec.Ref.Namespace,
		"POD_IP=" + spec.IP, "LASTCALL_AGENT=" + spec.Hub,
	}
	s.Restart(ctx, t)
	return s
}

// Restart starts the sidecar process (again) with its flags and waits
// until it serves, at the address the workers know.
func (s *Sidecar) Restart(ctx context.Context, t testing.TB) {
	t.Helper()
	s.Proc = startProc(t, "sidecar "+s.Spec.Ref.String(), s.Spec.Bin, s.Args, s.Env, false, s.Spec.UID)
	line, _, err := s.Proc.WaitLine(ctx, 0, func(l string) bool { return strings.Contains(l, `"msg":"serving workers"`) })
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Addr string `json:"addr"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Addr == "" {
		t.Fatalf("sidecar log line %q: %v", line, err)
	}
	s.Addr = rec.Addr
	for i, a := range s.Args {
		if a == "--listen" {
			s.Args[i+1] = s.Addr
		}
	}
}

// Client returns a worker client of the sidecar.
func (s *Sidecar) Client(t testing.TB) *worker.Client {
	t.Helper()
	c, err := worker.NewClient(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// WaitState long-polls the sidecar until ok accepts its state.
func (s *Sidecar) WaitState(ctx context.Context, t testing.TB, ok func(worker.State) bool) (worker.State, error) {
	t.Helper()
	c := s.Client(t)
	c.Wait = 5 * time.Second
	var gen uint64
	var last worker.State
	for {
		st, err := c.Next(ctx, gen)
		if err == nil {
			last = st
			if ok(st) {
				return st, nil
			}
			gen = st.Generation
		} else if ctx.Err() != nil {
			return last, fmt.Errorf("%s: last state %+v: %w", s.Spec.Ref, last, err)
		} else {
			time.Sleep(20 * time.Millisecond) // the sidecar is restarting
		}
	}
}

// Prestop runs the workers' preStop hook as the kubelet would (the binary's
// prestop subcommand): the pod drains with reason pod-terminating, and the
// hook returns once the workers are done or the sidecar's prestop timeout
// has passed. args are added to the hook's flags (--timeout 3s). It
// returns the hook's output.
func (s *Sidecar) Prestop(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, s.Spec.Bin, append([]string{"prestop", "--addr", s.Addr}, args...)...).CombinedOutput()
	return string(out), err
}

// Node is a Hub with one pod whose sidecar runs: the smallest node a worker
// test needs.
type Node struct {
	Hub     *HubServer
	Sidecar *Sidecar
	Ref     sidecar.PodRef
	// Done receives the pod when the Hub hears that its workers are done.
	Done chan sidecar.PodRef
}

// StartNode starts a Hub and the sidecar of pod work/name at ip (a loopback
// address), and waits until the sidecar shows running.
func StartNode(ctx context.Context, t testing.TB, bin, name, ip string) *Node {
	t.Helper()
	n := &Node{Ref: sidecar.PodRef{Namespace: "work", Name: name}, Done: make(chan sidecar.PodRef, 1)}
	ips := NewPodIPs()
	ips.Set(n.Ref, ip)
	n.Hub = StartHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: func(r sidecar.PodRef) {
		select {
		case n.Done <- r:
		default:
		}
	}})
	n.Sidecar = StartSidecar(ctx, t, SidecarSpec{Bin: bin, Ref: n.Ref, IP: ip, Hub: n.Hub.URL()})
	if _, err := n.Sidecar.WaitState(ctx, t, func(s worker.State) bool { return s.Phase == worker.PhaseRunning }); err != nil {
		t.Fatal(err)
	}
	return n
}

// Drain sends the node the notice, then waits until the worker, whose Run
// reports on ran, has returned (a failure is fatal) and the Hub has heard
// the pod is done. It returns how long that took.
func (n *Node) Drain(ctx context.Context, t testing.TB, notice watcher.Notice, ran <-chan error) time.Duration {
	t.Helper()
	start := time.Now()
	if told, err := n.Hub.Hub.Draining(ctx, notice); err != nil || told != 1 {
		t.Fatalf("Draining: told %d, %v", told, err)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("worker: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the worker did not return after the drain")
	}
	select {
	case <-n.Done:
	case <-ctx.Done():
		t.Fatal("the hub never heard the worker was done")
	}
	return time.Since(start)
}

// WaitFor polls ok every millisecond until it holds; if ctx ends first the
// test fails, saying what it waited for.
func WaitFor(ctx context.Context, t testing.TB, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatalf("waited for %s: %v", what, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// Notice returns an active notice from source of the given kind, ending
// the machine at deadline.
func Notice(source watcher.Source, kind watcher.Kind, deadline time.Time) watcher.Notice {
	return watcher.Notice{Source: source, Kind: kind, State: watcher.StateActive,
		ID: string(source) + "-" + string(kind) + "-1", Detected: time.Now(), Deadline: deadline}
}

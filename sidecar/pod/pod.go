package pod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// Config configures a Sidecar. cmd/sidecar fills it from flags and the
// downward API.
type Config struct {
	// Namespace and Name name the pod. Required.
	Namespace, Name string
	// PodIP is the pod's IP, the local address the sidecar dials the agent
	// from (the agent checks it). Empty: the system picks.
	PodIP string
	// Agent is the base URL of the node agent's Hub, e.g.
	// http://10.0.0.5:10574. Required.
	Agent string
	// Listen is the address of the workers' API. Default 127.0.0.1:10575.
	Listen string
	// Dir, if set, receives state.json and the draining flag file.
	Dir string
	// Signal, if set, is sent to every process named SignalProcess when
	// draining starts.
	Signal os.Signal
	// SignalProcess is the name of the worker process (its comm or the
	// base name of its argv[0]).
	SignalProcess string
	// PrestopTimeout bounds how long a pod-terminating drain waits for the
	// workers. Default 25s (the default grace period is 30s).
	PrestopTimeout time.Duration
	// PollWait is how long one long-poll to the agent waits. Default 30s.
	PollWait time.Duration
	// ProcRoot is where processes are looked up. Default /proc.
	ProcRoot string
	// Logger receives the sidecar's log. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Sidecar is the sidecar process's core. Create it with New, run it with
// Run.
type Sidecar struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	agent  *url.URL
	client *http.Client
	ln     net.Listener

	mu           sync.Mutex // guards the fields below
	node         wire.NodeState
	connected    bool
	heard        bool // the agent has answered since this process started
	terminating  bool
	termDeadline time.Time
	done         bool
	inflight     int
	view         wire.State    // the state shown, recomputed on every change
	changed      chan struct{} // closed and replaced when view changes
	signaled     bool          // the signal went out for the current drain
	reportVer    uint64        // bumped when the report must be sent again
	reportWake   chan struct{} // buffered(1): the reporter has something to send
}

// New checks cfg, binds the workers' API address and reads the state an
// earlier run left in cfg.Dir. Nothing runs until Run.
func New(cfg Config) (*Sidecar, error) {
	if cfg.Namespace == "" || cfg.Name == "" {
		return nil, errors.New("pod namespace and name are required")
	}
	if cfg.Agent == "" {
		return nil, errors.New("agent address is required")
	}
	if !strings.Contains(cfg.Agent, "://") {
		cfg.Agent = "http://" + cfg.Agent
	}
	agent, err := url.Parse(cfg.Agent)
	if err != nil {
		return nil, fmt.Errorf("agent address: %w", err)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:10575"
	}
	if cfg.PrestopTimeout <= 0 {
		cfg.PrestopTimeout = 25 * time.Second
	}
	if cfg.PollWait <= 0 {
		cfg.PollWait = 30 * time.Second
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Signal != nil && cfg.SignalProcess == "" {
		return nil, errors.New("a signal needs the name of the process to send it to")
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if cfg.PodIP != "" {
		ip := net.ParseIP(cfg.PodIP)
		if ip == nil {
			return nil, fmt.Errorf("pod IP %q is not an IP", cfg.PodIP)
		}
		dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen for workers: %w", err)
	}
	s := &Sidecar{
		cfg: cfg, log: cfg.Logger, now: cfg.Now, agent: agent, ln: ln,
		client: &http.Client{Transport: &http.Transport{
			DialContext:         dialer.DialContext,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
		}},
		changed:    make(chan struct{}),
		reportWake: make(chan struct{}, 1),
	}
	s.restore()
	s.mu.Lock()
	s.commitLocked(true)
	s.mu.Unlock()
	return s, nil
}

// Addr returns the address the workers' API listens on.
func (s *Sidecar) Addr() net.Addr { return s.ln.Addr() }

// Run serves the workers, follows the agent and forwards reports until ctx
// is done, then closes the listener and returns nil.
func (s *Sidecar) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.subscribe(ctx) })
	wg.Go(func() { s.report(ctx) })
	wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	s.log.Info("serving workers", "addr", s.ln.Addr().String(), "agent", s.agent.String(), "pod", s.cfg.Namespace+"/"+s.cfg.Name)
	if err := srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve workers: %w", err)
	}
	return nil
}

// State returns the state shown to the workers, with the time remaining as
// of now.
func (s *Sidecar) State() wire.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.withRemaining(s.view)
}

func (s *Sidecar) withRemaining(v wire.State) wire.State {
	if !v.Deadline.IsZero() {
		r := max(v.Deadline.Sub(s.now()), 0).Seconds()
		v.RemainingSeconds = &r
	}
	return v
}

// wait returns the state once its generation differs from gen, or after
// wait, or when ctx is done.
func (s *Sidecar) wait(ctx context.Context, gen uint64, wait time.Duration) wire.State {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		s.mu.Lock()
		if wait <= 0 || s.view.Generation != gen {
			defer s.mu.Unlock()
			return s.withRemaining(s.view)
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			return s.State()
		case <-ctx.Done():
			return s.State()
		}
	}
}

// derive computes the state shown from what the sidecar knows. Call with
// s.mu held.
func (s *Sidecar) derive() wire.State {
	v := wire.State{
		AgentGeneration: s.node.Generation, AgentConnected: s.connected,
		Done: s.done, InFlight: s.inflight,
	}
	switch {
	case s.node.Phase == wire.PhaseDraining:
		v.Phase, v.Reason, v.Source, v.Deadline = wire.PhaseDraining, s.node.Reason, s.node.Source, s.node.Deadline
		v.Deadline = earlier(v.Deadline, s.node.PodDeadline)
		if s.terminating {
			v.Deadline = earlier(v.Deadline, s.termDeadline)
		}
	case s.terminating:
		v.Phase, v.Reason, v.Deadline = wire.PhaseDraining, wire.ReasonPodTerminating, s.termBy()
	case s.connected && s.node.Phase == wire.PhaseRunning:
		v.Phase = wire.PhaseRunning
	default:
		v.Phase = wire.PhaseUnknown
	}
	return v
}

// earlier returns the earlier of a and b, a zero time counting as none.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// termBy is when a pod-terminating drain ends: the preStop timeout, or
// earlier, the pod's stop time as the agent last said (its deletion's grace
// can be shorter than the pod's own). Call with s.mu held.
func (s *Sidecar) termBy() time.Time {
	return earlier(s.termDeadline, s.node.PodDeadline)
}

// commitLocked recomputes the view; when it changed (or force), it takes a
// new generation, wakes the long-polls, mirrors the state to the files and
// sends the signal when a drain starts. Call with s.mu held.
func (s *Sidecar) commitLocked(force bool) {
	v := s.derive()
	old := s.view
	if sameView(v, old) && !force {
		return
	}
	v.Generation = wire.NextGeneration(old.Generation, s.now())
	s.view = v
	close(s.changed)
	s.changed = make(chan struct{})
	if v.Phase != old.Phase || force {
		s.log.Info("state changed", "phase", v.Phase, "was", old.Phase, "reason", v.Reason,
			"deadline", v.Deadline, "agent_generation", v.AgentGeneration, "agent_connected", v.AgentConnected)
	}
	if err := s.mirror(s.withRemaining(v)); err != nil {
		s.log.Error("mirroring state to files failed", "dir", s.cfg.Dir, "err", err)
	}
	if v.Phase != wire.PhaseDraining {
		s.signaled = false
	} else if !s.signaled && s.cfg.Signal != nil {
		s.signaled = true
		s.sendSignal()
	}
}

// setNode records what the agent said. Call with s.mu not held.
func (s *Sidecar) setNode(st wire.NodeState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.connected {
		s.reportVer++ // a restarted agent has forgotten the report
		s.wakeReporter()
	}
	if s.node.Phase == wire.PhaseDraining && st.Phase == wire.PhaseRunning && !s.terminating && s.done {
		// The drain is off: the workers are back at work.
		s.done = false
		s.reportVer++
		s.wakeReporter()
	}
	podDeadline := !s.node.PodDeadline.Equal(st.PodDeadline)
	s.node, s.connected, s.heard = st, true, true
	s.commitLocked(false)
	if podDeadline {
		// Wake a pod-terminating drain waiting for the stop time, even
		// when what the workers see has not changed.
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

func (s *Sidecar) setDisconnected() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected = false
	s.commitLocked(false)
}

// SetDone records that the workers are done and forwards it to the agent.
func (s *Sidecar) SetDone() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		s.log.Info("workers done", "phase", s.view.Phase, "inflight", s.inflight)
	}
	s.done = true
	s.reportVer++
	s.wakeReporter()
	s.commitLocked(false)
}

// SetInFlight records how many messages the workers hold and forwards it.
func (s *Sidecar) SetInFlight(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == n {
		return
	}
	s.inflight = n
	s.reportVer++
	s.wakeReporter()
	s.commitLocked(false)
}

// Terminate drains because the pod itself is going away (reason
// pod-terminating, deadline timeout from the first call), then blocks until
// the workers are done, that deadline passes, the worker process is gone
// (when SignalProcess is set) or ctx is done. It reports whether the workers
// said they were done. A later call waits for the first call's deadline, so
// SIGTERM after a completed preStop hook returns at once.
func (s *Sidecar) Terminate(ctx context.Context, timeout time.Duration) bool {
	if timeout <= 0 {
		timeout = s.cfg.PrestopTimeout
	}
	s.mu.Lock()
	if !s.terminating {
		start := s.now()
		s.awaitPodDeadlineLocked(ctx, min(PodDeadlineWait, timeout/4))
		if !s.terminating { // another call may have got here while this one waited
			s.terminating = true
			s.termDeadline = start.Add(timeout)
			s.log.Info("pod terminating: draining", "timeout", timeout.String(), "pod_deadline", s.node.PodDeadline)
			s.commitLocked(false)
		}
	}
	deadline := s.termBy()
	s.mu.Unlock()

	timer := time.NewTimer(max(deadline.Sub(s.now()), 0))
	defer timer.Stop()
	var check <-chan time.Time
	if s.cfg.SignalProcess != "" {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		check = t.C
	}
	for {
		s.mu.Lock()
		done, ch := s.done, s.changed
		if by := s.termBy(); by.Before(deadline) {
			deadline = by // the agent named an earlier stop time
			timer.Reset(max(deadline.Sub(s.now()), 0))
		}
		s.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			s.log.Warn("workers not done before the timeout")
			return false
		case <-check:
			if len(findProcesses(s.cfg.ProcRoot, s.cfg.SignalProcess)) == 0 {
				s.log.Info("worker process gone", "process", s.cfg.SignalProcess)
				return false
			}
		case <-ctx.Done():
			return false
		}
	}
}

// PodDeadlineWait is how long at most a pod-terminating drain waits for
// the agent to name the pod's stop time before it tells the workers
// anything (a quarter of the preStop timeout, if that is shorter): the
// agent sees the pod's deletion, with its grace period, on its watch about
// when the kubelet does, so usually it has named it before the preStop
// hook runs; and a deletion's grace (an eviction's, a kubectl delete
// --grace-period) can be shorter than the pod's own, which is all the
// sidecar knows by itself. Without an answer (the agent unreachable) the
// workers are told the preStop timeout.
const PodDeadlineWait = 500 * time.Millisecond

// awaitPodDeadlineLocked waits, while the agent is connected and has named
// no stop time for the pod, until it does, wait passes or ctx is done.
// Call with s.mu held; it is released while waiting.
func (s *Sidecar) awaitPodDeadlineLocked(ctx context.Context, wait time.Duration) {
	if !s.connected || !s.node.PodDeadline.IsZero() {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for s.connected && s.node.PodDeadline.IsZero() {
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			s.mu.Lock()
			return
		case <-ctx.Done():
			s.mu.Lock()
			return
		}
		s.mu.Lock()
	}
}

func (s *Sidecar) wakeReporter() {
	select {
	case s.reportWake <- struct{}{}:
	default:
	}
}

// sameView reports whether a and b show the workers the same thing,
// generations aside.
func sameView(a, b wire.State) bool {
	a.Generation, b.Generation = 0, 0
	da, db := a.Deadline, b.Deadline
	a.Deadline, b.Deadline = time.Time{}, time.Time{}
	a.RemainingSeconds, b.RemainingSeconds = nil, nil
	return a == b && da.Equal(db)
}

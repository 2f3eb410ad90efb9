package pod

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

func newTestSidecar(t *testing.T, dir string) *Sidecar {
	t.Helper()
	s, err := New(Config{Namespace: "ns", Name: "p", Agent: "127.0.0.1:1", Listen: "127.0.0.1:0", Dir: dir, PrestopTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.ln.Close() })
	return s
}

func TestDerive(t *testing.T) {
	deadline := time.Date(2026, 1, 1, 12, 0, 30, 0, time.UTC)
	term := deadline.Add(-10 * time.Second)
	later := deadline.Add(time.Hour)
	tests := []struct {
		name        string
		node        wire.NodeState
		connected   bool
		terminating bool
		termAt      time.Time
		want        wire.Phase
		wantReason  string
		wantAt      time.Time
	}{
		{"never connected", wire.NodeState{}, false, false, time.Time{}, wire.PhaseUnknown, "", time.Time{}},
		{"running", wire.NodeState{Phase: wire.PhaseRunning}, true, false, time.Time{}, wire.PhaseRunning, "", time.Time{}},
		{"agent gone while running", wire.NodeState{Phase: wire.PhaseRunning}, false, false, time.Time{}, wire.PhaseUnknown, "", time.Time{}},
		{"draining", wire.NodeState{Phase: wire.PhaseDraining, Reason: "preemption", Deadline: deadline}, true, false, time.Time{}, wire.PhaseDraining, "preemption", deadline},
		{"agent gone while draining", wire.NodeState{Phase: wire.PhaseDraining, Reason: "preemption", Deadline: deadline}, false, false, time.Time{}, wire.PhaseDraining, "preemption", deadline},
		{"pod terminating", wire.NodeState{Phase: wire.PhaseRunning}, true, true, term, wire.PhaseDraining, wire.ReasonPodTerminating, term},
		{"pod terminating, agent gone", wire.NodeState{}, false, true, term, wire.PhaseDraining, wire.ReasonPodTerminating, term},
		{"both, pod first", wire.NodeState{Phase: wire.PhaseDraining, Reason: "preemption", Deadline: deadline}, true, true, term, wire.PhaseDraining, "preemption", term},
		{"both, node first", wire.NodeState{Phase: wire.PhaseDraining, Reason: "preemption", Deadline: deadline}, true, true, later, wire.PhaseDraining, "preemption", deadline},
		{"another tool's drain, no deadline", wire.NodeState{Phase: wire.PhaseDraining, Reason: "karpenter", Source: "node"}, true, false, time.Time{}, wire.PhaseDraining, "karpenter", time.Time{}},
		{"another tool's drain, then the pod's termination gives the deadline", wire.NodeState{Phase: wire.PhaseDraining, Reason: "cordon", Source: "node"}, true, true, term, wire.PhaseDraining, "cordon", term},
		// The agent's word on when this pod stops caps every deadline.
		{"draining, pod stops first", wire.NodeState{Phase: wire.PhaseDraining, Reason: "preemption", Deadline: deadline, PodDeadline: term}, true, false, time.Time{}, wire.PhaseDraining, "preemption", term},
		{"pod terminating, its deletion ends first", wire.NodeState{Phase: wire.PhaseRunning, PodDeadline: term}, true, true, later, wire.PhaseDraining, wire.ReasonPodTerminating, term},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Sidecar{node: tt.node, connected: tt.connected, terminating: tt.terminating, termDeadline: tt.termAt}
			v := s.derive()
			if v.Phase != tt.want || v.Reason != tt.wantReason || !v.Deadline.Equal(tt.wantAt) || v.AgentConnected != tt.connected {
				t.Errorf("derive() = %+v; want %s %q %s", v, tt.want, tt.wantReason, tt.wantAt)
			}
		})
	}
}

func readState(t *testing.T, dir string) wire.State {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var v wire.State
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestFilesAndRestore(t *testing.T) {
	dir := t.TempDir()
	s := newTestSidecar(t, dir)
	flag := filepath.Join(dir, DrainingFile)
	if v := readState(t, dir); v.Phase != wire.PhaseUnknown {
		t.Errorf("at start: %+v", v)
	}
	s.setNode(wire.NodeState{Generation: 7, Phase: wire.PhaseRunning})
	if _, err := os.Stat(flag); !os.IsNotExist(err) {
		t.Errorf("flag file while running: %v", err)
	}
	deadline := time.Now().Add(time.Minute).Truncate(time.Second).UTC()
	s.setNode(wire.NodeState{Generation: 8, Phase: wire.PhaseDraining, Reason: "spot-interruption", Source: "aws", Deadline: deadline})
	s.SetInFlight(3)
	b, err := os.ReadFile(flag)
	if err != nil || string(b) != wire.FormatTime(deadline)+"\nspot-interruption\n" {
		t.Errorf("flag file = %q, %v", b, err)
	}
	v := readState(t, dir)
	if v.Phase != wire.PhaseDraining || v.AgentGeneration != 8 || v.InFlight != 3 || v.RemainingSeconds == nil {
		t.Errorf("state.json while draining: %+v", v)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("files left behind: %v", entries)
	}

	// A new sidecar in the same pod carries on with the drain.
	_ = s.ln.Close()
	s2 := newTestSidecar(t, dir)
	got := s2.State()
	if got.Phase != wire.PhaseDraining || got.Reason != "spot-interruption" || !got.Deadline.Equal(deadline) ||
		got.InFlight != 3 || got.Generation <= v.Generation || got.AgentConnected {
		t.Errorf("restored: %+v (was %+v)", got, v)
	}

	// The agent says the drain is off.
	s2.setNode(wire.NodeState{Generation: 9, Phase: wire.PhaseRunning})
	if _, err := os.Stat(flag); !os.IsNotExist(err) {
		t.Errorf("flag file after the drain: %v", err)
	}
}

func TestTerminate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSidecar(t, "")
		s.setNode(wire.NodeState{Generation: 1, Phase: wire.PhaseRunning})
		result := make(chan bool)
		go func() { result <- s.Terminate(t.Context(), 0) }()
		// The agent names no stop time for the pod: after PodDeadlineWait,
		// the workers are told the preStop timeout, counted from the hook.
		time.Sleep(PodDeadlineWait)
		synctest.Wait()
		if st := s.State(); st.Phase != wire.PhaseDraining || st.Reason != wire.ReasonPodTerminating || *st.RemainingSeconds != 9.5 {
			t.Errorf("terminating: %+v", st)
		}
		// The agent resuming does not end a pod's own drain.
		s.setNode(wire.NodeState{Generation: 2, Phase: wire.PhaseRunning})
		time.Sleep(3 * time.Second)
		s.SetDone()
		if !<-result {
			t.Error("Terminate did not see done")
		}
		if !s.Terminate(t.Context(), 0) {
			t.Error("a second Terminate after done did not return done")
		}
	})
	synctest.Test(t, func(t *testing.T) {
		s := newTestSidecar(t, "")
		start := time.Now()
		if s.Terminate(t.Context(), 4*time.Second) {
			t.Error("Terminate reported done")
		}
		if waited := time.Since(start); waited != 4*time.Second {
			t.Errorf("Terminate waited %s, want the timeout", waited)
		}
		start = time.Now()
		s.Terminate(t.Context(), 0)
		if time.Since(start) != 0 {
			t.Error("Terminate after the timeout waited again")
		}
	})
}

func TestWorkerAPI(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSidecar(t, "")
		h := s.Handler()
		do := func(method, path string, body string) *httptest.ResponseRecorder {
			req := httptest.NewRequest(method, path, nil)
			if body != "" {
				req = httptest.NewRequest(method, path, stringsReader(body))
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			return rec
		}
		var st wire.State
		if err := json.Unmarshal(do("GET", "/v1/state", "").Body.Bytes(), &st); err != nil || st.Phase != wire.PhaseUnknown {
			t.Fatalf("state: %+v, %v", st, err)
		}
		answered := make(chan wire.State)
		go func() {
			var next wire.State
			_ = json.Unmarshal(do("GET", "/v1/state?wait=30s&generation="+itoa(st.Generation), "").Body.Bytes(), &next)
			answered <- next
		}()
		synctest.Wait()
		s.setNode(wire.NodeState{Generation: 5, Phase: wire.PhaseDraining, Reason: "preemption", Deadline: time.Now().Add(20 * time.Second)})
		if next := <-answered; next.Phase != wire.PhaseDraining || *next.RemainingSeconds != 20 {
			t.Errorf("long-poll: %+v", next)
		}
		for _, c := range []struct {
			path, body string
			want       int
		}{
			{"/v1/inflight?count=4", "", http.StatusNoContent},
			{"/v1/inflight", `{"inflight": 2}`, http.StatusNoContent},
			{"/v1/inflight?count=-1", "", http.StatusBadRequest},
			{"/v1/inflight", `{}`, http.StatusBadRequest},
			{"/v1/done", "", http.StatusNoContent},
		} {
			if rec := do("POST", c.path, c.body); rec.Code != c.want {
				t.Errorf("POST %s %s: %d, want %d", c.path, c.body, rec.Code, c.want)
			}
		}
		if got := s.State(); !got.Done || got.InFlight != 2 {
			t.Errorf("after reports: %+v", got)
		}
	})
}

func TestFindProcesses(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"10/comm":    "worker\n",
		"11/comm":    "sh\n",
		"11/cmdline": "/usr/local/bin/worker\x00--queue\x00jobs\x00",
		"12/comm":    "other\n",
		"13/comm":    "a-very-long-wor\n", // comm is cut at 15 bytes
		"self/comm":  "worker\n",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := findProcesses(root, "worker"); !slices.Equal(sorted(got), []int{10, 11}) {
		t.Errorf("worker: %v", got)
	}
	if got := findProcesses(root, "a-very-long-worker"); !slices.Equal(got, []int{13}) {
		t.Errorf("long name: %v", got)
	}
}

func sorted(s []int) []int { slices.Sort(s); return s }

// TestFilesNoDeadline: a drain another tool started has no deadline; the
// flag file's first line is then empty, state.json has neither deadline
// nor remaining time, and a restarted sidecar carries on with the drain.
func TestFilesNoDeadline(t *testing.T) {
	dir := t.TempDir()
	s := newTestSidecar(t, dir)
	s.setNode(wire.NodeState{Generation: 3, Phase: wire.PhaseDraining, Reason: "cluster-autoscaler", Source: "node"})
	b, err := os.ReadFile(filepath.Join(dir, DrainingFile))
	if err != nil || string(b) != "\ncluster-autoscaler\n" {
		t.Errorf("flag file = %q, %v; want an empty deadline line and the reason", b, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if m["phase"] != "draining" || m["reason"] != "cluster-autoscaler" || m["source"] != "node" || m["deadline"] != nil || m["remaining_seconds"] != nil {
		t.Errorf("state.json = %s", raw)
	}
	_ = s.ln.Close()
	s2 := newTestSidecar(t, dir)
	if got := s2.State(); got.Phase != wire.PhaseDraining || got.Reason != "cluster-autoscaler" || !got.Deadline.IsZero() || got.RemainingSeconds != nil {
		t.Errorf("restored: %+v", got)
	}
}

// A pod deleted with a grace shorter than its own (an eviction near a
// deadline, kubectl delete --grace-period): the preStop hook waits for the
// agent to name the pod's stop time, and tells the workers that, not its
// own timeout; it returns by then, so SIGTERM comes no earlier than told.
func TestTerminateTakesThePodDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSidecar(t, "")
		s.setNode(wire.NodeState{Generation: 1, Phase: wire.PhaseRunning})
		start := time.Now()
		stop := start.Add(3 * time.Second)
		result := make(chan bool)
		go func() { result <- s.Terminate(t.Context(), 0) }()
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if st := s.State(); st.Phase != wire.PhaseRunning {
			t.Fatalf("workers told %+v before the agent named the pod's stop time", st)
		}
		s.setNode(wire.NodeState{Generation: 2, Phase: wire.PhaseRunning, PodDeadline: stop})
		synctest.Wait()
		if st := s.State(); st.Phase != wire.PhaseDraining || !st.Deadline.Equal(stop) {
			t.Errorf("terminating: %+v, want the pod's stop time %v (not the 10 s timeout)", st, stop)
		}
		if <-result {
			t.Error("Terminate reported done")
		}
		if took := time.Since(start); took != 3*time.Second {
			t.Errorf("preStop returned after %v, want at the pod's stop time (3 s)", took)
		}
	})
}

// A sidecar that restarts reads the done its workers reported from its
// state file, but sends nothing to the agent before the agent's first
// answer: the drain may have been called off meanwhile, and a stale done
// released the pod while its workers held a task again.
func TestRestoredDoneWaitsForTheAgent(t *testing.T) {
	dir := t.TempDir()
	s := newTestSidecar(t, dir)
	s.setNode(wire.NodeState{Generation: 8, Phase: wire.PhaseDraining, Reason: "preemption", Deadline: time.Now().Add(time.Minute)})
	s.SetDone()
	_ = s.ln.Close()

	reports := make(chan string, 10)
	answer := make(chan struct{})
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			b, _ := io.ReadAll(r.Body)
			reports <- string(b)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		select {
		case <-answer: // the drain was called off while the sidecar was down
			_ = json.NewEncoder(w).Encode(wire.NodeState{Generation: 9, Phase: wire.PhaseRunning})
		case <-r.Context().Done():
		case <-time.After(200 * time.Millisecond):
			http.Error(w, "agent starting", http.StatusServiceUnavailable)
		}
	}))
	defer agent.Close()
	s2, err := New(Config{Namespace: "ns", Name: "p", Agent: agent.URL, Listen: "127.0.0.1:0", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- s2.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case r := <-reports:
		t.Fatalf("report %s sent before the agent answered", r)
	case <-time.After(time.Second):
	}
	close(answer)
	// The agent says running: the workers are back at work, and the
	// sidecar never claims done (a zero report need not be sent at all).
	for {
		select {
		case r := <-reports:
			var rep wire.Report
			if err := json.Unmarshal([]byte(r), &rep); err != nil || rep.Done {
				t.Fatalf("report after the agent said running: %s, want not done", r)
			}
		case <-time.After(time.Second):
			if st := s2.State(); st.Phase != wire.PhaseRunning || st.Done {
				t.Errorf("sidecar shows %+v after the agent said running", st)
			}
			return
		}
	}
}

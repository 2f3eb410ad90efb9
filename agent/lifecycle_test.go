package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
	"github.com/lastcall-dev/lastcall/watcher"
)

var (
	sequences = flag.Int("lifecycle.sequences", 300, "random notice sequences TestLifecycleInvariants runs")
	steps     = flag.Int("lifecycle.steps", 40, "steps per sequence")
	seed      = flag.Uint64("lifecycle.seed", 1, "seed of the first sequence")
)

// modelDrainer cordons for real (the drainer's own code on a fake
// clientset: pure logic, no Kubernetes behaviour claimed) and records drain
// runs instead of evicting. Cordon fails when told to, like an apiserver
// that refuses for a while.
type modelDrainer struct {
	real *drainer.Drainer

	mu         sync.Mutex
	failCordon bool
	runs       []modelRun // every Drain call, in order
}

type modelRun struct {
	deadline  time.Time
	running   bool
	completed bool // ran to its end, not canceled
}

var errRefused = errors.New("apiserver refused")

func (m *modelDrainer) Cordon(ctx context.Context, node, source, kind string) (bool, error) {
	m.mu.Lock()
	fail := m.failCordon
	m.mu.Unlock()
	if fail {
		return false, errRefused
	}
	return m.real.Cordon(ctx, node, source, kind)
}

func (m *modelDrainer) OutOfService(ctx context.Context, node string) (bool, error) {
	return m.real.OutOfService(ctx, node)
}

func (m *modelDrainer) Uncordon(ctx context.Context, node string) (bool, error) {
	return m.real.Uncordon(ctx, node)
}

func (m *modelDrainer) Plan(_ context.Context, _ string, d time.Time, p drainer.Policy) (drainer.Plan, error) {
	return drainer.NewPlan(nil, types.NamespacedName{}, d, p), nil
}

// Drain works until the deadline (or Overtime after its start, if later),
// like the real one, or until it is canceled.
func (m *modelDrainer) Drain(ctx context.Context, _ string, d time.Time, p drainer.Policy) (drainer.Report, error) {
	m.mu.Lock()
	i := len(m.runs)
	m.runs = append(m.runs, modelRun{deadline: d, running: true})
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.runs[i].running = false
		m.mu.Unlock()
	}()
	start := time.Now()
	end := start.Add(p.WithDefaults().Overtime)
	if d.After(end) {
		end = d
	}
	t := time.NewTimer(end.Sub(start))
	defer t.Stop()
	select {
	case <-t.C:
		m.mu.Lock()
		m.runs[i].completed = true
		m.mu.Unlock()
		return drainer.Report{Deadline: d, Started: start, Finished: time.Now(), Drained: true}, nil
	case <-ctx.Done():
		return drainer.Report{Deadline: d, Started: start, Finished: time.Now()}, ctx.Err()
	}
}

// running returns the deadlines of the drains under way.
func (m *modelDrainer) running() []time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []time.Time
	for _, r := range m.runs {
		if r.running {
			out = append(out, r.deadline)
		}
	}
	return out
}

// completedTo reports whether a drain to d ran to its end.
func (m *modelDrainer) completedTo(d time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.runs {
		if r.completed && r.deadline.Equal(d) {
			return true
		}
	}
	return false
}

// modelSidecars is what a sidecar on the node believes: the last state any
// incarnation of the agent told it. It survives agent restarts.
type modelSidecars struct {
	mu    sync.Mutex
	word  *wire.NodeState
	words int
}

func (s *modelSidecars) Tell(st wire.NodeState) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.word = &st
	s.words++
	return uint64(s.words)
}

func (s *modelSidecars) Told(context.Context, uint64) (int, error) { return 1, nil }

func (s *modelSidecars) current() *wire.NodeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.word
}

// world is one node, its metadata and the agent watching them.
type world struct {
	t        *testing.T
	rng      *rand.Rand
	client   kubernetes.Interface
	drainer  *modelDrainer
	sidecars *modelSidecars

	metadata map[string]watcher.Notice // what the metadata shows as active now
	synced   bool                      // the running agent's watcher has read it in full

	notices chan watcher.Notice
	stop    context.CancelFunc
	done    chan struct{}
	log     []string
}

const node = "n1"

func newWorld(t *testing.T, seed uint64) *world {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})
	w := &world{
		t: t, rng: rand.New(rand.NewPCG(seed, 0)), client: client,
		drainer:  &modelDrainer{real: drainer.New(client, drainer.Options{})},
		sidecars: &modelSidecars{},
		metadata: map[string]watcher.Notice{},
	}
	w.start()
	return w
}

// start runs a new agent; its watcher reads the metadata: every active
// notice, then (now or in a later step) the synced marker.
func (w *world) start() {
	a, err := New(Config{Node: node}, Deps{
		Client: w.client, Drainer: w.drainer, Notifier: w.sidecars,
		Pods: NewNodePods(w.client, node), Events: record.NewFakeRecorder(1000),
	})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(w.t.Context())
	w.notices, w.stop, w.done, w.synced = make(chan watcher.Notice), cancel, make(chan struct{}), false
	go func() {
		defer close(w.done)
		_ = a.Run(ctx, w.notices)
	}()
	for _, id := range sortedKeys(w.metadata) {
		n := w.metadata[id]
		n.Detected = time.Now()
		w.notices <- n
	}
	if w.rng.IntN(2) == 0 {
		w.sync()
	}
}

func (w *world) sync() {
	if !w.synced {
		w.notices <- watcher.Synced(watcher.SourceAWS)
		w.synced = true
	}
}

func (w *world) restart() {
	w.stop()
	<-w.done
	w.start()
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

var kinds = []watcher.Kind{
	watcher.KindPreemption, watcher.KindSpotInterruption, watcher.KindRebalance,
	watcher.KindMaintenance, watcher.KindTermination,
}

// step applies one random input.
func (w *world) step() {
	switch r := w.rng.IntN(100); {
	case r < 30: // a notice appears, or an existing one moves
		id := fmt.Sprintf("n%d", w.rng.IntN(4))
		kind := kinds[w.rng.IntN(len(kinds))]
		if old, ok := w.metadata[id]; ok {
			kind = old.Kind // an ID keeps its kind
		}
		n := watcher.Notice{Source: watcher.SourceAWS, Kind: kind, State: watcher.StateActive, ID: id, Detected: time.Now()}
		if kind != watcher.KindRebalance { // advisory notices carry no deadline
			n.Deadline = time.Now().Add(time.Duration(w.rng.IntN(300)-60) * time.Second)
		}
		w.metadata[id] = n
		w.notices <- n
		w.logf("notice %s %s in %v", id, kind, time.Until(n.Deadline))
	case r < 50: // a notice is canceled
		ids := sortedKeys(w.metadata)
		if len(ids) == 0 {
			return
		}
		id := ids[w.rng.IntN(len(ids))]
		n := w.metadata[id]
		delete(w.metadata, id)
		n.State, n.Deadline = watcher.StateCanceled, time.Time{}
		w.notices <- n
		w.logf("cancel %s", id)
	case r < 60:
		w.sync()
		w.logf("synced")
	case r < 70:
		w.restart()
		w.logf("restart (synced at once: %v)", w.synced)
	case r < 80:
		w.drainer.mu.Lock()
		w.drainer.failCordon = !w.drainer.failCordon
		w.logf("cordon fails: %v", w.drainer.failCordon)
		w.drainer.mu.Unlock()
	default:
		d := time.Duration(w.rng.IntN(90)) * time.Second
		time.Sleep(d)
		w.logf("%v pass", d)
	}
}

func (w *world) logf(format string, args ...any) {
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

// check asserts the invariants of the package documentation, once the
// agent has settled (every goroutine blocked) and retries have had time.
func (w *world) check() error {
	synctest.Wait()
	var drains, cordons []watcher.Notice
	for _, n := range w.metadata {
		switch DefaultPolicies().For(n.Kind) {
		case ActionDrain:
			drains = append(drains, withDeadline(n, nil))
		case ActionCordon:
			cordons = append(cordons, n)
		}
	}
	want := earliest(drains)

	// The drain runs to the earliest deadline among active drain notices.
	running := w.drainer.running()
	switch {
	case want == nil && len(running) > 0:
		return fmt.Errorf("drains %v under way with no drain notice active", running)
	case len(running) > 1:
		return fmt.Errorf("%d drains under way at once: %v", len(running), running)
	case want != nil:
		// Drain calls may reach the drainer out of order (each runs in its
		// own goroutine), so the check is on what runs, not on the order.
		if len(running) == 1 && !running[0].Equal(want.Deadline) {
			return fmt.Errorf("drain under way to %v, want the earliest deadline %v (%s)", running[0], want.Deadline, want.ID)
		}
		if len(running) == 0 && !w.drainer.completedTo(want.Deadline) {
			return fmt.Errorf("no drain under way or done to the earliest deadline %v (%s)", want.Deadline, want.ID)
		}
	}

	// Sidecars: the earliest drain deadline; never running while a drain
	// notice is active; running once the metadata confirms none.
	word := w.sidecars.current()
	switch {
	case want != nil:
		if word == nil || word.Phase != wire.PhaseDraining || !word.Deadline.Equal(want.Deadline) || word.NoticeID != want.ID {
			return fmt.Errorf("sidecars told %+v, want draining to %v (%s)", word, want.Deadline, want.ID)
		}
	case w.synced:
		if word == nil || word.Phase != wire.PhaseRunning {
			return fmt.Errorf("sidecars told %+v with no drain notice active (cordon-only: %d), want running", word, len(cordons))
		}
	}

	// The cordon: on while a notice holds, off once the metadata confirms
	// none does.
	n, err := w.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	_, cordoned := drainer.RecordOf(n)
	active := len(drains)+len(cordons) > 0
	switch {
	case active && !cordoned && !w.failing():
		return errors.New("a notice is active and the node is not cordoned")
	case !active && w.synced && (cordoned || n.Spec.Unschedulable):
		return errors.New("no notice is active, the metadata says so, and the node is still cordoned")
	case !active && w.synced && conditionTrue(n):
		return errors.New("no notice is active, the metadata says so, and the node condition still says imminent")
	}
	return nil
}

func (w *world) failing() bool {
	w.drainer.mu.Lock()
	defer w.drainer.mu.Unlock()
	return w.drainer.failCordon
}

func conditionTrue(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == ConditionType {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// TestLifecycleInvariants drives random sequences of notices, cancels,
// moved deadlines, synced markers, agent restarts, failing cordons and
// time passing through the agent, and checks the lifecycle's invariants
// after every step. Sequences are seeded: a failure names its seed, and
// -lifecycle.seed=N -lifecycle.sequences=1 replays it.
func TestLifecycleInvariants(t *testing.T) {
	n := *sequences
	if testing.Short() {
		n = min(n, 200)
	}
	for i := range n {
		s := *seed + uint64(i)
		synctest.Test(t, func(t *testing.T) {
			w := newWorld(t, s)
			defer func() {
				w.stop()
				<-w.done
			}()
			for range *steps {
				w.step()
				// Give retries (at most 5 s apart) time, as an operator
				// would before calling the state wrong.
				time.Sleep(6 * time.Second)
				if err := w.check(); err != nil {
					t.Fatalf("seed %d: %v\nsteps:\n  %s", s, err, joinLines(w.log))
				}
			}
		})
		if t.Failed() {
			return
		}
	}
	t.Logf("%d sequences of %d steps, invariants held after each", n, *steps)
}

func joinLines(l []string) string {
	out := ""
	for i, s := range l {
		if i > 0 {
			out += "\n  "
		}
		out += s
	}
	return out
}

// stuckCordon is a modelDrainer whose cordon hangs until its context ends,
// like a cordon queued in a busy apiserver.
type stuckCordon struct{ *modelDrainer }

func (s stuckCordon) Cordon(ctx context.Context, _, _, _ string) (bool, error) {
	<-ctx.Done()
	return false, ctx.Err()
}

// TestDrainWaitsForTheCordonAtMostCordonWait: with a cordon that does not
// finish, the drain still starts, CordonWait after the notice and not
// before.
func TestDrainWaitsForTheCordonAtMostCordonWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})
		m := &modelDrainer{real: drainer.New(client, drainer.Options{})}
		a, err := New(Config{Node: node}, Deps{
			Client: client, Drainer: stuckCordon{m}, Notifier: &modelSidecars{},
			Pods: NewNodePods(client, node), Events: record.NewFakeRecorder(1000),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		notices := make(chan watcher.Notice)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = a.Run(ctx, notices)
		}()
		defer func() { cancel(); <-done }()
		now := time.Now()
		notices <- watcher.Notice{Source: watcher.SourceGCE, Kind: watcher.KindPreemption, State: watcher.StateActive,
			ID: "p", Detected: now, Deadline: now.Add(30 * time.Second)}
		time.Sleep(DefaultCordonWait - time.Millisecond)
		synctest.Wait()
		if got := m.running(); len(got) != 0 {
			t.Fatalf("a drain started before CordonWait while the cordon was still under way: %v", got)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if got := m.running(); len(got) != 1 || !got[0].Equal(now.Add(30*time.Second)) {
			t.Fatalf("drains running after CordonWait: %v, want one to the deadline", got)
		}
	})
}

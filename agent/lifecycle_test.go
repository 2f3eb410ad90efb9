package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
	"github.com/lastcall-dev/lastcall/watcher"
)

var (
	sequences = flag.Int("lifecycle.sequences", 300, "random notice sequences TestLifecycleInvariants runs")
	steps     = flag.Int("lifecycle.steps", 40, "steps per sequence")
	seed      = flag.Uint64("lifecycle.seed", 1, "seed of the first sequence")
)

// modelDrainer cordons for real (the drainer's own code on a fake
// clientset: pure logic, no Kubernetes behaviour claimed) and drains like
// the real one in time: each pod of the plan is held for its workers (the
// agent's real Holds) until they say done or its latest eviction, then
// "evicted" with the plan's grace: its deletionTimestamp is set to the end
// of that grace, when the kubelet stops it at the latest, and it is gone
// then. Cordon fails when told to, like an apiserver that refuses for a
// while.
type modelDrainer struct {
	real  *drainer.Drainer
	w     *world
	holds func() drainer.HoldFunc // the running agent's

	mu         sync.Mutex
	failCordon bool
	runs       []modelRun // every drain, in order
}

type modelRun struct {
	deadline  time.Time
	running   bool
	completed bool // ran to its end, not canceled
}

var errRefused = errors.New("apiserver refused")

func (m *modelDrainer) Cordon(ctx context.Context, node, source, kind string, seen ...drainer.Sighting) (bool, error) {
	m.mu.Lock()
	fail := m.failCordon
	m.mu.Unlock()
	if fail {
		return false, errRefused
	}
	return m.real.Cordon(ctx, node, source, kind, seen...)
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

// DrainPlan works until the deadline (or Overtime after its start, if
// later), like the real one, or until it is canceled, evicting the plan's
// pods in time as described on modelDrainer.
func (m *modelDrainer) DrainPlan(ctx context.Context, _ string, plan drainer.Plan) (drainer.Report, error) {
	d, p := plan.Deadline, plan.Policy
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
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	hold := m.holds()
	var wg sync.WaitGroup
	for _, pod := range plan.Tiers[drainer.TierWorkload] {
		wg.Go(func() { m.evict(ctx, plan, hold, pod) })
	}
	if len(plan.Tiers[drainer.TierCritical]) > 0 {
		wg.Go(func() {
			t := time.NewTimer(time.Until(plan.CriticalStart()))
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
			for _, pod := range plan.Tiers[drainer.TierCritical] {
				m.evict(ctx, plan, hold, pod)
			}
		})
	}
	wg.Wait()
	<-ctx.Done()
	if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		m.mu.Lock()
		m.runs[i].completed = true
		m.mu.Unlock()
		return drainer.Report{Deadline: d, Started: start, Finished: time.Now(), Drained: true}, nil
	}
	return drainer.Report{Deadline: d, Started: start, Finished: time.Now()}, ctx.Err()
}

// evict holds pod for its workers like the real drainer, then asks it to
// leave with the plan's grace, and records when it is stopped.
func (m *modelDrainer) evict(ctx context.Context, plan drainer.Plan, hold drainer.HoldFunc, pod corev1.Pod) {
	released := false
	if ch := hold(ctx, &pod); ch != nil {
		t := time.NewTimer(max(time.Until(plan.LatestEviction(&pod)), 0))
		defer t.Stop()
		select {
		case <-ch:
			released = true
		case <-t.C:
		case <-ctx.Done():
			return // called off: nothing sent
		}
	}
	m.w.evicted(pod, plan.Grace(&pod, time.Now()), released)
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

// modelSidecars is what the sidecars on the node believe: the last node
// state any incarnation of the agent told them, each pod's own stop time,
// and every deadline each pod's workers were shown (by pod UID). It
// survives agent restarts. All pods with a sidecar count as subscribed.
type modelSidecars struct {
	w *world

	mu     sync.Mutex
	word   *wire.NodeState
	words  int
	podDL  map[sidecar.PodRef]time.Time
	shown  map[types.UID][]time.Time // deadlines shown to each pod's workers
	shownN int
}

func (s *modelSidecars) Tell(st wire.NodeState) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.word = &st
	s.words++
	s.showLocked()
	return uint64(s.words)
}

func (s *modelSidecars) Told(context.Context, uint64) (int, error) { return 1, nil }

func (s *modelSidecars) SetPodDeadlines(d map[sidecar.PodRef]time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.podDL = maps.Clone(d)
	s.showLocked()
}

func (s *modelSidecars) Subscribed(namespace, name string) bool {
	return s.w != nil && s.w.hasSidecar(namespace, name)
}

// showLocked records what each pod's workers see now: while the node
// drains, the earlier of its deadline and the pod's own stop time; while it
// runs, the pod's stop time once it is being deleted (its preStop shows
// it). Call with s.mu held.
func (s *modelSidecars) showLocked() {
	if s.w == nil {
		return
	}
	for _, p := range s.w.podsNow() {
		if p.Annotations[injectedAnnotation] != "true" {
			continue // no sidecar: its workers are told nothing
		}
		ref := sidecar.PodRef{Namespace: p.Namespace, Name: p.Name}
		var t time.Time
		if s.word != nil && s.word.Phase == wire.PhaseDraining {
			t = s.word.Deadline
		}
		if dl, ok := s.podDL[ref]; ok && (t.IsZero() || dl.Before(t)) && (!t.IsZero() || p.DeletionTimestamp != nil) {
			t = dl
		}
		if t.IsZero() {
			continue
		}
		if s.shown == nil {
			s.shown = map[types.UID][]time.Time{}
		}
		if l := s.shown[p.UID]; len(l) == 0 || !l[len(l)-1].Equal(t) {
			s.shown[p.UID] = append(l, t)
			s.shownN++
		}
	}
}

func (s *modelSidecars) current() *wire.NodeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.word
}

// world is one node, its pods, its metadata and the agent watching them.
type world struct {
	t        *testing.T
	rng      *rand.Rand
	tr       *tracked
	client   kubernetes.Interface
	drainer  *modelDrainer
	sidecars *modelSidecars

	metadata map[string]watcher.Notice // what the metadata shows as active now
	foreign  map[string]bool           // other tools' taints on the node
	synced   bool                      // the running agent's watcher has read it in full

	mu       sync.Mutex              // guards the fields below (the model drainer writes them)
	holds    *Holds                  // the running agent's
	stopAt   map[types.UID]time.Time // pods evicted by lastcall: when the kubelet stops them at the latest
	shownAt  map[types.UID]int       // ... and how many deadlines their workers had been shown then
	released map[types.UID]bool      // ... and whether their workers had said done
	doneBy   map[types.UID]bool      // standing done reports, by the UID that sent them
	wrong    []string                // invariant violations seen as they happened
	evicts   int                     // evictions sent
	seq      int                     // for pod UIDs

	notices chan watcher.Notice
	stop    context.CancelFunc
	done    chan struct{}
	log     []string
}

const node = "n1"

// The pods of the world: workers with a sidecar and grace periods of
// their own, a worker without a sidecar, and a critical pod (CoreDNS-like)
// whose presence shortens the workers' time.
var podNames = []string{"w-0", "w-1", "w-2", "plain", "dns"}

func newWorld(t *testing.T, seed uint64) *world {
	w := &world{
		t: t, rng: rand.New(rand.NewPCG(seed, 0)),
		tr:       newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}),
		metadata: map[string]watcher.Notice{}, foreign: map[string]bool{},
		stopAt: map[types.UID]time.Time{}, shownAt: map[types.UID]int{}, released: map[types.UID]bool{}, doneBy: map[types.UID]bool{},
	}
	w.client = w.tr.client
	w.sidecars = &modelSidecars{w: w}
	w.drainer = &modelDrainer{real: drainer.New(clientset.New(w.client), drainer.Options{}), w: w, holds: func() drainer.HoldFunc {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.holds.Hold
	}}
	for _, name := range podNames {
		if name == "dns" && w.rng.IntN(2) == 0 {
			continue // half the nodes have a critical pod
		}
		w.createPod(name)
	}
	w.start()
	return w
}

// createPod creates pod name, with a new UID (a StatefulSet replica that
// takes the name of one that left gets a new one).
func (w *world) createPod(name string) {
	w.mu.Lock()
	w.seq++
	uid := types.UID(fmt.Sprintf("%s-%d", name, w.seq))
	w.mu.Unlock()
	grace := int64(5 + w.rng.IntN(40))
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: uid, Annotations: map[string]string{}},
		Spec:       corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: &grace},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	switch {
	case name == "dns":
		p.Spec.PriorityClassName = "system-cluster-critical"
	case name != "plain":
		p.Annotations[injectedAnnotation] = "true"
	}
	if _, err := w.client.CoreV1().Pods("ns").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

// podsNow lists the pods on the node.
func (w *world) podsNow() []corev1.Pod {
	src := trackedPods{w.tr, node}
	pods, err := src.ListPods(context.Background(), node)
	if err != nil {
		w.t.Error(err)
	}
	return pods
}

func (w *world) hasSidecar(namespace, name string) bool {
	obj, err := w.tr.client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), namespace, name)
	return err == nil && obj.(*corev1.Pod).Annotations[injectedAnnotation] == "true"
}

// evicted is the model drainer's eviction of pod with grace seconds: the
// kubelet stops it at the latest when the grace ends (its preStop returns
// by then, or SIGTERM comes then), and it is gone after. The deletion's end
// is what the apiserver shows, in whole seconds.
func (w *world) evicted(pod corev1.Pod, grace int64, released bool) {
	stop := time.Now().Add(time.Duration(grace) * time.Second)
	w.mu.Lock()
	if _, again := w.stopAt[pod.UID]; again {
		w.mu.Unlock()
		return // already terminating: a second drain waits for it
	}
	if released && !w.doneBy[pod.UID] {
		w.wrong = append(w.wrong, fmt.Sprintf("pod %s (%s) released with no standing done report of its own UID", pod.Name, pod.UID))
	}
	w.stopAt[pod.UID], w.released[pod.UID] = stop, released
	w.evicts++
	w.mu.Unlock()
	w.sidecars.mu.Lock()
	n := len(w.sidecars.shown[pod.UID])
	w.sidecars.mu.Unlock()
	w.mu.Lock()
	w.shownAt[pod.UID] = n
	w.mu.Unlock()
	cur, err := w.client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil || cur.UID != pod.UID {
		return // gone, or replaced: the UID precondition fails
	}
	del := metav1.NewTime(stop.Truncate(time.Second))
	cur.DeletionTimestamp = &del
	if _, err := w.client.CoreV1().Pods(pod.Namespace).Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
		w.t.Error(err)
	}
	time.AfterFunc(time.Until(stop), func() {
		cur, err := w.client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err == nil && cur.UID == pod.UID {
			_ = w.client.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{})
		}
	})
}

// start runs a new agent; its watcher reads the metadata: every active
// notice, then (now or in a later step) the synced marker. The sidecars
// send their reports again, as they do to an agent that restarted.
func (w *world) start() {
	pods := trackedPods{w.tr, node}
	holds := NewHolds(w.sidecars, pods)
	a, err := New(Config{Node: node, Foreign: DefaultForeignConfig()}, Deps{
		Client: clientset.New(w.client), Drainer: w.drainer, Notifier: holds, Holds: holds,
		Pods: pods, Node: trackedNode{w.tr, node}, Events: record.NewFakeRecorder(1000),
		Logger: debugLogger(),
	})
	if err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	w.holds = holds
	var standing []string
	for _, p := range w.podsNow() {
		if w.doneBy[p.UID] {
			standing = append(standing, p.Name)
		}
	}
	w.mu.Unlock()
	for _, name := range standing {
		holds.Done("ns", name)
	}
	ctx, cancel := context.WithCancel(w.t.Context())
	w.notices, w.stop, w.done, w.synced = make(chan watcher.Notice), cancel, make(chan struct{}), false
	go func() {
		defer close(w.done)
		_ = a.Run(ctx, w.notices)
	}()
	cur, err := w.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	rec, _ := drainer.RecordOf(cur)
	for _, id := range sortedKeys(w.metadata) {
		n := w.metadata[id]
		first := n.Detected
		n.Detected = time.Now()
		if n.Source == watcher.SourceGCE {
			n.Deadline = n.Detected.Add(30 * time.Second) // GCE gives no time: the watcher counts from now
			if t, ok := rec.Seen[id]; !ok || !t.Equal(first) {
				// The apiserver refused every cordon since the notice came:
				// its first sighting is nowhere to be read back, and the
				// agent counts from now (a limit the docs state).
				w.metadata[id] = n
				w.logf("gce %s: first sighting lost with the restart", id)
			}
		}
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
	for _, id := range sortedKeys(w.metadata) {
		// A GCE machine stops at its deadline: the notice is over (a
		// maintenance event done, a preempted VM started again).
		if n := w.metadata[id]; n.Source == watcher.SourceGCE && !time.Now().Before(n.Deadline) {
			delete(w.metadata, id)
			n.State, n.Deadline = watcher.StateCanceled, time.Time{}
			w.notices <- n
			w.logf("gce %s over", id)
		}
	}
	switch r := w.rng.IntN(100); {
	case r < 22: // a notice appears, or an existing one moves
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
	case r < 28: // a GCE preemption or maintenance: 30 s from its first sighting
		id, kind := "gce-preempted", watcher.KindPreemption
		if w.rng.IntN(2) == 0 {
			id, kind = "gce-maintenance", watcher.KindMaintenance
		}
		if _, ok := w.metadata[id]; ok {
			return // GCE shows it until the machine stops
		}
		now := time.Now()
		n := watcher.Notice{Source: watcher.SourceGCE, Kind: kind, State: watcher.StateActive, ID: id, Detected: now, Deadline: now.Add(30 * time.Second)}
		w.metadata[id] = n
		w.notices <- n
		w.logf("gce %s", id)
	case r < 40: // a notice is canceled
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
	case r < 46:
		w.sync()
		w.logf("synced")
	case r < 52:
		w.restart()
		w.logf("restart (synced at once: %v)", w.synced)
	case r < 57:
		w.drainer.mu.Lock()
		w.drainer.failCordon = !w.drainer.failCordon
		w.logf("cordon fails: %v", w.drainer.failCordon)
		w.drainer.mu.Unlock()
	case r < 62: // the apiserver applies node writes but their replies are lost, or no longer
		lose := w.rng.IntN(2) == 0
		if lose {
			w.tr.setLose(func(_, res string) bool { return res == "nodes" })
		} else {
			w.tr.setLose(nil)
		}
		w.logf("node write replies lost: %v", lose)
	case r < 72: // a pod's workers say done, or take it back
		name := podNames[w.rng.IntN(3)]
		pods := trackedPods{w.tr, node}
		uid, ok := pods.PodUID("ns", name)
		if !ok {
			return
		}
		w.mu.Lock()
		retract := w.doneBy[uid]
		w.doneBy[uid] = !retract
		holds := w.holds
		w.mu.Unlock()
		if retract {
			holds.Undone("ns", name)
		} else {
			holds.Done("ns", name)
		}
		w.logf("%s (%s) says done: %v", name, uid, !retract)
	case r < 75: // another tool starts or stops taking the node away (its taint)
		key := []string{"karpenter.sh/disrupted", "ToBeDeletedByClusterAutoscaler", "DeletionCandidateOfClusterAutoscaler"}[w.rng.IntN(3)]
		effect := corev1.TaintEffectNoSchedule
		if key == "DeletionCandidateOfClusterAutoscaler" {
			effect = corev1.TaintEffectPreferNoSchedule // a candidate only: not a drain
		}
		on := !w.foreign[key]
		if err := w.setTaint(key, effect, on); err != nil {
			return // the reply was lost: the model tries again in a later step
		}
		w.foreign[key] = on
		w.logf("taint %s: %v", key, on)
	case r < 78: // a pod that left comes back under its name with a new UID
		name := podNames[w.rng.IntN(len(podNames))]
		pods := trackedPods{w.tr, node}
		if _, ok := pods.PodUID("ns", name); ok {
			return
		}
		w.createPod(name)
		w.logf("pod %s created again", name)
	default:
		d := time.Duration(w.rng.IntN(90)) * time.Second
		time.Sleep(d)
		w.logf("%v pass", d)
	}
}

func (w *world) logf(format string, args ...any) {
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

// setTaint adds or removes another tool's taint on the node.
func (w *world) setTaint(key string, effect corev1.TaintEffect, on bool) error {
	n, err := w.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
	if on {
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: key, Effect: effect})
	}
	_, err = w.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{})
	if errors.Is(err, errLost) {
		return nil // applied
	}
	return err
}

// check asserts the invariants of the package documentation, once the
// agent has settled (every goroutine blocked) and retries have had time.
func (w *world) check() error {
	synctest.Wait()
	n, err := w.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	rec, cordoned := drainer.RecordOf(n)
	var drains, cordons []watcher.Notice
	for _, m := range w.metadata {
		switch DefaultPolicies().For(m.Kind) {
		case ActionDrain:
			m = withDeadline(m, &rec)
			if time.Until(m.Deadline) <= DefaultDrainLead {
				drains = append(drains, m)
			} else {
				cordons = append(cordons, m)
			}
		case ActionCordon:
			cordons = append(cordons, m)
		}
	}
	want := earliest(drains)

	// GCE notices work to 30 s from their first sighting, whatever
	// restarts came between (the cordon record keeps it).
	for _, m := range w.metadata {
		if m.Source == watcher.SourceGCE && cordoned {
			if got := withDeadline(m, &rec).Deadline; !got.Equal(m.Deadline) && !w.failing() {
				return fmt.Errorf("GCE notice %s works to %v, want 30 s from its first sighting, %v", m.ID, got, m.Deadline)
			}
		}
	}

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

	// Another tool's drain: its taints stay (lastcall never removes a
	// taint it did not set).
	foreign := false
	for key, on := range w.foreign {
		has := slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
		if has != on {
			return fmt.Errorf("taint %s on the node: %v, want %v (lastcall changed another tool's taint)", key, has, on)
		}
		foreign = foreign || (on && key != "DeletionCandidateOfClusterAutoscaler")
	}

	// Sidecars: the earliest drain deadline; never running while a drain
	// notice is active or another tool drains the node; running once the
	// metadata confirms no notice and no other tool drains it.
	word := w.sidecars.current()
	switch {
	case want != nil:
		if word == nil || word.Phase != wire.PhaseDraining || !word.Deadline.Equal(want.Deadline) || word.NoticeID != want.ID {
			return fmt.Errorf("sidecars told %+v, want draining to %v (%s)", word, want.Deadline, want.ID)
		}
	case foreign:
		if word == nil || word.Phase != wire.PhaseDraining || word.Source != ForeignSource || !word.Deadline.IsZero() {
			return fmt.Errorf("sidecars told %+v while another tool drains the node, want draining with no deadline", word)
		}
	case w.synced:
		if word == nil || word.Phase != wire.PhaseRunning {
			return fmt.Errorf("sidecars told %+v with no drain notice due (others: %d), want running", word, len(cordons))
		}
	}

	// No worker is ever shown a deadline later than its pod's stop time:
	// not the one it believed when its pod was asked to leave, nor any
	// after (a deadline shown before a later notice moved everything
	// earlier was true when shown); a pod is released only by a standing
	// done report of its own UID.
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.wrong) > 0 {
		return errors.New(w.wrong[0])
	}
	w.sidecars.mu.Lock()
	defer w.sidecars.mu.Unlock()
	for uid, stop := range w.stopAt {
		if w.released[uid] {
			continue // its workers said done: they hold no task
		}
		shown := w.sidecars.shown[uid]
		for _, t := range shown[max(w.shownAt[uid]-1, 0):] {
			if t.After(stop) {
				return fmt.Errorf("pod %s: workers shown deadline %v, %v after the kubelet stops the pod (%v); shown %v, %d at the eviction",
					uid, t, t.Sub(stop), stop, shown, w.shownAt[uid])
			}
		}
	}

	// The cordon: on while a notice holds, off once the metadata confirms
	// none does, whether or not the replies of lastcall's writes arrived.
	active := len(drains)+len(cordons) > 0
	switch {
	case active && !cordoned && !w.failing():
		return errors.New("a notice is active and the node is not cordoned")
	case !active && w.synced && (cordoned || n.Spec.Unschedulable):
		return errors.New("no notice is active, the metadata says so, and the node is still cordoned")
	case !active && w.synced && !foreign && conditionTrue(n):
		return errors.New("no notice is active, the metadata says so, no other tool drains the node, and the node condition still says imminent")
	case !active && foreign && !conditionBy(n, "DrainBy"):
		return fmt.Errorf("another tool drains the node and no notice of lastcall's is active, but the node condition does not name it: %+v", n.Status.Conditions)
	}
	return nil
}

// conditionBy reports whether n's PreemptionImminent condition is True with
// a reason that starts with prefix.
func conditionBy(n *corev1.Node, prefix string) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == ConditionType {
			return c.Status == corev1.ConditionTrue && strings.HasPrefix(c.Reason, prefix)
		}
	}
	return false
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

func (s stuckCordon) Cordon(ctx context.Context, _, _, _ string, _ ...drainer.Sighting) (bool, error) {
	<-ctx.Done()
	return false, ctx.Err()
}

// TestDrainWaitsForTheCordonAtMostCordonWait: with a cordon that does not
// finish, the drain still starts, CordonWait after the notice and not
// before.
func TestDrainWaitsForTheCordonAtMostCordonWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}})
		client := tr.client
		m := &modelDrainer{real: drainer.New(clientset.New(client), drainer.Options{}), holds: func() drainer.HoldFunc {
			return func(context.Context, *corev1.Pod) <-chan struct{} { return nil }
		}}
		a, err := New(Config{Node: node}, Deps{
			Client: clientset.New(client), Drainer: stuckCordon{m}, Notifier: &modelSidecars{},
			Pods: trackedPods{tr, node}, Node: trackedNode{tr, node}, Events: record.NewFakeRecorder(1000),
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

func debugLogger() *slog.Logger {
	if os.Getenv("LIFECYCLE_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

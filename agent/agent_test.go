package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
	"github.com/lastcall-dev/lastcall/watcher"
)

// These tests drive the agent's bookkeeping (which notice drains, which
// cancellation undoes the cordon) with a recording Drainer. What the
// apiserver does is tested with the real binary and control plane in
// cmd/node-agent.

type call struct {
	op       string
	deadline time.Time
}

type recDrainer struct {
	// real applies cordons to the node for real (on a fake clientset: the
	// agent reads them back from its watch of the node); set by use.
	real  *drainer.Drainer
	mu    sync.Mutex
	calls []call
	block bool // Drain waits for ctx
	// failCordon makes Cordon fail.
	failCordon bool
}

func (r *recDrainer) record(op string, d time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{op, d})
}

func (r *recDrainer) ops() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.calls {
		out = append(out, c.op)
	}
	return out
}

// use makes r cordon the nodes of client.
func (r *recDrainer) use(client kubernetes.Interface) *recDrainer {
	r.real = drainer.New(clientset.New(client), drainer.Options{})
	return r
}

func (r *recDrainer) Cordon(ctx context.Context, node, source, kind string, seen ...drainer.Sighting) (bool, error) {
	r.record("cordon", time.Time{})
	if r.failCordon {
		return false, errors.New("nodes is forbidden")
	}
	return r.real.Cordon(ctx, node, source, kind, seen...)
}

func (r *recDrainer) OutOfService(ctx context.Context, node string) (bool, error) {
	r.record("out-of-service", time.Time{})
	return r.real.OutOfService(ctx, node)
}

func (r *recDrainer) Uncordon(ctx context.Context, node string) (bool, error) {
	r.record("uncordon", time.Time{})
	return r.real.Uncordon(ctx, node)
}

func (r *recDrainer) Plan(_ context.Context, _ string, d time.Time, p drainer.Policy) (drainer.Plan, error) {
	r.record("plan", d)
	return drainer.NewPlan(nil, types.NamespacedName{}, d, p), nil
}

func (r *recDrainer) DrainPlan(ctx context.Context, _ string, plan drainer.Plan) (drainer.Report, error) {
	r.record("drain", plan.Deadline)
	if r.block {
		<-ctx.Done()
		return drainer.Report{}, ctx.Err()
	}
	return drainer.Report{Drained: true, Finished: time.Now()}, nil
}

func newTestAgent(t *testing.T, d *recDrainer) (*Agent, *record.FakeRecorder) {
	t.Helper()
	tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	client := tr.client
	events := record.NewFakeRecorder(100)
	a, err := New(Config{Node: "n1"}, Deps{Client: clientset.New(client), Drainer: d.use(client), Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"}, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	return a, events
}

func notice(id string, kind watcher.Kind, state watcher.State, in time.Duration) watcher.Notice {
	now := time.Now()
	n := watcher.Notice{Source: watcher.SourceAWS, Kind: kind, State: state, ID: id, Detected: now}
	if in != 0 {
		n.Deadline = now.Add(in)
	}
	return n
}

// run feeds notices to the agent one at a time, letting it settle after
// each, and returns when all its goroutines are idle.
func run(t *testing.T, a *Agent, ns ...watcher.Notice) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ch := make(chan watcher.Notice)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx, ch)
	}()
	for _, n := range ns {
		ch <- n
		synctest.Wait()
	}
	cancel()
	<-done
}

func TestCancelUndoesCordonOnlyWhenNoNoticeRemains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &recDrainer{}
		a, _ := newTestAgent(t, d)
		run(t, a,
			watcher.Synced(watcher.SourceAWS),
			notice("rebalance", watcher.KindRebalance, watcher.StateActive, 0),
			notice("maint", watcher.KindMaintenance, watcher.StateActive, time.Hour),
			notice("maint", watcher.KindMaintenance, watcher.StateCanceled, 0),
		)
		if slices.Contains(d.ops(), "uncordon") {
			t.Fatalf("uncordoned while the rebalance notice still holds: %v", d.ops())
		}
		run(t, a, notice("rebalance", watcher.KindRebalance, watcher.StateCanceled, 0))
		if got := d.ops(); got[len(got)-1] != "uncordon" {
			t.Fatalf("last op %v, want uncordon", got)
		}
	})
}

func TestEarlierDeadlineRestartsDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &recDrainer{block: true}
		a, _ := newTestAgent(t, d)
		late := notice("maint", watcher.KindMaintenance, watcher.StateActive, 5*time.Minute)
		early := notice("spot", watcher.KindSpotInterruption, watcher.StateActive, 2*time.Minute)
		later := notice("asg", watcher.KindTermination, watcher.StateActive, 3*time.Minute)
		run(t, a, late, early, later)
		var drains []time.Time
		for _, c := range d.calls {
			if c.op == "drain" {
				drains = append(drains, c.deadline)
			}
		}
		if len(drains) != 2 || !drains[0].Equal(late.Deadline) || !drains[1].Equal(early.Deadline) {
			t.Fatalf("drains to %v; want the maintenance deadline, then the earlier spot one only", drains)
		}
	})
}

func TestPolicies(t *testing.T) {
	for _, tc := range []struct {
		kind watcher.Kind
		want []string
	}{
		{watcher.KindPreemption, []string{"cordon", "drain"}},
		{watcher.KindRebalance, []string{"cordon"}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := &recDrainer{}
				a, events := newTestAgent(t, d)
				run(t, a, notice("x", tc.kind, watcher.StateActive, time.Minute))
				got := d.ops()
				slices.Sort(got)
				if !slices.Equal(got, tc.want) {
					t.Errorf("ops %v, want %v", got, tc.want)
				}
				if len(events.Events) == 0 {
					t.Error("no Event recorded")
				}
			})
		})
	}
}

func TestDryRunOnlyPlans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &recDrainer{}
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
		client := tr.client
		events := record.NewFakeRecorder(10)
		a, err := New(Config{Node: "n1", DryRun: true}, Deps{Client: clientset.New(client), Drainer: d.use(client), Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"}, Events: events})
		if err != nil {
			t.Fatal(err)
		}
		run(t, a, notice("x", watcher.KindPreemption, watcher.StateActive, time.Minute),
			notice("x", watcher.KindPreemption, watcher.StateCanceled, 0))
		if got := d.ops(); !slices.Equal(got, []string{"plan"}) {
			t.Errorf("ops %v, want only a plan", got)
		}
		if len(events.Events) != 0 {
			t.Errorf("dry run recorded %d Events", len(events.Events))
		}
	})
}

func TestParseAction(t *testing.T) {
	for in, want := range map[string]Action{"drain": ActionDrain, " Cordon ": ActionCordon, "none": ActionNone} {
		if got, err := ParseAction(in); err != nil || got != want {
			t.Errorf("ParseAction(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseAction("evict"); err == nil {
		t.Error("ParseAction(evict) accepted")
	}
}

type recAck struct {
	mu  sync.Mutex
	ids []string
}

func (r *recAck) Source() watcher.Source { return watcher.SourceAzure }
func (r *recAck) Acknowledge(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, id)
	return nil
}

func TestAcknowledgeAfterDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &recDrainer{}
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
		client := tr.client
		ack := &recAck{}
		a, err := New(Config{Node: "n1"}, Deps{Client: clientset.New(client), Drainer: d.use(client), Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"},
			Events: record.NewFakeRecorder(10), Acknowledger: ack})
		if err != nil {
			t.Fatal(err)
		}
		azure := notice("evt-1", watcher.KindPreemption, watcher.StateActive, time.Minute)
		azure.Source = watcher.SourceAzure
		run(t, a, notice("aws-1", watcher.KindSpotInterruption, watcher.StateActive, 2*time.Minute), azure)
		if !slices.Equal(ack.ids, []string{"evt-1"}) {
			t.Errorf("acknowledged %v, want only the Azure event once its drain ended", ack.ids)
		}
	})
}

// TestDeadlineGauge: the gauge holds each kind's earliest active deadline
// and drops a kind once its last notice is canceled.
func TestDeadlineGauge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
		client := tr.client
		a, err := New(Config{Node: "n1"}, Deps{Client: clientset.New(client), Drainer: (&recDrainer{}).use(client), Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"},
			Events: record.NewFakeRecorder(100), Metrics: NewMetrics(reg)})
		if err != nil {
			t.Fatal(err)
		}
		gauge := func() map[string]float64 {
			out := map[string]float64{}
			mfs, _ := reg.Gather()
			for _, mf := range mfs {
				if mf.GetName() == "lastcall_notice_deadline_timestamp_seconds" {
					for _, m := range mf.GetMetric() {
						out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
					}
				}
			}
			return out
		}
		spot := notice("s1", watcher.KindSpotInterruption, watcher.StateActive, 2*time.Minute)
		later := notice("s2", watcher.KindSpotInterruption, watcher.StateActive, 5*time.Minute)
		maint := notice("m1", watcher.KindMaintenance, watcher.StateActive, time.Hour)
		run(t, a, spot, later, maint)
		want := map[string]float64{
			"spot-interruption": float64(spot.Deadline.UnixNano()) / 1e9,
			"maintenance":       float64(maint.Deadline.UnixNano()) / 1e9,
		}
		if got := gauge(); !maps.Equal(got, want) {
			t.Errorf("gauge %v, want %v", got, want)
		}
		canceled := maint
		canceled.State = watcher.StateCanceled
		run(t, a, canceled)
		delete(want, "maintenance")
		if got := gauge(); !maps.Equal(got, want) {
			t.Errorf("after the cancel: gauge %v, want %v", got, want)
		}
	})
}

// TestLatencyLabels: the latency histograms say which source and kind of
// notice each observation is for, so GCE and AWS can be told apart.
func TestLatencyLabels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
		client := tr.client
		a, err := New(Config{Node: "n1"}, Deps{Client: clientset.New(client), Drainer: (&recDrainer{}).use(client), Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"},
			Events: record.NewFakeRecorder(100), Metrics: NewMetrics(reg)})
		if err != nil {
			t.Fatal(err)
		}
		gce := notice("p1", watcher.KindPreemption, watcher.StateActive, 30*time.Second)
		gce.Source = watcher.SourceGCE
		run(t, a, gce)
		got := map[string]uint64{}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if m.GetHistogram() == nil {
					continue
				}
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+"="+l.GetValue())
				}
				got[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetHistogram().GetSampleCount()
			}
		}
		want := map[string]uint64{
			"lastcall_notice_to_cordon_seconds{kind=preemption,source=gce}":        1,
			"lastcall_notice_to_sidecars_told_seconds{kind=preemption,source=gce}": 1,
			"lastcall_notice_to_drained_seconds{kind=preemption,source=gce}":       1,
			"lastcall_drain_deadline_left_seconds{kind=preemption,source=gce}":     1,
		}
		if !maps.Equal(got, want) {
			t.Errorf("histogram series %v, want %v", got, want)
		}
	})
}

// TestEventReasons: the notice's Event names its kind, a refused cordon is
// a Warning CordonFailed (once per run of failures), an ignored notice a
// Warning NoticeIgnored.
func TestEventReasons(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &recDrainer{failCordon: true}
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
		client := tr.client
		events := record.NewFakeRecorder(100)
		a, err := New(Config{Node: "n1", Policies: Policies{watcher.KindRebalance: ActionNone}},
			Deps{Client: clientset.New(client), Drainer: d.use(client), Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"}, Events: events})
		if err != nil {
			t.Fatal(err)
		}
		run(t, a, notice("r1", watcher.KindRebalance, watcher.StateActive, 0),
			notice("s1", watcher.KindSpotInterruption, watcher.StateActive, time.Minute))
		close(events.Events)
		var got []string
		for e := range events.Events {
			got = append(got, strings.Join(strings.Fields(e)[:2], " "))
		}
		// The drain goes ahead without the cordon, and empties the node.
		want := []string{"Warning NoticeIgnored", "Warning SpotInterruption", "Warning CordonFailed", "Normal Drained"}
		if !slices.Equal(got, want) {
			t.Errorf("events %q, want %q", got, want)
		}
	})
}

// A drain notice far ahead (an AWS scheduled event days away) cordons the
// node at once, but tells the workers nothing and evicts nothing until
// DrainLead before its deadline; then the drain starts. Before, workers
// stopped pulling at once, and blocked evictions were retried for days.
func TestDrainStartsDrainLeadBeforeTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
		d := (&recDrainer{block: true}).use(tr.client)
		sc := &modelSidecars{}
		a, err := New(Config{Node: "n1"}, Deps{Client: clientset.New(tr.client), Drainer: d, Notifier: sc,
			Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"}, Events: record.NewFakeRecorder(100)})
		if err != nil {
			t.Fatal(err)
		}
		ch, _ := startAgent(t, a)
		ch <- watcher.Synced(watcher.SourceAWS)
		event := notice("instance-event-1", watcher.KindMaintenance, watcher.StateActive, 72*time.Hour)
		ch <- event
		synctest.Wait()
		if got := d.ops(); !slices.Equal(got, []string{"cordon"}) {
			t.Fatalf("ops %v three days ahead, want only the cordon", got)
		}
		if w := sc.current(); w == nil || w.Phase != wire.PhaseRunning {
			t.Fatalf("workers told %+v three days ahead, want running", w)
		}
		time.Sleep(time.Until(event.Deadline.Add(-DefaultDrainLead)) - time.Second)
		synctest.Wait()
		if slices.Contains(d.ops(), "drain") {
			t.Fatal("drain started before DrainLead")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if !slices.Contains(d.ops(), "drain") {
			t.Fatal("no drain DrainLead before the deadline")
		}
		if w := sc.current(); w == nil || w.Phase != wire.PhaseDraining || !w.Deadline.Equal(event.Deadline) {
			t.Fatalf("workers told %+v at DrainLead, want draining to %v", w, event.Deadline)
		}
	})
}

// TestOutOfServiceAfterTheDeadline: with --out-of-service, a drain that
// ends early (its pods gone 2 s into a 2-minute spot notice) does not taint
// the node out of service until the notice's deadline has passed: the
// machine is still running until then and the notice may yet be withdrawn
// (Kubernetes says to add the taint after shutdown). Before, the taint
// came with the drain's end.
func TestOutOfServiceAfterTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newTracked(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
		d := (&recDrainer{}).use(tr.client)
		a, err := New(Config{Node: "n1", OutOfService: true}, Deps{Client: clientset.New(tr.client), Drainer: d, Notifier: &modelSidecars{},
			Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"}, Events: record.NewFakeRecorder(100)})
		if err != nil {
			t.Fatal(err)
		}
		ch, _ := startAgent(t, a)
		ch <- watcher.Synced(watcher.SourceAWS)
		event := notice("spot-1", watcher.KindSpotInterruption, watcher.StateActive, 2*time.Minute)
		ch <- event
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := d.ops(); !slices.Contains(got, "drain") {
			t.Fatalf("ops %v, want a drain", got)
		}
		time.Sleep(time.Until(event.Deadline) - time.Second)
		synctest.Wait()
		if got := d.ops(); slices.Contains(got, "out-of-service") {
			t.Fatalf("ops %v: out of service a second before the deadline, the machine still running", got)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := d.ops(); !slices.Contains(got, "out-of-service") {
			t.Fatalf("ops %v: not out of service after the deadline", got)
		}
	})
}

// TestForeignDrainCounted: a drain by another tool is counted once per
// tool in lastcall_foreign_drains_total (source node, reason the tool), and
// its sidecars are told draining with the tool as reason, then running once
// the sign is gone.
func TestForeignDrainCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{
			{Key: "karpenter.sh/disrupted", Effect: corev1.TaintEffectNoSchedule}}}}
		tr := newTracked(node)
		reg := prometheus.NewRegistry()
		sc := &modelSidecars{}
		hook := &recordingHook{}
		cfg := Config{Node: "n1", Foreign: DefaultForeignConfig(),
			Webhook: Webhook{URL: "https://hooks.example/lastcall", Client: &http.Client{Transport: hook}}}
		a, err := New(cfg, Deps{Client: clientset.New(tr.client), Drainer: (&recDrainer{}).use(tr.client), Notifier: sc,
			Pods: trackedPods{tr, "n1"}, Node: trackedNode{tr, "n1"}, Events: record.NewFakeRecorder(100), Metrics: NewMetrics(reg)})
		if err != nil {
			t.Fatal(err)
		}
		ch, ctx := startAgent(t, a)
		ch <- watcher.Synced(watcher.SourceAWS)
		synctest.Wait()
		counted := func(reason string) float64 {
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() != "lastcall_foreign_drains_total" {
					continue
				}
				for _, m := range mf.GetMetric() {
					labels := map[string]string{}
					for _, l := range m.GetLabel() {
						labels[l.GetName()] = l.GetValue()
					}
					if labels["source"] == ForeignSource && labels["reason"] == reason {
						return m.GetCounter().GetValue()
					}
				}
			}
			return 0
		}
		if w := sc.current(); w == nil || w.Phase != wire.PhaseDraining || w.Reason != ForeignKarpenter {
			t.Fatalf("workers told %+v under Karpenter's taint, want draining, reason %s", w, ForeignKarpenter)
		}
		if got := counted(ForeignKarpenter); got != 1 {
			t.Errorf("lastcall_foreign_drains_total{reason=%q} = %v, want 1", ForeignKarpenter, got)
		}
		if c, _ := conditionOf(trackedNode{tr, "n1"}.Node()); c.Status != corev1.ConditionTrue || c.Reason != "DrainByKarpenter" {
			t.Errorf("node condition %+v under Karpenter's taint, want True, reason DrainByKarpenter", c)
		}
		setTaints := func(taints ...corev1.Taint) {
			n, err := tr.client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			n.Spec.Taints = taints
			if _, err := tr.client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			synctest.Wait()
		}
		setTaints()
		if w := sc.current(); w == nil || w.Phase != wire.PhaseRunning {
			t.Fatalf("workers told %+v once the taint was gone, want running", w)
		}
		if c, _ := conditionOf(trackedNode{tr, "n1"}.Node()); c.Status != corev1.ConditionFalse {
			t.Errorf("node condition %+v once the taint was gone, want False", c)
		}
		setTaints(corev1.Taint{Key: "ToBeDeletedByClusterAutoscaler", Value: "1", Effect: corev1.TaintEffectNoSchedule})
		if got, want := counted(ForeignClusterAutoscaler), 1.0; got != want {
			t.Errorf("lastcall_foreign_drains_total{reason=%q} = %v, want %v", ForeignClusterAutoscaler, got, want)
		}
		if got := counted(ForeignKarpenter); got != 1 {
			t.Errorf("lastcall_foreign_drains_total{reason=%q} = %v after another tool's drain, want still 1", ForeignKarpenter, got)
		}
		// One webhook per tool, none when a tool stops: Karpenter's, then
		// cluster-autoscaler's, each naming the tool, with no deadline.
		got := hook.payloads(t)
		if len(got) != 2 {
			t.Fatalf("webhooks posted: %+v; want one for Karpenter, one for cluster-autoscaler", got)
		}
		for i, want := range []struct{ kind, id string }{
			{ForeignKarpenter, "node:karpenter.sh/disrupted"},
			{ForeignClusterAutoscaler, "node:ToBeDeletedByClusterAutoscaler"},
		} {
			p := got[i]
			if p.Source != ForeignSource || p.Kind != want.kind || p.ID != want.id || p.Action != ForeignAction ||
				!p.Deadline.IsZero() || p.Remaining != 0 || p.Node != "n1" {
				t.Errorf("webhook %d: %+v; want source %s, kind %s, id %s, action %s, no deadline", i, p, ForeignSource, want.kind, want.id, ForeignAction)
			}
		}
	})
}

// recordingHook is a webhook receiver that answers 200 to every POST and
// keeps the JSON payloads, with no network (for synctest bubbles).
type recordingHook struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (h *recordingHook) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.bodies = append(h.bodies, body)
	h.mu.Unlock()
	return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
}

// payloads decodes what was posted, in order.
func (h *recordingHook) payloads(t *testing.T) []WebhookPayload {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []WebhookPayload
	for _, b := range h.bodies {
		var p WebhookPayload
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("webhook body is not a payload: %v\n%s", err, b)
		}
		if strings.Contains(string(b), `"deadline"`) && p.Deadline.IsZero() {
			t.Errorf("webhook body has a zero deadline: %s", b)
		}
		out = append(out, p)
	}
	return out
}

// startAgent runs a until the test ends and returns its notice channel and
// the context it runs with.
func startAgent(t *testing.T, a *Agent) (chan<- watcher.Notice, context.Context) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ch := make(chan watcher.Notice)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(ctx, ch)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ch, ctx
}

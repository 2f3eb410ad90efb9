package drainer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient"
)

var env *kubetest.Env

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, &env)) }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// fixture is one node with its own namespace and kubelet.
type fixture struct {
	env     *kubetest.Env
	node    string
	ns      string
	kubelet *kubetest.Kubelet
}

func newFixture(t *testing.T, kopts kubetest.KubeletOptions) *fixture {
	t.Helper()
	e := kubetest.Need(t, env)
	ctx := t.Context()
	f := &fixture{env: e, node: e.UniqueName("node")}
	if _, err := e.CreateNode(ctx, f.node, nil); err != nil {
		t.Fatal(err)
	}
	ns, err := e.CreateNamespace(ctx, "drain")
	if err != nil {
		t.Fatal(err)
	}
	f.ns = ns
	k, stop := e.StartKubelet(context.Background(), f.node, kopts)
	t.Cleanup(stop)
	f.kubelet = k
	return f
}

func (f *fixture) pods(t *testing.T, n int, prefix string, opts ...kubetest.PodOption) []*corev1.Pod {
	t.Helper()
	var pods []*corev1.Pod
	for i := range n {
		pods = append(pods, kubetest.NewPod(f.ns, fmt.Sprintf("%s-%d", prefix, i), f.node, opts...))
	}
	got, err := f.env.CreatePods(t.Context(), pods...)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// waitRunning waits until the kubelet marked n pods running.
func (f *fixture) waitRunning(t *testing.T, n int) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		c := 0
		for _, e := range f.kubelet.Events() {
			if e.What == "running" {
				c++
			}
		}
		return c >= n, nil
	})
	if err != nil {
		t.Fatalf("pods not running: %v", err)
	}
}

func (f *fixture) drainer(opts drainer.Options) *drainer.Drainer {
	return drainer.New(kubeclient.NewForConfigOrDie(f.env.Config), opts)
}

func getPod(t *testing.T, c kubernetes.Interface, ns, name string) (*corev1.Pod, bool) {
	t.Helper()
	p, err := c.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return p, true
}

func TestCordonAndUncordon(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	d := drainer.New(kubeclient.NewForConfigOrDie(e.Config), drainer.Options{Logger: testLogger(t)})

	t.Run("undoes exactly what it did", func(t *testing.T) {
		name := e.UniqueName("node")
		if _, err := e.CreateNode(ctx, name, map[string]string{"pool": "spot"}); err != nil {
			t.Fatal(err)
		}
		// An operator's taint that lastcall must keep.
		n, _ := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		n.Spec.Taints = []corev1.Taint{{Key: "team", Value: "ml", Effect: corev1.TaintEffectNoSchedule}}
		if _, err := e.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}

		changed, err := d.Cordon(ctx, name, "gce", "")
		if err != nil || !changed {
			t.Fatalf("Cordon = %v, %v; want true, nil", changed, err)
		}
		n, _ = e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if !n.Spec.Unschedulable {
			t.Error("node not unschedulable after Cordon")
		}
		if !slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool {
			return t.Key == drainer.TaintKey && t.Value == "gce" && t.Effect == corev1.TaintEffectNoSchedule
		}) {
			t.Errorf("taints = %v, want %s=gce:NoSchedule", n.Spec.Taints, drainer.TaintKey)
		}
		if n.Labels[drainer.ExcludeLBLabel] != "true" {
			t.Errorf("labels = %v, want %s", n.Labels, drainer.ExcludeLBLabel)
		}
		rec, ok := drainer.RecordOf(n)
		if !ok || !rec.Unschedulable || !rec.Taint || !rec.Label || rec.Source != "gce" {
			t.Errorf("record = %+v, %v", rec, ok)
		}

		if changed, err := d.Cordon(ctx, name, "aws", ""); err != nil || changed {
			t.Errorf("second Cordon = %v, %v; want false, nil", changed, err)
		}

		if changed, err := d.Uncordon(ctx, name); err != nil || !changed {
			t.Fatalf("Uncordon = %v, %v; want true, nil", changed, err)
		}
		n, _ = e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if n.Spec.Unschedulable {
			t.Error("node still unschedulable")
		}
		if want := []corev1.Taint{{Key: "team", Value: "ml", Effect: corev1.TaintEffectNoSchedule}}; !slices.Equal(n.Spec.Taints, want) {
			t.Errorf("taints = %v, want only %v", n.Spec.Taints, want)
		}
		if _, ok := n.Labels[drainer.ExcludeLBLabel]; ok || n.Labels["pool"] != "spot" {
			t.Errorf("labels = %v", n.Labels)
		}
		if _, ok := n.Annotations[drainer.RecordAnnotation]; ok {
			t.Error("record annotation left behind")
		}
	})

	t.Run("keeps an operator's cordon", func(t *testing.T) {
		name := e.UniqueName("node")
		if _, err := e.CreateNode(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
		n, _ := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		n.Spec.Unschedulable = true
		if _, err := e.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Cordon(ctx, name, "aws", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Uncordon(ctx, name); err != nil {
			t.Fatal(err)
		}
		n, _ = e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if !n.Spec.Unschedulable {
			t.Error("Uncordon undid the operator's cordon")
		}
		if len(n.Spec.Taints) != 0 {
			t.Errorf("taints = %v, want none", n.Spec.Taints)
		}
	})

	t.Run("no record, no change", func(t *testing.T) {
		name := e.UniqueName("node")
		if _, err := e.CreateNode(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
		n, _ := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		n.Spec.Unschedulable = true
		n.Spec.Taints = []corev1.Taint{{Key: drainer.TaintKey, Value: "manual", Effect: corev1.TaintEffectNoSchedule}}
		if _, err := e.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if changed, err := d.Uncordon(ctx, name); err != nil || changed {
			t.Fatalf("Uncordon = %v, %v; want false, nil", changed, err)
		}
		n, _ = e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if !n.Spec.Unschedulable || len(n.Spec.Taints) != 1 {
			t.Errorf("node changed: unschedulable=%v taints=%v", n.Spec.Unschedulable, n.Spec.Taints)
		}
	})

	t.Run("expired context is an error, not a silent no-op", func(t *testing.T) {
		name := e.UniqueName("node")
		if _, err := e.CreateNode(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
		expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		if changed, err := d.Cordon(expired, name, "gce", ""); err == nil || changed {
			t.Fatalf("Cordon(expired ctx) = %v, %v; want an error", changed, err)
		}
	})

	t.Run("kind in the value, NoExecute, out of service", func(t *testing.T) {
		name := e.UniqueName("node")
		if _, err := e.CreateNode(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
		dx := drainer.New(kubeclient.NewForConfigOrDie(e.Config), drainer.Options{Logger: testLogger(t), TaintEffect: corev1.TaintEffectNoExecute})
		if changed, err := dx.OutOfService(ctx, name); err != nil || changed {
			t.Fatalf("OutOfService before any cordon = %v, %v; want false, nil", changed, err)
		}
		if _, err := dx.Cordon(ctx, name, "aws", "spot-interruption"); err != nil {
			t.Fatal(err)
		}
		if changed, err := dx.OutOfService(ctx, name); err != nil || !changed {
			t.Fatalf("OutOfService = %v, %v; want true, nil", changed, err)
		}
		n, _ := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		want := []corev1.Taint{
			{Key: drainer.TaintKey, Value: "aws.spot-interruption", Effect: corev1.TaintEffectNoExecute},
			{Key: drainer.OutOfServiceKey, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute},
		}
		var got []corev1.Taint
		for _, tt := range n.Spec.Taints {
			got = append(got, corev1.Taint{Key: tt.Key, Value: tt.Value, Effect: tt.Effect})
		}
		if !slices.Equal(got, want) {
			t.Errorf("taints = %v, want %v", got, want)
		}
		if rec, _ := drainer.RecordOf(n); !rec.Taint || !rec.OutOfService {
			t.Errorf("record = %+v, want taint and out-of-service recorded", rec)
		}
		if _, err := dx.Uncordon(ctx, name); err != nil {
			t.Fatal(err)
		}
		n, _ = e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if len(n.Spec.Taints) != 0 || n.Spec.Unschedulable {
			t.Errorf("after Uncordon: taints %v, unschedulable %v; want neither", n.Spec.Taints, n.Spec.Unschedulable)
		}
	})

	t.Run("missing node is a clear error", func(t *testing.T) {
		_, err := d.Cordon(ctx, "no-such-node", "gce", "")
		if !apierrors.IsNotFound(err) {
			t.Fatalf("Cordon(missing) = %v, want a NotFound error", err)
		}
	})
}

func TestDrainTierOrder(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	f.pods(t, 4, "web")
	f.pods(t, 2, "dns", kubetest.WithPriorityClass("system-cluster-critical"))
	f.pods(t, 1, "cni", kubetest.WithPriorityClass("system-node-critical"))
	f.waitRunning(t, 7)

	d := f.drainer(drainer.Options{Logger: testLogger(t)})
	deadline := time.Now().Add(60 * time.Second)
	rep, err := d.Drain(t.Context(), f.node, deadline, drainer.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Drained || rep.Count(drainer.Evicted) != 7 {
		t.Fatalf("report: drained=%v evicted=%d, want true, 7: %+v", rep.Drained, rep.Count(drainer.Evicted), rep.Pods)
	}
	// Every critical pod starts terminating after every workload pod is gone.
	var lastWorkloadGone, firstCritical time.Time
	for _, ev := range f.kubelet.Events() {
		critical := ev.Pod[len(f.ns)+1:][:3] != "web"
		switch {
		case !critical && ev.What == "deleted" && ev.Time.After(lastWorkloadGone):
			lastWorkloadGone = ev.Time
		case critical && ev.What == "terminating" && (firstCritical.IsZero() || ev.Time.Before(firstCritical)):
			firstCritical = ev.Time
		}
	}
	if lastWorkloadGone.IsZero() || firstCritical.IsZero() || !firstCritical.After(lastWorkloadGone) {
		t.Errorf("critical pods started terminating at %v, before the last workload pod was gone at %v", firstCritical, lastWorkloadGone)
	}
	for _, p := range rep.Pods {
		wantTier := drainer.TierWorkload
		if p.Pod[len(f.ns)+1:][:3] != "web" {
			wantTier = drainer.TierCritical
		}
		if p.Tier != wantTier {
			t.Errorf("%s tier = %v, want %v", p.Pod, p.Tier, wantTier)
		}
	}
}

func TestDrainGraceCappedByDeadline(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	f.pods(t, 1, "long", kubetest.WithGrace(300))
	f.pods(t, 1, "short", kubetest.WithGrace(5))
	f.pods(t, 1, "default")
	f.waitRunning(t, 3)

	d := f.drainer(drainer.Options{Logger: testLogger(t)})
	deadline := time.Now().Add(20 * time.Second)
	rep, err := d.Drain(t.Context(), f.node, deadline, drainer.Policy{Reserve: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Drained {
		t.Fatalf("not drained: %+v", rep.Pods)
	}
	// The grace the kubelet saw is the one the apiserver stored.
	seen := map[string]int64{}
	for _, ev := range f.kubelet.Events() {
		if ev.What == "terminating" {
			seen[ev.Pod] = ev.Grace
		}
	}
	for pod, check := range map[string]func(int64) bool{
		"long-0":    func(g int64) bool { return g >= 15 && g <= 18 }, // deadline 20s, reserve 2s
		"short-0":   func(g int64) bool { return g == 5 },             // its own, shorter
		"default-0": func(g int64) bool { return g >= 15 && g <= 18 }, // 30s default, capped
	} {
		if g, ok := seen[f.ns+"/"+pod]; !ok || !check(g) {
			t.Errorf("%s: grace %d (seen %v)", pod, g, ok)
		}
	}
}

func TestDrainSkips(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	ctx := t.Context()
	ds, err := f.env.CreateDaemonSet(ctx, f.ns, "node-exporter")
	if err != nil {
		t.Fatal(err)
	}
	f.pods(t, 1, "ds", kubetest.WithOwner("DaemonSet", ds.Name, ds.UID))
	f.pods(t, 1, "mirror", kubetest.WithAnnotations(map[string]string{corev1.MirrorPodAnnotationKey: "static"}))
	f.pods(t, 1, "agent")
	done := f.pods(t, 1, "job")[0]
	f.pods(t, 2, "worker")
	f.waitRunning(t, 6)
	done, _ = getPod(t, f.env.Client, f.ns, done.Name)
	done.Status.Phase = corev1.PodSucceeded
	if _, err := f.env.Client.CoreV1().Pods(f.ns).UpdateStatus(ctx, done, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	d := f.drainer(drainer.Options{Logger: testLogger(t), Self: types.NamespacedName{Namespace: f.ns, Name: "agent-0"}})
	rep, err := d.Drain(ctx, f.node, time.Now().Add(30*time.Second), drainer.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]drainer.SkipReason{
		"ds-0": drainer.SkipDaemonSet, "mirror-0": drainer.SkipMirror, "agent-0": drainer.SkipSelf, "job-0": drainer.SkipFinished,
	}
	got := map[string]drainer.SkipReason{}
	for _, s := range rep.Skipped {
		got[s.Pod[len(f.ns)+1:]] = s.Reason
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("skipped = %v, want %v", got, want)
	}
	for name := range want {
		p, ok := getPod(t, f.env.Client, f.ns, name)
		if !ok || p.DeletionTimestamp != nil {
			t.Errorf("%s was touched: exists=%v", name, ok)
		}
	}
	if rep.Count(drainer.Evicted) != 2 || !rep.Drained {
		t.Errorf("evicted %d, drained %v; want 2 workers evicted", rep.Count(drainer.Evicted), rep.Drained)
	}
}

// guarded creates n pods owned by a ReplicaSet and a budget over them that
// allows maxUnavailable, and waits until the disruption controller has
// computed the budget's status.
func (f *fixture) guarded(t *testing.T, name string, n int, maxUnavailable int) {
	t.Helper()
	ctx := t.Context()
	rs, err := f.env.CreateReplicaSet(ctx, f.ns, name, int32(n))
	if err != nil {
		t.Fatal(err)
	}
	f.pods(t, n, name, kubetest.WithLabels(map[string]string{"app": name}), kubetest.WithOwner("ReplicaSet", name, rs.UID))
	_, err = f.env.Client.PolicyV1().PodDisruptionBudgets(f.ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: &intstr.IntOrString{Type: intstr.Int, IntVal: int32(maxUnavailable)},
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		pdb, err := f.env.Client.PolicyV1().PodDisruptionBudgets(f.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.ExpectedPods == int32(n) &&
			pdb.Status.CurrentHealthy == int32(n), nil
	})
	if err != nil {
		t.Fatalf("budget %s never observed: %v", name, err)
	}
}

func TestDrainBlockedByBudget(t *testing.T) {
	for _, tc := range []struct {
		policy drainer.BlockedAction
		want   drainer.Outcome
	}{
		{drainer.Delete, drainer.Deleted},
		{drainer.Leave, drainer.Blocked},
	} {
		t.Run(string(tc.policy), func(t *testing.T) {
			f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
			f.guarded(t, "guarded", 2, 0)
			f.pods(t, 1, "free")
			f.waitRunning(t, 3)

			d := f.drainer(drainer.Options{Logger: testLogger(t)})
			start := time.Now()
			deadline := start.Add(8 * time.Second)
			policy := drainer.Policy{OnBlocked: tc.policy, BlockedCutoff: 4 * time.Second}
			rep, err := d.Drain(t.Context(), f.node, deadline, policy)
			if err != nil {
				t.Fatal(err)
			}
			cutoff := deadline.Add(-policy.BlockedCutoff)
			for _, p := range rep.Pods {
				name := p.Pod[len(f.ns)+1:]
				switch {
				case name == "free-0":
					if p.Outcome != drainer.Evicted || p.Attempts != 1 || !p.At.Before(cutoff) {
						t.Errorf("free pod: %+v, want evicted at once", p)
					}
				default:
					if p.Outcome != tc.want {
						t.Errorf("%s: outcome %s, want %s (err %v)", name, p.Outcome, tc.want, p.Err)
					}
					// Refused (429) until the cut-off, retried in between.
					if p.At.Before(cutoff) || p.Attempts < 3 || !p.At.Before(deadline) {
						t.Errorf("%s: acted at %v after %d attempts; cut-off %v, deadline %v",
							name, p.At.Sub(start), p.Attempts, cutoff.Sub(start), deadline.Sub(start))
					}
				}
			}
			for i := range 2 {
				_, exists := getPod(t, f.env.Client, f.ns, fmt.Sprintf("guarded-%d", i))
				if exists != (tc.policy == drainer.Leave) {
					t.Errorf("guarded-%d exists=%v with policy %s", i, exists, tc.policy)
				}
			}
			// Pods left blocked stay on the node: the report must not say
			// drained.
			if want := tc.policy == drainer.Delete; rep.Drained != want {
				t.Errorf("drained = %v with policy %s, want %v", rep.Drained, tc.policy, want)
			}
		})
	}
}

func TestDrainBudgetAllowsOne(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	// maxUnavailable 1 over a ReplicaSet of 3: the budget allows one
	// eviction; with no ReplicaSet controller to replace that pod, it allows
	// no second one, so two pods wait for the cut-off and are deleted.
	f.guarded(t, "rolling", 3, 1)
	f.waitRunning(t, 3)
	d := f.drainer(drainer.Options{Logger: testLogger(t)})
	deadline := time.Now().Add(8 * time.Second)
	policy := drainer.Policy{BlockedCutoff: 4 * time.Second}
	rep, err := d.Drain(t.Context(), f.node, deadline, policy)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Count(drainer.Evicted) != 1 || rep.Count(drainer.Deleted) != 2 || !rep.Drained {
		t.Fatalf("evicted %d deleted %d drained %v; want 1, 2, true: %+v",
			rep.Count(drainer.Evicted), rep.Count(drainer.Deleted), rep.Drained, rep.Pods)
	}
	for _, p := range rep.Pods {
		if p.Outcome == drainer.Deleted && p.At.Before(deadline.Add(-policy.BlockedCutoff)) {
			t.Errorf("%s deleted at %v, before the cut-off", p.Pod, p.At)
		}
	}
}

func TestDrainResumesAfterInterruption(t *testing.T) {
	// Pods take their whole grace period: the first run is cut short while
	// they terminate, as when the agent is killed mid-drain.
	f := newFixture(t, kubetest.KubeletOptions{})
	f.pods(t, 3, "slow", kubetest.WithGrace(3))
	f.waitRunning(t, 3)
	d := f.drainer(drainer.Options{Logger: testLogger(t)})
	deadline := time.Now().Add(30 * time.Second)

	first, cancel := context.WithCancel(t.Context())
	go func() {
		// Interrupt once every pod has started terminating.
		_ = wait.PollUntilContextCancel(first, 10*time.Millisecond, true, func(context.Context) (bool, error) {
			n := 0
			for _, e := range f.kubelet.Events() {
				if e.What == "terminating" {
					n++
				}
			}
			return n == 3, nil
		})
		cancel()
	}()
	rep1, err := d.Drain(first, f.node, deadline, drainer.Policy{})
	if err == nil || rep1.Drained {
		t.Fatalf("first run: drained=%v err=%v; want interrupted", rep1.Drained, err)
	}
	// New pods arrived meanwhile (the node was not cordoned in this test).
	f.pods(t, 2, "late", kubetest.WithGrace(3))
	f.waitRunning(t, 5)

	rep2, err := d.Drain(t.Context(), f.node, deadline, drainer.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep2.Drained {
		t.Fatalf("second run did not drain: %+v", rep2)
	}
	terminating := 0
	for _, s := range rep2.Skipped {
		if s.Reason == drainer.SkipTerminating {
			terminating++
		}
	}
	if terminating != 3 || rep2.Count(drainer.Evicted) != 2 {
		t.Errorf("second run: %d waited for as terminating, %d evicted; want 3 and 2", terminating, rep2.Count(drainer.Evicted))
	}
	list, _ := f.env.Client.CoreV1().Pods(f.ns).List(t.Context(), metav1.ListOptions{})
	if len(list.Items) != 0 {
		t.Errorf("%d pods left", len(list.Items))
	}
}

func TestDrainSurvivesAPIServerOutage(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	f.pods(t, 10, "worker")
	f.waitRunning(t, 10)

	proxy, cfg, err := f.env.NewProxy()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	d := drainer.New(kubeclient.NewForConfigOrDie(cfg), drainer.Options{Logger: testLogger(t), CallTimeout: time.Second})

	proxy.Down()
	outage := 3 * time.Second
	time.AfterFunc(outage, func() {
		if err := proxy.Up(); err != nil {
			t.Error(err)
		}
	})
	start := time.Now()
	if _, err := d.Cordon(t.Context(), f.node, "aws", ""); err != nil {
		t.Fatalf("cordon through an outage: %v", err)
	}
	rep, err := d.Drain(t.Context(), f.node, start.Add(20*time.Second), drainer.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Drained || rep.Count(drainer.Evicted) != 10 {
		t.Fatalf("drained=%v evicted=%d; want all 10 after the outage", rep.Drained, rep.Count(drainer.Evicted))
	}
	if took := time.Since(start); took < outage {
		t.Errorf("drain finished in %v, before the apiserver came back", took)
	}
}

func TestDrainHoldsCooperativePods(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	f.pods(t, 1, "plain")
	f.pods(t, 1, "quick", kubetest.WithGrace(1), kubetest.WithAnnotations(map[string]string{"test/held": "true"}))
	f.pods(t, 1, "slow", kubetest.WithGrace(1), kubetest.WithAnnotations(map[string]string{"test/held": "true"}))
	f.waitRunning(t, 3)

	quickDone := make(chan struct{})
	never := make(chan struct{})
	hold := func(_ context.Context, p *corev1.Pod) <-chan struct{} {
		switch p.Name {
		case "quick-0":
			return quickDone
		case "slow-0":
			return never
		}
		return nil
	}
	d := f.drainer(drainer.Options{Logger: testLogger(t), Hold: hold})
	start := time.Now()
	// The slow pod goes at deadline − reserve − grace = 8 s, leaving 4 s for
	// its eviction and deletion on a loaded machine.
	deadline := start.Add(12 * time.Second)
	policy := drainer.Policy{Reserve: 3 * time.Second}
	go func() {
		// The quick pod's workers finish once the plain pod is gone.
		_ = wait.PollUntilContextCancel(t.Context(), 10*time.Millisecond, true, func(context.Context) (bool, error) {
			_, exists := getPod(t, f.env.Client, f.ns, "plain-0")
			return !exists, nil
		})
		close(quickDone)
	}()
	rep, err := d.Drain(t.Context(), f.node, deadline, policy)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Drained || rep.Count(drainer.Evicted) != 3 {
		t.Fatalf("drained %v, evicted %d: %+v", rep.Drained, rep.Count(drainer.Evicted), rep.Pods)
	}
	var order []string
	for _, e := range f.kubelet.Events() {
		if e.What == "terminating" {
			order = append(order, e.Pod[len(f.ns)+1:])
		}
	}
	if !slices.Equal(order, []string{"plain-0", "quick-0", "slow-0"}) {
		t.Errorf("terminating order %v; want plain, then quick (done), then slow (latest moment)", order)
	}
	latest := deadline.Add(-policy.Reserve).Add(-time.Second) // grace 1 s
	for _, p := range rep.Pods {
		switch p.Pod[len(f.ns)+1:] {
		case "quick-0":
			if !p.Released {
				t.Errorf("quick pod not released by its workers: %+v", p)
			}
		case "slow-0":
			if p.Released || p.At.Before(latest) {
				t.Errorf("slow pod evicted at %v, want at its latest moment %v: %+v", p.At.Sub(start), latest.Sub(start), p)
			}
		}
	}
}

// A notice whose deadline has passed, or is "now" (an ASG Terminated state,
// an Azure event already Started, a notice first seen after a restart),
// still evicts every pod, at once, with the minimum grace, and the report
// says what happened. Before, the drain's context ended at the deadline,
// every eviction failed on it, and the report said drained.
func TestDrainPastDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   time.Duration
	}{
		{"now", 0},
		{"passed", -10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
			f.pods(t, 3, "work", kubetest.WithGrace(30))
			f.pods(t, 1, "dns", kubetest.WithPriorityClass("system-cluster-critical"))
			f.waitRunning(t, 4)

			d := f.drainer(drainer.Options{Logger: testLogger(t)})
			rep, err := d.Drain(t.Context(), f.node, time.Now().Add(tc.in), drainer.Policy{})
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Late || !rep.Drained || rep.Count(drainer.Evicted) != 4 {
				t.Fatalf("late=%v drained=%v evicted=%d, want a late drain that evicted all 4: %+v",
					rep.Late, rep.Drained, rep.Count(drainer.Evicted), rep.Pods)
			}
			for _, ev := range f.kubelet.Events() {
				if ev.What == "terminating" && ev.Grace != 1 {
					t.Errorf("%s: grace %d, want the minimum 1", ev.Pod, ev.Grace)
				}
			}
			pods, err := f.env.Client.CoreV1().Pods(f.ns).List(t.Context(), metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(pods.Items) != 0 {
				t.Errorf("%d pods left on the node", len(pods.Items))
			}
		})
	}
}

// A report says drained only when the node is empty of what it asked to
// leave: evictions that failed (here RBAC) make it incomplete.
func TestDrainReportsFailures(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	f.pods(t, 2, "work")
	f.waitRunning(t, 2)
	cfg := rest.CopyConfig(f.env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "nobody"}
	client, err := kubeclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := drainer.New(client, drainer.Options{Logger: testLogger(t), Pods: adminPods{f.env.Client}})
	rep, err := d.Drain(t.Context(), f.node, time.Now().Add(10*time.Second), drainer.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Drained || rep.Count(drainer.Failed) != 2 {
		t.Fatalf("drained=%v failed=%d, want an incomplete drain with 2 failures: %+v", rep.Drained, rep.Count(drainer.Failed), rep.Pods)
	}
}

// Pods that land on the node while it drains (they tolerate the cordon, or
// were bound just before it) are evicted too. Before, the drain acted on
// the pods listed at its start only.
func TestDrainEvictsPodsThatLandDuringIt(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{})
	f.pods(t, 1, "slow", kubetest.WithGrace(5))
	f.waitRunning(t, 1)

	d := f.drainer(drainer.Options{Logger: testLogger(t), PollInterval: 50 * time.Millisecond})
	type result struct {
		rep drainer.Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := d.Drain(t.Context(), f.node, time.Now().Add(20*time.Second), drainer.Policy{})
		done <- result{rep, err}
	}()
	// The first pod takes its grace (5 s) to go; meanwhile one lands.
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		p, ok := getPod(t, f.env.Client, f.ns, "slow-0")
		return ok && p.DeletionTimestamp != nil, nil
	})
	if err != nil {
		t.Fatal("the first pod was not evicted")
	}
	f.pods(t, 1, "late")
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	var names []string
	for _, p := range r.rep.Pods {
		names = append(names, p.Pod[len(f.ns)+1:]+"="+string(p.Outcome))
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"late-0=evicted", "slow-0=evicted"}) || !r.rep.Drained {
		t.Fatalf("drain acted on %v (drained=%v), want both pods evicted and gone", names, r.rep.Drained)
	}
}

// adminPods lists pods with the test's own client, for drains whose client
// may not.
type adminPods struct{ c kubernetes.Interface }

func (a adminPods) ListPods(ctx context.Context, node string) ([]corev1.Pod, error) {
	l, err := a.c.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// A drain called off (the notice canceled or superseded, the agent
// stopping) while it holds a pod for its workers sends no eviction, and
// counts none as refused: no Refused call (the EvictionRefused Events), no
// failed outcome in lastcall_evictions_total. Before, the canceled context
// was counted as a refusal for good, which paged on-call for an eviction
// never sent.
func TestDrainCalledOffIsNotARefusal(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	f.pods(t, 2, "held", kubetest.WithGrace(1))
	f.waitRunning(t, 2)
	never := make(chan struct{})
	var refused atomic.Int32
	reg := prometheus.NewRegistry()
	d := f.drainer(drainer.Options{
		Logger:  testLogger(t),
		Hold:    func(context.Context, *corev1.Pod) <-chan struct{} { return never },
		Refused: func(*corev1.Pod, error) { refused.Add(1) },
		Metrics: drainer.NewMetrics(reg),
	})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(500*time.Millisecond, cancel)
	rep, err := d.Drain(ctx, f.node, time.Now().Add(time.Minute), drainer.Policy{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain = %v, want canceled", err)
	}
	if n := refused.Load(); n != 0 {
		t.Errorf("Refused called %d times for evictions never sent", n)
	}
	if got := rep.Count(drainer.Canceled); got != 2 || rep.Count(drainer.Failed) != 0 {
		t.Errorf("report: %d canceled, %d failed; want 2 canceled, none failed: %+v", got, rep.Count(drainer.Failed), rep.Pods)
	}
	if v := failedCount(t, reg); v != 0 {
		t.Errorf("lastcall_evictions_total{outcome=failed} = %v, want 0", v)
	}
	for _, p := range []string{"held-0", "held-1"} {
		if got, ok := getPod(t, f.env.Client, f.ns, p); !ok || got.DeletionTimestamp != nil {
			t.Errorf("pod %s was evicted by a drain called off before its time", p)
		}
	}
}

// failedCount returns lastcall_evictions_total{outcome="failed"} in reg.
func failedCount(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "lastcall_evictions_total" && m.GetLabel()[0].GetValue() == "failed" {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatal("no lastcall_evictions_total{outcome=failed}")
	return 0
}

// slowEvictions delays every eviction request by delay before it reaches
// the apiserver, as API Priority and Fairness queues or a budget's update
// conflicts do under a fleet-wide preemption, and calls refused after the
// first eviction answered 429.
type slowEvictions struct {
	next    http.RoundTripper
	delay   time.Duration
	refused func()
	once    sync.Once
}

func (s *slowEvictions) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(req.URL.Path, "/eviction") {
		return s.next.RoundTrip(req)
	}
	select {
	case <-time.After(s.delay):
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	resp, err := s.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		s.once.Do(s.refused)
	}
	return resp, err
}

// The apiserver starts a grace period when it accepts the eviction: a pod
// whose eviction is answered late must still stop Reserve before the
// deadline. Its first eviction is refused by a budget, slowly; the budget is
// then removed, and the retry's grace allows for the slowness seen.
func TestDrainGraceAllowsForSlowEvictions(t *testing.T) {
	f := newFixture(t, kubetest.KubeletOptions{FinishAtOnce: true})
	f.guarded(t, "slow", 1, 0)
	f.waitRunning(t, 1)

	const delay = 1500 * time.Millisecond
	cfg := rest.CopyConfig(f.env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return &slowEvictions{next: rt, delay: delay, refused: func() {
			go func() {
				err := f.env.Client.PolicyV1().PodDisruptionBudgets(f.ns).Delete(context.Background(), "slow", metav1.DeleteOptions{})
				if err != nil {
					t.Errorf("remove the budget: %v", err)
				}
			}()
		}}
	}
	d := drainer.New(kubeclient.NewForConfigOrDie(cfg), drainer.Options{Logger: testLogger(t)})
	policy := drainer.Policy{Reserve: 2 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	rep, err := d.Drain(t.Context(), f.node, deadline, policy)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Drained || len(rep.Pods) != 1 || rep.Pods[0].Outcome != drainer.Evicted || rep.Pods[0].Attempts < 2 {
		t.Fatalf("drained=%v pods=%+v; want slow-0 evicted on a retry", rep.Drained, rep.Pods)
	}
	var stop time.Time
	for _, ev := range f.kubelet.Events() {
		if ev.What == "terminating" && ev.Pod == f.ns+"/slow-0" {
			stop = ev.Time.Add(time.Duration(ev.Grace) * time.Second)
		}
	}
	if stop.IsZero() {
		t.Fatalf("the kubelet never saw slow-0 terminating: %+v", f.kubelet.Events())
	}
	// The kubelet sees the deletion a moment after the apiserver made it.
	const watchDelay = 300 * time.Millisecond
	if end := deadline.Add(-policy.Reserve); stop.After(end.Add(watchDelay)) {
		t.Errorf("slow-0 stops %v after the deadline less Reserve (grace %d s, evictions answered %v late)",
			stop.Sub(end).Round(time.Millisecond), rep.Pods[0].Grace, delay)
	}
}

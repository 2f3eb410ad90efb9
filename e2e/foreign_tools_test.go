package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lastcall-dev/lastcall/drainer"
)

// first returns the time of the first event what (with detail prefix, if
// given).
func (nw *nodeWatch) first(what, detail string) (time.Time, bool) {
	for _, e := range nw.snapshot() {
		if e.What == what && strings.HasPrefix(e.Detail, detail) {
			return e.At, true
		}
	}
	return time.Time{}, false
}

// waitNode waits until the node watch has seen what (detail prefix).
func (c *cluster) waitNode(t *testing.T, nw *nodeWatch, timeout time.Duration, what, detail string) time.Time {
	t.Helper()
	var at time.Time
	c.poll(t, timeout, fmt.Sprintf("%s %s on the node (seen so far: %v)", what, detail, nw.snapshot()), func(context.Context) (bool, error) {
		var ok bool
		at, ok = nw.first(what, detail)
		return ok, nil
	})
	return at
}

func addTaint(tn corev1.Taint) func(*corev1.Node) {
	return func(n *corev1.Node) {
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == tn.Key && x.Effect == tn.Effect })
		n.Spec.Taints = append(n.Spec.Taints, tn)
	}
}

func removeTaint(key string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == key })
	}
}

// waitTold waits until each of pods has reported "told" since t0 and
// returns when each was.
func (c *cluster) waitTold(t *testing.T, pods []corev1.Pod, t0 time.Time, timeout time.Duration) map[string]event {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	told := map[string]event{}
	err := c.ledger.waitFor(ctx, t0, func(es []event) bool {
		for _, e := range es {
			if e.What == "told" {
				if _, ok := told[e.Pod]; !ok {
					told[e.Pod] = e
				}
			}
		}
		for _, p := range pods {
			if _, ok := told[p.Name]; !ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("workers not told since %s: %v; told so far %v\n%s", t0.Format("15:04:05.000"), err, told, c.state())
	}
	return told
}

// waitResumed waits until each of pods has reported "resumed" since t0.
func (c *cluster) waitResumed(t *testing.T, pods []corev1.Pod, t0 time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.ledger.waitFor(ctx, t0, func(es []event) bool {
		for _, p := range pods {
			if !slices.ContainsFunc(es, func(e event) bool { return e.Pod == p.Name && e.What == "resumed" }) {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("workers not told running again since %s: %v\n%s", t0.Format("15:04:05.000"), err, c.state())
	}
}

// evict evicts pod through the Eviction API as Karpenter's termination
// controller and cluster-autoscaler do: 429 (a budget) is retried each
// second, 404 means gone.
func (c *cluster) evict(ctx context.Context, p corev1.Pod) error {
	for {
		err := c.client.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
			ObjectMeta:    metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
			DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}},
		})
		switch {
		case err == nil, apierrors.IsNotFound(err), apierrors.IsConflict(err):
			return nil
		case apierrors.IsTooManyRequests(err):
		default:
			return fmt.Errorf("evict %s: %w", p.Name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("evict %s: %w (last: %v)", p.Name, ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// noLastcallCordon fails unless lastcall left the node's cordon and taints
// alone: no record, no lastcall taint.
func (c *cluster) noLastcallCordon(t *testing.T) *corev1.Node {
	t.Helper()
	n, err := c.client.CoreV1().Nodes().Get(t.Context(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := drainer.RecordOf(n); ok {
		t.Errorf("lastcall cordoned the node for another tool's drain: record %s", n.Annotations[drainer.RecordAnnotation])
	}
	if slices.ContainsFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == drainer.TaintKey }) {
		t.Errorf("lastcall tainted the node for another tool's drain: %v", n.Spec.Taints)
	}
	return n
}

func testKubectlDrain(t *testing.T, c *cluster) {
	c.withForeign(t)
	ctx := t.Context()
	kubectl := os.Getenv("LASTCALL_KUBECTL")
	if kubectl == "" {
		t.Fatal("LASTCALL_KUBECTL must be set (make e2e sets it)")
	}
	// The budget: one worker down at a time. On this one node the
	// replacements come back to the cordoned node (they tolerate the
	// cordon), as they would land on another node in a real cluster.
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "workers", Namespace: workNS},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: ptr(intstr.FromInt32(1)),
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "e2e-worker"}},
		},
	}
	if _, err := c.client.PolicyV1().PodDisruptionBudgets(workNS).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.tolerateCordon(t, true)
	defer func() {
		_ = c.client.PolicyV1().PodDisruptionBudgets(workNS).Delete(context.WithoutCancel(ctx), "workers", metav1.DeleteOptions{})
	}()
	c.settle(t)

	pods, pw := c.busy(t, 8*time.Second, 8*time.Second)
	nw := c.watchNode(t)
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.kubeconfig, "drain", nodeName,
		"--pod-selector", "app=e2e-worker", "--delete-emptydir-data", "--timeout", "3m")
	out, err := cmd.CombinedOutput()
	drained := time.Now()
	t.Logf("kubectl drain took %.1f s:\n%s", drained.Sub(t0).Seconds(), out)
	if err != nil {
		t.Fatalf("kubectl drain: %v", err)
	}
	pw.waitGone(t, c, pods, time.Minute)
	cordoned := c.waitNode(t, nw, 10*time.Second, "node: cordoned", "")
	tl := c.recordStopped(t, "kubectl drain "+nodeName+" (a PodDisruptionBudget: one worker at a time)", t0, pw, pods)
	tl.add(nw.snapshot()...)
	for _, p := range pods {
		// kubectl evicts the first pod right after its cordon: that pod's
		// workers may be told by its preStop hook, still before SIGTERM.
		tl.assertOrder(t, p.Name, "told", "kubelet: SIGTERM worker", "api: pod gone")
		tl.assertOrder(t, p.Name, "kubelet: preStop started worker", "kubelet: SIGTERM worker")
	}
	c.foreignReport(t, "kubectl drain (cordon)", cordoned, tl, pods, "cordon", true)

	// The replacements land on the cordoned node and are told at once:
	// they pull nothing while the cordon holds.
	repl := c.waitWorkers(t, replicas)
	c.waitTold(t, repl, t0, 30*time.Second)
	if n := c.noLastcallCordon(t); !n.Spec.Unschedulable {
		t.Error("the node is no longer cordoned: someone undid kubectl's cordon")
	}
	if failures := c.failureEvents(t, t0); len(failures) > 0 {
		t.Errorf("eviction failures recorded for a drain lastcall did not make: %v", failures)
	}

	// kubectl uncordon: the workers are told running again.
	back := time.Now()
	if out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.kubeconfig, "uncordon", nodeName).CombinedOutput(); err != nil {
		t.Fatalf("kubectl uncordon: %v\n%s", err, out)
	}
	c.waitResumed(t, repl, back)
	t.Logf("kubectl uncordon -> workers running again in %d ms", time.Since(back).Milliseconds())
	c.tolerateCordon(t, false)
	c.settle(t)
}

// tolerateCordon adds (or removes) the worker pods' toleration of the
// cordon's taint, and waits for the rollout.
func (c *cluster) tolerateCordon(t *testing.T, on bool) {
	t.Helper()
	ctx := t.Context()
	d, err := c.client.AppsV1().Deployments(workNS).Get(ctx, "workers", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tol := corev1.Toleration{Key: corev1.TaintNodeUnschedulable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	spec := &d.Spec.Template.Spec
	spec.Tolerations = slices.DeleteFunc(spec.Tolerations, func(x corev1.Toleration) bool { return x.Key == tol.Key })
	if on {
		spec.Tolerations = append(spec.Tolerations, tol)
	}
	if _, err := c.client.AppsV1().Deployments(workNS).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.poll(t, 2*time.Minute, "the workers' rollout", func(ctx context.Context) (bool, error) {
		d, err := c.client.AppsV1().Deployments(workNS).Get(ctx, "workers", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := d.Status
		return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == replicas && s.Replicas == replicas && s.AvailableReplicas == replicas, nil
	})
}

func testKarpenter(t *testing.T, c *cluster) {
	c.withForeign(t)
	// Karpenter v1's disruption controller taints the node
	// karpenter.sh/disrupted:NoSchedule, then waits for the replacement.
	disrupted := corev1.Taint{Key: "karpenter.sh/disrupted", Effect: corev1.TaintEffectNoSchedule}

	// First the replacement fails to initialise: Karpenter removes the
	// taint again and keeps the node. The workers are told and then told
	// running again; nothing is evicted.
	pods := c.waitWorkers(t, replicas)
	t0 := time.Now()
	c.patchNode(t, addTaint(disrupted))
	told := c.waitTold(t, pods, t0, 30*time.Second)
	for _, p := range pods {
		t.Logf("karpenter.sh/disrupted added -> %s told %q in %d ms", p.Name, told[p.Name].Detail, told[p.Name].At.Sub(t0).Milliseconds())
	}
	back := time.Now()
	c.patchNode(t, removeTaint(disrupted.Key))
	c.waitResumed(t, pods, back)
	t.Logf("karpenter.sh/disrupted removed (node kept) -> workers running again in %d ms", time.Since(back).Milliseconds())
	c.noLastcallCordon(t)

	// Then the real thing: taint, a wait for the replacement (tens of
	// seconds in a real cluster, 5 s here), evictions through the Eviction
	// API, as its termination controller does.
	pods, pw := c.busy(t, 4*time.Second, 4*time.Second, 4*time.Second, 4*time.Second)
	nw := c.watchNode(t)
	t0 = time.Now()
	c.patchNode(t, addTaint(disrupted))
	seen := c.waitNode(t, nw, 10*time.Second, "node: taint added", disrupted.Key)
	time.Sleep(5 * time.Second)
	c.evictAll(t, pods)
	pw.waitGone(t, c, pods, time.Minute)
	tl := c.recordStopped(t, "Karpenter v1: taint karpenter.sh/disrupted:NoSchedule, 5 s, evictions", t0, pw, pods)
	tl.add(nw.snapshot()...)
	c.foreignReport(t, "karpenter", seen, tl, pods, "karpenter", true)
	c.noLastcallCordon(t)
	if failures := c.failureEvents(t, t0); len(failures) > 0 {
		t.Errorf("eviction failures recorded: %v", failures)
	}
	c.patchNode(t, removeTaint(disrupted.Key))
	c.settle(t)
}

// evictAll evicts pods in parallel through the Eviction API.
func (c *cluster) evictAll(t *testing.T, pods []corev1.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, len(pods))
	for _, p := range pods {
		go func() { errs <- c.evict(ctx, p) }()
	}
	for range pods {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func testClusterAutoscaler(t *testing.T, c *cluster) {
	c.withForeign(t)
	pods, pw := c.busy(t, 4*time.Second, 4*time.Second, 4*time.Second, 4*time.Second)

	// A deletion candidate (PreferNoSchedule) is no drain: nothing is said.
	cand := time.Now()
	candidate := corev1.Taint{Key: "DeletionCandidateOfClusterAutoscaler", Value: strconv.FormatInt(cand.Unix(), 10), Effect: corev1.TaintEffectPreferNoSchedule}
	c.patchNode(t, addTaint(candidate))
	time.Sleep(3 * time.Second)
	for _, e := range c.ledger.since(cand) {
		if e.What == "told" {
			t.Errorf("%s told %q for a deletion candidate", e.Pod, e.Detail)
		}
	}

	// The scale-down: ToBeDeletedByClusterAutoscaler=<unix time>:NoSchedule,
	// then the evictions at once (its actuator drains right after the
	// taint).
	nw := c.watchNode(t)
	t0 := time.Now()
	c.patchNode(t, addTaint(corev1.Taint{Key: "ToBeDeletedByClusterAutoscaler", Value: strconv.FormatInt(t0.Unix(), 10), Effect: corev1.TaintEffectNoSchedule}))
	c.evictAll(t, pods)
	pw.waitGone(t, c, pods, time.Minute)
	seen, _ := nw.first("node: taint added", "ToBeDeletedByClusterAutoscaler")
	tl := c.recordStopped(t, "cluster-autoscaler scale-down: taint ToBeDeletedByClusterAutoscaler:NoSchedule, evictions at once", t0, pw, pods)
	tl.add(nw.snapshot()...)
	// The evictions race the news: a worker hears it from the agent (reason
	// cluster-autoscaler) or from its own preStop hook (pod-terminating),
	// whichever is first, and always before its SIGTERM.
	for _, p := range pods {
		tl.assertOrder(t, p.Name, "told", "kubelet: SIGTERM worker")
	}
	c.foreignReport(t, "cluster-autoscaler", seen, tl, pods, "", false)
	c.noLastcallCordon(t)
	c.patchNode(t, removeTaint("ToBeDeletedByClusterAutoscaler"))
	c.patchNode(t, removeTaint(candidate.Key))
	c.settle(t)
}

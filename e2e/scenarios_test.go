package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The order in which the kubelet stops a worker pod with the injected
// native sidecar, once the workers know they must drain: the worker's
// preStop hook (the sidecar's "prestop", which returns when the workers
// are done), then SIGTERM to the worker, which exits; only then the
// sidecar gets its SIGTERM; then the pod is gone. (When the test's watch
// saw the deletion is not in the order: the kubelet may act on it first.)
var stopOrder = []string{
	"kubelet: preStop started worker", "kubelet: preStop completed worker",
	"kubelet: SIGTERM worker", "sigterm", "exit", "kubelet: container exited worker",
	"kubelet: SIGTERM lastcall", "api: pod gone",
}

// busy publishes messages of costs and waits until every worker pod holds
// one; it returns the pods and a watch of them.
func (c *cluster) busy(t *testing.T, costs ...time.Duration) ([]corev1.Pod, *podWatch) {
	t.Helper()
	pods := c.waitWorkers(t, replicas)
	t0 := time.Now()
	c.publish(t, costs...)
	c.waitBusy(t, pods, t0)
	return pods, c.watchPods(t)
}

func testGCEPreemption(t *testing.T, c *cluster) {
	pods, pw := c.busy(t, append([]time.Duration{long}, repeat(time.Second, 20)...)...)
	critical := c.criticalPod(t)
	agent := c.agentPod(t)
	peak := c.sampleMemory(t, agent.Name)

	notice := time.Now()
	c.gce.set("instance/preempted", "TRUE")
	deadline := notice.Add(30 * time.Second)
	pw.waitGone(t, c, pods, time.Minute)
	mem, rss := peak()
	c.agentRSS = append(c.agentRSS, "agent peak while draining a GCE preemption (every 0.5 s): kubelet rssBytes "+mib(mem.RSS)+
		", workingSetBytes "+mib(mem.WorkingSet)+"; process VmRSS "+mib(rss))

	tl := c.recordStopped(t, "GCE instance/preempted=TRUE (deadline +30s), a system-cluster-critical pod on the node", notice, pw, pods)
	for _, p := range pods {
		tl.assertOrder(t, p.Name, append([]string{"told"}, stopOrder...)...)
		assertBefore(t, tl, p.Name, "api: deletion requested", deadline)
		assertBefore(t, tl, p.Name, "api: pod gone", deadline)
	}
	// The critical pod is evicted last, so the workers' pods get less than
	// the 30 s: each worker is told its own pod's stop, never the node's.
	for _, r := range deadlinesKept(t, tl, pods, notice) {
		if !r.told.Before(deadline.Add(-5 * time.Second)) {
			t.Errorf("%s: told %v, the node's deadline or near it (%v), though a critical pod is drained after the workers", r.pod, r.told, deadline)
		}
	}
	c.poll(t, 30*time.Second, "the critical pod evicted after the workers", func(ctx context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods(critical.Namespace).Get(ctx, critical.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && p.UID != critical.UID) {
			return true, nil
		}
		return false, err
	})
	c.resetNode(t, "aws")
	c.settle(t)
}

func testAWSSpot(t *testing.T, c *cluster) {
	pods, pw := c.busy(t, append([]time.Duration{long}, repeat(time.Second, 20)...)...)

	notice := time.Now()
	deadline := notice.Add(2 * time.Minute).Truncate(time.Second)
	c.startEC2(t, "spot", "-a", "terminate", "-t", deadline.UTC().Format(time.RFC3339))
	pw.waitGone(t, c, pods, 3*time.Minute)

	tl := c.recordStopped(t, "AWS spot/instance-action terminate (deadline +2m)", notice, pw, pods)
	logTold(t, tl, pods, deadline)
	for _, p := range pods {
		tl.assertOrder(t, p.Name, append([]string{"told", "done"}, stopOrder...)...)
		assertBefore(t, tl, p.Name, "api: deletion requested", deadline)
		assertBefore(t, tl, p.Name, "api: pod gone", deadline)
	}
	c.resetNode(t, "aws")
	c.settle(t)
}

func testScaleDown(t *testing.T, c *cluster) {
	pods, pw := c.busy(t, repeat(6*time.Second, 6)...)

	at := time.Now()
	c.scale(t, 0)
	pw.waitGone(t, c, pods, time.Minute)
	tl := c.recordStopped(t, "Deployment scaled to 0, no notice", at, pw, pods)
	for _, p := range pods {
		// The preStop hook is what tells the workers here.
		tl.assertOrder(t, p.Name, append([]string{"kubelet: preStop started worker", "told", "done"}, stopOrder[1:]...)...)
		if e, ok := tl.first(p.Name, "told"); ok && !strings.HasPrefix(e.Detail, "pod-terminating") {
			t.Errorf("%s told %q, want reason pod-terminating", p.Name, e.Detail)
		}
	}
	c.scale(t, replicas)
	c.settle(t)
}

func testAgentKilled(t *testing.T, c *cluster) {
	t0 := time.Now()
	first := c.published + 1
	pods, pw := c.busy(t, append([]time.Duration{20 * time.Second}, repeat(time.Second, 20)...)...)
	holder := ""
	for _, e := range c.ledger.since(t0) {
		if e.What == "got" && e.Seq == uint64(first) {
			holder = e.Pod
		}
	}
	old := c.agentPod(t)

	notice := time.Now()
	deadline := notice.Add(2 * time.Minute).Truncate(time.Second)
	c.startEC2(t, "spot", "-a", "terminate", "-t", deadline.UTC().Format(time.RFC3339))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.ledger.waitFor(ctx, notice, func(es []event) bool {
		return slices.ContainsFunc(es, func(e event) bool { return e.Pod == holder && e.What == "told" })
	}); err != nil {
		t.Fatalf("the holder of the long message, %s, was never told: %v\n%s", holder, err, c.state())
	}
	// kubectl delete pod --grace-period=0 --force
	killed := time.Now()
	if err := c.client.CoreV1().Pods(releaseNS).Delete(t.Context(), old.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	var replacement corev1.Pod
	c.poll(t, 2*time.Minute, "the DaemonSet's replacement agent", func(ctx context.Context) (bool, error) {
		replacement = c.agentPod(t)
		return replacement.UID != old.UID, nil
	})
	ready := time.Now()
	pw.waitGone(t, c, pods, time.Until(deadline)+10*time.Second)

	tl := c.recordStopped(t, "AWS spot notice, agent pod force-deleted once the workers were told", notice, pw, pods)
	tl.add(event{Pod: old.Name, What: "agent pod force-deleted", At: killed}, event{Pod: replacement.Name, What: "replacement agent ready", At: ready})
	t.Logf("agent %s force-deleted at %+.3fs, replacement %s ready at %+.3fs", old.Name, killed.Sub(notice).Seconds(), replacement.Name, ready.Sub(notice).Seconds())
	logTold(t, tl, pods, deadline)
	for _, e := range c.ledger.since(notice) {
		if e.Seq == uint64(first) && (e.What == "acked" || e.What == "handed-back") {
			t.Logf("the %s message held by %s when the agent died: %s at %+.3fs", 20*time.Second, holder, e.What, e.At.Sub(notice).Seconds())
		}
	}
	if holder == "" {
		t.Fatal("no worker took the long message")
	}
	// The long message's pod was still at work when the agent died: its
	// eviction is the replacement's.
	if e, ok := tl.first(holder, "kubelet: preStop started worker"); !ok || !e.At.After(killed) {
		t.Errorf("%s: stopped at %v, want after the agent was killed at %v", holder, e.At, killed)
	}
	for _, p := range pods {
		tl.assertOrder(t, p.Name, append([]string{"told"}, stopOrder...)...)
		assertBefore(t, tl, p.Name, "api: pod gone", deadline)
	}
	c.resetNode(t, "aws")
	c.settle(t)
}

// logTold prints what each pod's workers were told against the notice's
// real deadline.
func logTold(t *testing.T, tl *timeline, pods []corev1.Pod, deadline time.Time) {
	t.Helper()
	for _, p := range pods {
		e, ok := tl.first(p.Name, "told")
		if !ok {
			continue
		}
		reason, at, _ := strings.Cut(e.Detail, " deadline ")
		if told, err := time.Parse(time.RFC3339Nano, at); err == nil {
			t.Logf("%s told %s, deadline %+.3fs from the spot notice's", p.Name, reason, told.Sub(deadline).Seconds())
		}
	}
}

func assertBefore(t *testing.T, tl *timeline, pod, what string, deadline time.Time) {
	t.Helper()
	if e, ok := tl.first(pod, what); !ok || !e.At.Before(deadline) {
		t.Errorf("%s: %q at %v, want before the deadline %v", pod, what, e.At, deadline)
	}
}

// scale sets the worker Deployment's replicas.
func (c *cluster) scale(t *testing.T, n int32) {
	t.Helper()
	s, err := c.client.AppsV1().Deployments(workNS).GetScale(t.Context(), "workers", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.Replicas = n
	if _, err := c.client.AppsV1().Deployments(workNS).UpdateScale(t.Context(), "workers", s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// recordStopped waits until the kubelet has logged the sidecar container
// of each of pods as exited, then records the timeline.
func (c *cluster) recordStopped(t *testing.T, title string, t0 time.Time, pw *podWatch, pods []corev1.Pod) *timeline {
	t.Helper()
	c.poll(t, 15*time.Second, "the kubelet's log of the stopped pods", func(context.Context) (bool, error) {
		es, err := kubeletEvents(c.kubeletLog, workNS, t0.Add(-time.Second))
		if err != nil {
			return false, err
		}
		for _, p := range pods {
			if !slices.ContainsFunc(es, func(e event) bool { return e.Pod == p.Name && e.What == "kubelet: container exited lastcall" }) {
				return false, nil
			}
		}
		return true, nil
	})
	return c.record(t, title, t0, pw, pods)
}

// sampleMemory samples the agent container's memory every 0.5 s until the
// returned function is called, which returns the peaks: the kubelet's
// rssBytes and workingSetBytes, and the process's VmRSS.
func (c *cluster) sampleMemory(t *testing.T, agentPod string) func() (containerMemory, uint64) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan containerMemory)
	var vmRSS uint64
	go func() {
		var peak containerMemory
		defer func() { done <- peak }()
		for {
			if m, err := podMemory(ctx, c.client, nodeName, releaseNS, agentPod); err == nil {
				peak.RSS = max(peak.RSS, m["node-agent"].RSS)
				peak.WorkingSet = max(peak.WorkingSet, m["node-agent"].WorkingSet)
			}
			if rss, err := processRSS("node-agent"); err == nil {
				vmRSS = max(vmRSS, rss)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	return func() (containerMemory, uint64) {
		cancel()
		peak := <-done
		return peak, vmRSS
	}
}

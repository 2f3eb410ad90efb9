package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// criticalPod starts a pod of priority class system-cluster-critical on the
// node (as CoreDNS or a CNI helper would be), which lastcall evicts last:
// the workers' pods then get less than the notice's time, and each worker
// must be told its own pod's stop time, not the node's deadline.
func (c *cluster) criticalPod(t *testing.T) corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-critical", Namespace: metav1.NamespaceSystem},
		Spec: corev1.PodSpec{
			NodeName:                      nodeName,
			PriorityClassName:             "system-cluster-critical",
			TerminationGracePeriodSeconds: ptr(int64(5)),
			Containers: []corev1.Container{{
				Name: "pause", Image: "registry.k8s.io/pause:3.10", ImagePullPolicy: corev1.PullNever,
			}},
		},
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	c.poll(t, time.Minute, "the critical pod running", func(ctx context.Context) (bool, error) {
		p, err := c.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil, nil
	})
	return *pod
}

// toldAndKilled is, for one worker pod, what its workers were told and what
// the kubelet did.
type toldAndKilled struct {
	pod string
	// told is the deadline the workers were first told.
	told time.Time
	// stop is when the kubelet stops the pod whatever its workers do: the
	// deletion as the apiserver's watch saw it, plus its grace period.
	stop time.Time
	// done is when the workers said they were done; zero if they did not.
	done time.Time
	// sigterm is the kubelet's SIGTERM to the worker container, sigkill
	// when it would send SIGKILL (SIGTERM plus the grace it gave), exited
	// when the container exited.
	sigterm, sigkill, exited time.Time
}

// deadlinesKept reads, for each of pods, the deadline its workers were told
// and the kubelet's stop, SIGTERM, SIGKILL and exit, prints them as a table,
// and fails for a pod whose workers were told a later deadline than the
// kubelet gave its pod, or that got SIGTERM before its workers were done
// while its told deadline was still ahead.
func deadlinesKept(t *testing.T, tl *timeline, pods []corev1.Pod, t0 time.Time) []toldAndKilled {
	t.Helper()
	var out []toldAndKilled
	var b strings.Builder
	rel := func(at time.Time) string {
		if at.IsZero() {
			return "-"
		}
		return fmt.Sprintf("%+.3fs", at.Sub(t0).Seconds())
	}
	fmt.Fprintf(&b, "per worker pod, seconds from the notice (%s):\n", t0.Format("15:04:05.000"))
	fmt.Fprintf(&b, "  %-32s %9s %9s %9s %9s %9s %9s %9s\n", "pod", "told", "pod-stop", "margin", "done", "SIGTERM", "SIGKILL≤", "exited")
	for _, p := range pods {
		r := toldAndKilled{pod: p.Name}
		if e, ok := tl.first(p.Name, "told"); ok {
			if _, at, ok := strings.Cut(e.Detail, " deadline "); ok {
				r.told, _ = time.Parse(time.RFC3339Nano, at)
			}
		}
		if e, ok := tl.first(p.Name, "api: deletion requested"); ok {
			if g, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(e.Detail, "grace "), "s")); err == nil {
				r.stop = e.At.Add(time.Duration(g) * time.Second)
			}
		}
		if e, ok := tl.first(p.Name, "done"); ok {
			r.done = e.At
		}
		if e, ok := tl.first(p.Name, "kubelet: SIGTERM worker"); ok {
			r.sigterm = e.At
			if _, g, ok := strings.Cut(e.Detail, " grace "); ok {
				if s, err := strconv.Atoi(strings.TrimSuffix(g, "s")); err == nil {
					r.sigkill = e.At.Add(time.Duration(s) * time.Second)
				}
			}
		}
		if e, ok := tl.first(p.Name, "kubelet: container exited worker"); ok {
			r.exited = e.At
		}
		fmt.Fprintf(&b, "  %-32s %9s %9s %+8.3fs %9s %9s %9s %9s\n", r.pod, rel(r.told), rel(r.stop), r.stop.Sub(r.told).Seconds(),
			rel(r.done), rel(r.sigterm), rel(r.sigkill), rel(r.exited))
		switch {
		case r.told.IsZero() || r.stop.IsZero() || r.sigterm.IsZero():
			t.Errorf("%s: told %v, pod stop %v, SIGTERM %v: the timeline lacks one", r.pod, r.told, r.stop, r.sigterm)
		case r.told.After(r.stop):
			t.Errorf("%s: workers told %s, %.3fs after the kubelet stops their pod (%s)", r.pod, rel(r.told), r.told.Sub(r.stop).Seconds(), rel(r.stop))
		case r.sigterm.Before(r.told) && (r.done.IsZero() || r.sigterm.Before(r.done)):
			t.Errorf("%s: SIGTERM at %s, before the deadline told (%s) and before the workers were done", r.pod, rel(r.sigterm), rel(r.told))
		}
		out = append(out, r)
	}
	t.Log(b.String())
	return out
}

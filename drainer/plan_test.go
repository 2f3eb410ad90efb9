package drainer

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func pod(name string, mods ...func(*corev1.Pod)) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(name)}}
	for _, m := range mods {
		m(&p)
	}
	return p
}

func grace(s int64) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.TerminationGracePeriodSeconds = &s }
}

func critical(p *corev1.Pod) { p.Spec.PriorityClassName = "system-node-critical" }

func TestNewPlanSortsPods(t *testing.T) {
	now := metav1.Now()
	yes := true
	pods := []corev1.Pod{
		pod("web"),
		pod("dns", critical),
		pod("high", func(p *corev1.Pod) { prio := int32(criticalPriority); p.Spec.Priority = &prio }),
		pod("ds", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "DaemonSet", Name: "x", Controller: &yes}}
		}),
		pod("rs", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "x", Controller: &yes}}
		}),
		pod("static", func(p *corev1.Pod) { p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "h"} }),
		pod("agent"),
		pod("done", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		pod("crashed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }),
		pod("leaving", func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
	}
	plan := NewPlan(pods, types.NamespacedName{Namespace: "ns", Name: "agent"}, time.Now(), Policy{})
	names := func(ps []corev1.Pod) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	if got := names(plan.Tiers[TierWorkload]); len(got) != 2 || got[0] != "web" || got[1] != "rs" {
		t.Errorf("workload tier = %v, want [web rs]", got)
	}
	if got := names(plan.Tiers[TierCritical]); len(got) != 2 || got[0] != "dns" || got[1] != "high" {
		t.Errorf("critical tier = %v, want [dns high]", got)
	}
	want := map[string]SkipReason{
		"ns/ds": SkipDaemonSet, "ns/static": SkipMirror, "ns/agent": SkipSelf,
		"ns/done": SkipFinished, "ns/crashed": SkipFinished, "ns/leaving": SkipTerminating,
	}
	if len(plan.Skipped) != len(want) {
		t.Fatalf("skipped = %v, want %v", plan.Skipped, want)
	}
	for _, s := range plan.Skipped {
		if want[s.Pod] != s.Reason {
			t.Errorf("%s skipped for %q, want %q", s.Pod, s.Reason, want[s.Pod])
		}
	}
}

func TestPlanGrace(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name        string
		pod         corev1.Pod
		withCrit    bool
		deadlineIn  time.Duration
		want        int64
		description string
	}{
		{"own grace fits", pod("a", grace(5)), false, 30 * time.Second, 5, "shorter than the time left"},
		{"default 30s capped", pod("a"), false, 30 * time.Second, 28, "30s deadline minus 2s reserve"},
		{"long grace capped", pod("a", grace(600)), false, 120 * time.Second, 118, "AWS 2 min notice"},
		{"room for critical tier", pod("a", grace(600)), true, 30 * time.Second, 18, "ends 2s before the critical tier at 20s"},
		{"critical pod itself", pod("c", critical, grace(600)), true, 30 * time.Second, 28, "critical pods work to the deadline"},
		{"deadline passed", pod("a"), false, -5 * time.Second, 1, "never 0, which would force-delete"},
		{"zero grace kept at 1", pod("a", grace(0)), false, 30 * time.Second, 1, "0 would skip the kubelet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pods := []corev1.Pod{tc.pod}
			if tc.withCrit && tc.pod.Spec.PriorityClassName == "" {
				pods = append(pods, pod("c", critical))
			}
			plan := NewPlan(pods, types.NamespacedName{}, now.Add(tc.deadlineIn), Policy{})
			if got := plan.Grace(&tc.pod, now); got != tc.want {
				t.Errorf("Grace = %d, want %d (%s)", got, tc.want, tc.description)
			}
		})
	}
}

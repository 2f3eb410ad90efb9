package drainer

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Tier orders evictions: every pod of a lower tier is asked to leave before
// any pod of a higher one.
type Tier int

// The tiers, in eviction order.
const (
	// TierWorkload holds ordinary pods.
	TierWorkload Tier = 0
	// TierCritical holds pods of priority class system-cluster-critical or
	// system-node-critical (or an equal priority value): DNS, CNI helpers
	// and the like, which the workloads may need while they finish.
	TierCritical Tier = 1
)

// String names the tier for logs and reports.
func (t Tier) String() string {
	if t == TierCritical {
		return "critical"
	}
	return "workload"
}

// SkipReason says why a pod on the node is not evicted.
type SkipReason string

// Reasons a pod is left alone.
const (
	SkipDaemonSet   SkipReason = "daemonset"   // its DaemonSet would recreate it on the node anyway
	SkipMirror      SkipReason = "mirror"      // a static pod's mirror; the apiserver cannot evict it
	SkipSelf        SkipReason = "self"        // the agent's own pod
	SkipFinished    SkipReason = "finished"    // phase Succeeded or Failed
	SkipTerminating SkipReason = "terminating" // already being deleted
)

// criticalPriority is the priority value of system-cluster-critical; pods at
// or above it are drained last.
const criticalPriority = 2000000000

// Policy says how to drain.
type Policy struct {
	// OnBlocked says what happens to a pod whose eviction a
	// PodDisruptionBudget still refuses at the cut-off. Default Delete.
	OnBlocked BlockedAction
	// Reserve is kept back from the deadline when grace periods are
	// computed, so that pods are gone before the machine is. Default 2s.
	Reserve time.Duration
	// BlockedCutoff is how long before the deadline lastcall stops retrying
	// evictions that a budget refuses and applies OnBlocked. Default 5s.
	BlockedCutoff time.Duration
	// CriticalWindow is how long before the deadline the critical tier is
	// evicted even if workload pods are still terminating; workload grace
	// periods end by then when the node has critical pods. Default 10s.
	CriticalWindow time.Duration
	// Overtime is how long a drain whose deadline has passed, or is closer
	// than this, still works after it starts: the machine is going away now,
	// and evictions are sent at once with the minimum grace period. Default
	// 15s.
	Overtime time.Duration
}

// BlockedAction is what to do with a pod whose budget blocks its eviction
// until the cut-off.
type BlockedAction string

const (
	// Delete deletes the pod, bypassing its budget: the machine goes away
	// anyway, and a deleted pod is replaced by its controller sooner.
	Delete BlockedAction = "delete"
	// Leave leaves the pod to die with the machine.
	Leave BlockedAction = "leave"
)

// WithDefaults returns p with zero fields set to their defaults.
func (p Policy) WithDefaults() Policy {
	if p.OnBlocked == "" {
		p.OnBlocked = Delete
	}
	if p.Reserve == 0 {
		p.Reserve = 2 * time.Second
	}
	if p.BlockedCutoff == 0 {
		p.BlockedCutoff = 5 * time.Second
	}
	if p.CriticalWindow == 0 {
		p.CriticalWindow = 10 * time.Second
	}
	if p.Overtime == 0 {
		p.Overtime = 15 * time.Second
	}
	return p
}

// Plan is what a drain will do with each pod on the node.
type Plan struct {
	// Deadline is when the node goes away.
	Deadline time.Time
	// Tiers holds the pods to evict, by tier, in eviction order.
	Tiers [2][]corev1.Pod
	// Skipped holds the pods left alone and why.
	Skipped []Skipped
	// Policy is the policy the plan was made with, defaults applied.
	Policy Policy
	// Critical says workload pods must be gone by CriticalStart, to leave
	// the critical tier its window: NewPlan sets it when the node has
	// critical pods. It is part of the plan, not read from Tiers each time,
	// so that a drain run again with fresh pods (Refresh) keeps the stop
	// times its workers were told.
	Critical bool
}

// Skipped is a pod a drain leaves alone.
type Skipped struct {
	// Pod is namespace/name.
	Pod string
	// UID is the pod's UID.
	UID types.UID
	// Reason says why.
	Reason SkipReason
}

// NewPlan sorts pods into tiers and skips. self is the agent's own pod.
// It is pure: it reads nothing but its arguments.
func NewPlan(pods []corev1.Pod, self types.NamespacedName, deadline time.Time, policy Policy) Plan {
	plan := Plan{Deadline: deadline, Policy: policy.WithDefaults()}
	for _, pod := range pods {
		if reason, skip := skipReason(&pod, self); skip {
			plan.Skipped = append(plan.Skipped, Skipped{Pod: pod.Namespace + "/" + pod.Name, UID: pod.UID, Reason: reason})
			continue
		}
		tier := TierOf(&pod)
		plan.Tiers[tier] = append(plan.Tiers[tier], pod)
	}
	plan.Critical = len(plan.Tiers[TierCritical]) > 0
	return plan
}

// Refresh returns the plan for pods, the node's pods now, with p's deadline,
// policy and Critical: a drain run again (pods landed after the last one)
// keeps every pod's StopBy.
func (p Plan) Refresh(pods []corev1.Pod, self types.NamespacedName) Plan {
	q := NewPlan(pods, self, p.Deadline, p.Policy)
	q.Critical = p.Critical
	return q
}

// Len returns how many pods the plan evicts.
func (p Plan) Len() int { return len(p.Tiers[TierWorkload]) + len(p.Tiers[TierCritical]) }

// CriticalStart is when the critical tier is evicted at the latest.
func (p Plan) CriticalStart() time.Time { return p.Deadline.Add(-p.Policy.CriticalWindow) }

// Cutoff is when retries of refused evictions stop and OnBlocked applies.
func (p Plan) Cutoff() time.Time { return p.Deadline.Add(-p.Policy.BlockedCutoff) }

// Grace returns the grace period, in seconds, that pod gets when asked to
// leave at now: its own terminationGracePeriodSeconds (default 30), capped
// so that it ends Reserve before the deadline, or, for a workload pod on a
// node with critical pods, Reserve before the critical tier starts. The
// time left is cut to whole seconds, so a pod asked to leave after its
// LatestEviction stops up to a second before that end (StopBy allows for
// it). It is never below 1: a grace of 0 would delete the pod from etcd at
// once, without the kubelet stopping its containers.
func (p Plan) Grace(pod *corev1.Pod, now time.Time) int64 {
	left := int64(p.end(pod).Add(-p.Policy.Reserve).Sub(now) / time.Second)
	return max(1, min(ownGrace(pod), left))
}

// end is when pod must be gone: the deadline, or, for a workload pod on a
// node with critical pods, the start of the critical tier.
func (p Plan) end(pod *corev1.Pod) time.Time {
	if TierOf(pod) == TierWorkload && p.Critical {
		return p.CriticalStart()
	}
	return p.Deadline
}

// StopBy is when pod's containers are stopped at the latest if this plan's
// drain asks it to leave, less the second Grace may cut: its tier's end
// less Reserve and a second (a pod held back for its workers is asked to
// leave at LatestEviction, whose grace ends within that second). This is the deadline
// its workers are told. A pod stopped earlier is one whose workers said
// they were done, or one with no sidecar to tell. Only an eviction sent
// after StopBy (a budget refused it until the cut-off, or the drain started
// late) stops the pod later, never earlier than its workers were told.
func (p Plan) StopBy(pod *corev1.Pod) time.Time {
	// A second earlier than the grace's end: Grace cuts the time left to
	// whole seconds, so a pod asked to leave a moment after its
	// LatestEviction stops up to a second before the end.
	return p.end(pod).Add(-p.Policy.Reserve - time.Second)
}

// ownGrace is the pod's terminationGracePeriodSeconds, default 30.
func ownGrace(pod *corev1.Pod) int64 {
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return *pod.Spec.TerminationGracePeriodSeconds
	}
	return corev1.DefaultTerminationGracePeriodSeconds
}

// LatestEviction is the latest moment pod can be asked to leave and still
// get its own grace period (default 30s) before its tier's end, Reserve
// included; a pod held back for its workers is evicted then at the latest.
func (p Plan) LatestEviction(pod *corev1.Pod) time.Time {
	return p.end(pod).Add(-p.Policy.Reserve).Add(-time.Duration(ownGrace(pod)) * time.Second)
}

// TierOf returns the tier of pod.
func TierOf(pod *corev1.Pod) Tier {
	switch pod.Spec.PriorityClassName {
	case "system-cluster-critical", "system-node-critical":
		return TierCritical
	}
	if pod.Spec.Priority != nil && *pod.Spec.Priority >= criticalPriority {
		return TierCritical
	}
	return TierWorkload
}

// SkipReasonOf says whether a drain leaves pod alone, and why; self is the
// agent's own pod. A pod already terminating is left to finish (its
// deletion's grace holds).
func SkipReasonOf(pod *corev1.Pod, self types.NamespacedName) (SkipReason, bool) {
	return skipReason(pod, self)
}

func skipReason(pod *corev1.Pod, self types.NamespacedName) (SkipReason, bool) {
	switch {
	case pod.Namespace == self.Namespace && pod.Name == self.Name:
		return SkipSelf, true
	case pod.Annotations[corev1.MirrorPodAnnotationKey] != "":
		return SkipMirror, true
	case isDaemonSetPod(pod):
		return SkipDaemonSet, true
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return SkipFinished, true
	case pod.DeletionTimestamp != nil:
		return SkipTerminating, true
	}
	return "", false
}

func isDaemonSetPod(pod *corev1.Pod) bool {
	for _, ref := range pod.OwnerReferences {
		if ref.Controller != nil && *ref.Controller && ref.Kind == "DaemonSet" {
			return true
		}
	}
	return false
}

package drainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Outcome is what happened to one pod in a drain.
type Outcome string

// The outcomes of a drain for one pod.
const (
	// Evicted: the Eviction API accepted the eviction.
	Evicted Outcome = "evicted"
	// Deleted: a budget refused eviction until the cut-off and the pod was
	// deleted (Policy.OnBlocked Delete).
	Deleted Outcome = "deleted"
	// Gone: the pod was gone, or replaced by another of the same name,
	// before lastcall evicted it.
	Gone Outcome = "gone"
	// Blocked: a budget refused eviction until the cut-off and the pod was
	// left (Policy.OnBlocked Leave).
	Blocked Outcome = "blocked"
	// Failed: the apiserver did not accept the eviction before the deadline,
	// or refused it for good (for example RBAC).
	Failed Outcome = "failed"
	// Canceled: the drain was called off (the notice canceled or
	// superseded, the agent stopping) before the pod was asked to leave.
	// Nothing was refused: it is not counted as a failure.
	Canceled Outcome = "canceled"
)

// PodResult is what a drain did with one pod.
type PodResult struct {
	// Pod is namespace/name.
	Pod string
	// UID is the pod's UID; evictions carry it as a precondition.
	UID types.UID
	// Tier is the pod's eviction tier.
	Tier Tier
	// Outcome is what happened.
	Outcome Outcome
	// Grace is the grace period, in seconds, the pod was given.
	Grace int64
	// At is when the outcome was reached.
	At time.Time
	// Attempts counts the eviction and delete requests sent.
	Attempts int
	// Err is the last error, for Blocked and Failed.
	Err error
	// Held is how long the drain held the pod back for its workers.
	Held time.Duration
	// Released is true when the pod's workers reported done while held.
	Released bool
}

// Report is the result of one Drain.
type Report struct {
	// Node is the drained node.
	Node string
	// Deadline is the deadline the drain worked to.
	Deadline time.Time
	// Started and Finished bound the drain.
	Started, Finished time.Time
	// Pods holds one result per pod the drain acted on, in completion order.
	Pods []PodResult
	// Skipped holds the pods left alone.
	Skipped []Skipped
	// Drained is true when every pod the drain asked to leave, and every
	// pod that was already terminating, was gone before the drain ended, and
	// no eviction failed or was left blocked.
	Drained bool
	// Late is true when the drain started after the deadline, or with less
	// than Policy.Reserve left: evictions went out at once with the minimum
	// grace period.
	Late bool
}

// Count returns how many pods had outcome o.
func (r Report) Count(o Outcome) int {
	n := 0
	for _, p := range r.Pods {
		if p.Outcome == o {
			n++
		}
	}
	return n
}

// Drain evicts the pods on node so that they are gone before deadline: the
// workload tier first, in parallel; the critical tier once the workload pods
// are gone or at Plan.CriticalStart, whichever is first. Pods that land on
// the node while it drains (they tolerate the cordon, or were bound before
// it) are evicted too, in their tier. It returns when every pod it asked to
// leave is gone, or when the deadline passes, never later, with a report of
// each pod.
//
// A deadline that has passed, or is "now", does not make the drain give up:
// the machine is going away now, and every eviction that can still be sent
// is worth sending. A drain works until the deadline or until
// Policy.Overtime after it started, whichever is later; a late one sends
// every eviction at once with the minimum grace period, and its report says
// Late.
//
// Drain does not cordon; call Cordon first. It is safe to run again after an
// interrupted run: pods already terminating are waited for, not evicted
// again. The error is non-nil only when the pods could not be listed or ctx
// was canceled before the deadline.
func (d *Drainer) Drain(ctx context.Context, node string, deadline time.Time, policy Policy) (Report, error) {
	plan, err := d.Plan(ctx, node, deadline, policy)
	if err != nil {
		now := d.now()
		rep := Report{Node: node, Deadline: deadline, Started: now, Finished: now}
		return rep, fmt.Errorf("drain node %s: %w", node, err)
	}
	return d.DrainPlan(ctx, node, plan)
}

// DrainPlan is Drain with a plan made beforehand (NewPlan, or Plan): the
// caller that tells each pod's workers when the pod will be stopped
// (Plan.StopBy) drains with the very plan it told them of. Pods that land
// after the plan was made are evicted as in Drain; the plan's tiers, and so
// each pod's StopBy, do not change during the drain.
func (d *Drainer) DrainPlan(ctx context.Context, node string, plan Plan) (Report, error) {
	plan.Policy = plan.Policy.WithDefaults()
	policy, deadline := plan.Policy, plan.Deadline
	start := d.now()
	end := deadline
	if late := start.Add(policy.Overtime); end.Before(late) {
		end = late
	}
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	rep := Report{Node: node, Deadline: deadline, Started: start, Late: deadline.Before(start.Add(policy.Reserve))}
	log := d.log.With("node", node)
	log.Info("drain started", "pods", plan.Len(), "critical", len(plan.Tiers[TierCritical]),
		"skipped", len(plan.Skipped), "deadline_in", deadline.Sub(start).Round(time.Millisecond).String(), "late", rep.Late)

	slow := &lag{}
	var (
		mu       sync.Mutex // guards rep.Pods, leaving and inflight
		leaving  = map[types.UID]bool{}
		inflight int
		wg       sync.WaitGroup
	)
	// Owned by this goroutine: every pod the drain has decided about, and
	// the workload pods it asked to leave.
	seen := map[types.UID]bool{}
	workload := map[types.UID]bool{}
	var waiting []corev1.Pod // critical pods not yet asked
	launch := func(pod corev1.Pod) {
		mu.Lock()
		inflight++
		mu.Unlock()
		wg.Go(func() {
			res := d.evict(ctx, log, plan, slow, pod)
			if res.Outcome != Canceled {
				d.m.observe(res.Outcome)
			}
			mu.Lock()
			defer mu.Unlock()
			inflight--
			rep.Pods = append(rep.Pods, res)
			if res.Outcome == Evicted || res.Outcome == Deleted {
				leaving[pod.UID] = true
			}
		})
	}
	// consider sorts a pod the drain has not seen yet: left alone, waited
	// for (already terminating), asked to leave now, or (critical) later.
	consider := func(pod corev1.Pod, newcomer bool) {
		seen[pod.UID] = true
		if reason, skip := skipReason(&pod, d.self); skip {
			if reason == SkipTerminating {
				mu.Lock()
				leaving[pod.UID] = true
				mu.Unlock()
			}
			if newcomer {
				rep.Skipped = append(rep.Skipped, Skipped{Pod: pod.Namespace + "/" + pod.Name, UID: pod.UID, Reason: reason})
			}
			return
		}
		if newcomer {
			log.Info("pod landed on the draining node", "pod", pod.Namespace+"/"+pod.Name)
		}
		if TierOf(&pod) == TierCritical {
			waiting = append(waiting, pod)
			return
		}
		workload[pod.UID] = true
		launch(pod)
	}
	for _, s := range plan.Skipped {
		seen[s.UID] = true
		if s.Reason == SkipTerminating {
			leaving[s.UID] = true
		}
	}
	rep.Skipped = plan.Skipped
	for _, tier := range plan.Tiers {
		for _, pod := range tier {
			consider(pod, false)
		}
	}
	for {
		pods, listErr := d.listPods(ctx, node)
		present := map[types.UID]bool{}
		if listErr == nil {
			for _, pod := range pods {
				present[pod.UID] = true
				if !seen[pod.UID] {
					consider(pod, true)
				}
			}
		}
		mu.Lock()
		gone := listErr == nil && noneOf(present, leaving)
		busy := inflight
		mu.Unlock()
		if len(waiting) > 0 && (!d.now().Before(plan.CriticalStart()) || (listErr == nil && noneOf(present, workload))) {
			for _, pod := range waiting {
				launch(pod)
			}
			waiting, busy = nil, busy+len(waiting)
		}
		if gone && busy == 0 && len(waiting) == 0 {
			break
		}
		if !sleep(ctx, d.poll) {
			break
		}
	}
	wg.Wait()
	mu.Lock()
	rep.Drained = ctx.Err() == nil && rep.Count(Failed) == 0 && rep.Count(Blocked) == 0
	mu.Unlock()
	rep.Finished = d.now()
	log.Info("drain finished", "drained", rep.Drained, "evicted", rep.Count(Evicted), "deleted", rep.Count(Deleted),
		"gone", rep.Count(Gone), "blocked", rep.Count(Blocked), "failed", rep.Count(Failed),
		"took", rep.Finished.Sub(rep.Started).Round(time.Millisecond).String())
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return rep, fmt.Errorf("drain node %s: %w", node, err)
	}
	return rep, nil
}

// calledOff reports whether ctx was canceled, rather than having reached
// the drain's deadline.
func calledOff(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded)
}

// noneOf reports whether no UID of want is present.
func noneOf(present, want map[types.UID]bool) bool {
	for uid := range want {
		if present[uid] {
			return false
		}
	}
	return true
}

// listPods lists the node's pods with the per-call timeout.
func (d *Drainer) listPods(ctx context.Context, node string) ([]corev1.Pod, error) {
	cctx, cancel := d.callContext(ctx)
	defer cancel()
	return d.pods.ListPods(cctx, node)
}

// lag is the longest time an eviction request of one drain took to be
// answered. The apiserver starts a pod's grace period when it accepts the
// eviction, not when lastcall sends it: a request that waits in API
// Priority and Fairness queues, or while the apiserver retries a budget's
// update that other evictions conflict with, stops the pod that much later
// than its grace period says. Safe for concurrent use.
type lag struct {
	mu  sync.Mutex
	max time.Duration
}

// observe records the round trip of one request.
func (l *lag) observe(took time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max = max(l.max, took)
}

// get returns the longest round trip observed so far.
func (l *lag) get() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

// evict asks pod to leave: through the Eviction API with the pod's UID as a
// precondition until the cut-off, then as the policy says. It returns when
// the pod is asked, gone, left, or the deadline (ctx) passes.
//
// The grace period allows for the drain's slowest eviction answer so far
// (slow), so that the pod stops before its tier's end even when the
// apiserver accepts the eviction late; except for a pod whose workers were
// told Plan.StopBy and have not said they are done: a shorter grace could
// stop it before the time they were told, so it keeps the plan's grace.
func (d *Drainer) evict(ctx context.Context, log *slog.Logger, plan Plan, slow *lag, pod corev1.Pod) PodResult {
	res := PodResult{Pod: pod.Namespace + "/" + pod.Name, UID: pod.UID, Tier: TierOf(&pod)}
	log = log.With("pod", res.Pod)
	promised := false // workers were told StopBy and are still working
	if d.hold != nil {
		if done := d.hold(ctx, &pod); done != nil {
			start := d.now()
			res.Released = d.waitHeld(ctx, plan, &pod, done)
			promised = !res.Released
			res.Held = d.now().Sub(start)
			if calledOff(ctx) {
				res.Outcome, res.At = Canceled, d.now()
				return res
			}
			log.Debug("held pod released", "held", res.Held.String(), "workers_done", res.Released)
		}
	}
	backoff, budget := newBackoff(), newBudgetBackoff()
	refused := false // the last answer was a budget's refusal
	told := false    // Refused was called for this pod
	for {
		now := d.now()
		grace := plan.Grace(&pod, now)
		if !promised {
			grace = plan.Grace(&pod, now.Add(slow.get()))
		}
		pastCutoff := res.Attempts > 0 && !now.Before(plan.Cutoff())
		if pastCutoff && refused && plan.Policy.OnBlocked == Leave {
			res.Outcome, res.At = Blocked, now
			log.Warn("eviction blocked by disruption budget, leaving pod", "err", res.Err)
			return res
		}
		deleting := pastCutoff && plan.Policy.OnBlocked == Delete
		res.Attempts++
		cctx, cancel := d.callContext(ctx)
		var err error
		if deleting {
			err = d.client.DeletePod(cctx, pod.Namespace, pod.Name, metav1.DeleteOptions{
				GracePeriodSeconds: &grace,
				Preconditions:      &metav1.Preconditions{UID: &pod.UID},
			})
		} else {
			err = d.client.EvictPod(cctx, &policyv1.Eviction{
				ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name},
				DeleteOptions: &metav1.DeleteOptions{
					GracePeriodSeconds: &grace,
					Preconditions:      &metav1.Preconditions{UID: &pod.UID},
				},
			})
		}
		cancel()
		if err == nil || apierrors.IsTooManyRequests(err) || apierrors.IsConflict(err) {
			// Answered by the eviction's own work (accepted, refused by a
			// budget or flow control, a precondition): its round trip is
			// what the next grace allows for. Timeouts and refused
			// connections say nothing of when a pod would be stopped.
			slow.observe(d.now().Sub(now))
		}
		switch {
		case calledOff(ctx):
			// The drain was called off while the request was out: whatever
			// the answer, it is not a refusal.
			res.Outcome, res.At = Canceled, d.now()
			if err == nil {
				res.Outcome, res.Grace = Evicted, grace
				if deleting {
					res.Outcome = Deleted
				}
			}
			return res
		case err == nil:
			res.Outcome, res.At, res.Grace = Evicted, d.now(), grace
			if deleting {
				res.Outcome = Deleted
				log.Warn("pod deleted past the cut-off", "grace_seconds", grace, "last_refusal", res.Err)
			} else {
				log.Debug("pod evicted", "grace_seconds", grace)
			}
			res.Err = nil
			return res
		case apierrors.IsNotFound(err):
			// 404: the pod is gone already.
			res.Outcome, res.At = Gone, d.now()
			return res
		case apierrors.IsConflict(err) && d.replaced(ctx, pod):
			// 409 on the UID precondition: a new pod took the name; the one
			// this drain was after is gone.
			res.Outcome, res.At = Gone, d.now()
			return res
		case apierrors.IsTooManyRequests(err) && apierrors.HasStatusCause(err, policyv1.DisruptionBudgetCause),
			apierrors.IsInternalError(err):
			// 429 with a DisruptionBudget cause: a budget allows no
			// disruption now; retry until the cut-off. 500: the pod has more
			// than one budget, which eviction does not support; only the
			// policy can get it off the node.
			if !told && d.refuse != nil {
				d.refuse(&pod, err)
			}
			refused, told = true, true
		case permanent(err):
			// 401/403/400/422: retrying will not change the answer.
			res.Outcome, res.At, res.Err = Failed, d.now(), err
			log.Error("eviction refused", "err", err)
			if d.refuse != nil {
				d.refuse(&pod, err)
			}
			return res
		default:
			// Anything else (apiserver down, timeout, flow-control 429, 5xx)
			// is transient: retry until the deadline.
			refused = false
		}
		res.Err = err
		wait := backoff.Step()
		if refused {
			wait = budget.Step()
		} else if secs, ok := apierrors.SuggestsClientDelay(err); ok {
			wait = max(wait, time.Duration(secs)*time.Second) // the server's Retry-After
		}
		if cut := plan.Cutoff(); now.Before(cut) && now.Add(wait).After(cut) {
			wait = cut.Sub(now) // act on the policy as soon as the cut-off comes
		}
		if !sleep(ctx, wait) {
			if calledOff(ctx) {
				res.Outcome, res.At = Canceled, d.now()
				return res
			}
			res.Outcome, res.At = Failed, d.now()
			if refused {
				res.Outcome = Blocked
			}
			log.Error("pod not evicted before the deadline", "outcome", res.Outcome, "err", err)
			return res
		}
	}
}

// waitHeld waits until done closes, or until the latest moment pod can be
// asked to leave and still get its whole grace period, or until ctx ends.
// It reports whether done closed.
func (d *Drainer) waitHeld(ctx context.Context, plan Plan, pod *corev1.Pod, done <-chan struct{}) bool {
	latest := plan.LatestEviction(pod)
	wait := latest.Sub(d.now())
	if wait <= 0 {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// replaced reports whether pod is gone and maybe replaced by another pod of
// the same name. On errors it says no, so that the eviction is retried.
func (d *Drainer) replaced(ctx context.Context, pod corev1.Pod) bool {
	cctx, cancel := d.callContext(ctx)
	defer cancel()
	got, err := d.client.GetPod(cctx, pod.Namespace, pod.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true
	}
	return err == nil && got.UID != pod.UID
}

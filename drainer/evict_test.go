package drainer

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
	k8stesting "k8s.io/client-go/testing"
)

// These tests drive evict's retry and cut-off logic with scripted apiserver
// answers and a fake clock (testing/synctest). What the apiserver really
// does with evictions and budgets is tested against the real control plane
// in drain_test.go.

// script answers evictions and deletes from a list of errors; after the
// list, it answers with final. It records the time of each request.
type script struct {
	mu       sync.Mutex
	evicts   []error
	final    error
	deletes  []time.Time
	requests []time.Time
}

func (s *script) install(c *fake.Clientset) {
	c.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.requests = append(s.requests, time.Now())
		if len(s.evicts) > 0 {
			err := s.evicts[0]
			s.evicts = s.evicts[1:]
			return true, nil, err
		}
		return true, nil, s.final
	})
	c.PrependReactor("delete", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.deletes = append(s.deletes, time.Now())
		return true, nil, nil
	})
}

func budgetRefusal() error {
	err := apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 0)
	err.ErrStatus.Details.Causes = []metav1.StatusCause{{Type: policyv1.DisruptionBudgetCause, Message: "allowed 0"}}
	return err
}

var podGR = schema.GroupResource{Resource: "pods"}

func TestEvictRetries(t *testing.T) {
	unavailable := apierrors.NewServiceUnavailable("etcd leader changed")
	timeout := context.DeadlineExceeded
	for _, tc := range []struct {
		name      string
		evicts    []error
		final     error
		policy    Policy
		want      Outcome
		atCutoff  bool // the outcome is reached exactly at the cut-off
		atDeadlne bool // the outcome is reached exactly at the deadline
		deletes   int
	}{
		{name: "accepted at once", final: nil, want: Evicted},
		{name: "apiserver down for a while", evicts: []error{unavailable, timeout, unavailable, timeout, unavailable}, final: nil, want: Evicted},
		{name: "budget refuses until cut-off, delete", final: budgetRefusal(), policy: Policy{OnBlocked: Delete}, want: Deleted, atCutoff: true, deletes: 1},
		{name: "budget refuses until cut-off, leave", final: budgetRefusal(), policy: Policy{OnBlocked: Leave}, want: Blocked, atCutoff: true},
		{name: "budget relents before cut-off", evicts: []error{budgetRefusal(), budgetRefusal(), budgetRefusal()}, final: nil, want: Evicted},
		{name: "two budgets (500), delete", final: apierrors.NewInternalError(errors.New("This pod has more than one PodDisruptionBudget")), policy: Policy{OnBlocked: Delete}, want: Deleted, atCutoff: true, deletes: 1},
		{name: "apiserver down to the deadline, leave", final: unavailable, policy: Policy{OnBlocked: Leave}, want: Failed, atDeadlne: true},
		{name: "forbidden is final", final: apierrors.NewForbidden(podGR, "p", errors.New("rbac")), want: Failed},
		{name: "gone", final: apierrors.NewNotFound(podGR, "p"), want: Gone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client := fake.NewClientset()
				s := &script{evicts: tc.evicts, final: tc.final}
				s.install(client)
				d := New(clientset.New(client), Options{Logger: slog.New(slog.DiscardHandler)})
				start := time.Now()
				deadline := start.Add(30 * time.Second)
				p := pod("p")
				plan := NewPlan([]corev1.Pod{p}, types.NamespacedName{}, deadline, tc.policy)
				ctx, cancel := context.WithDeadline(t.Context(), deadline)
				defer cancel()
				res := d.evict(ctx, d.log, plan, &lag{}, p)
				if res.Outcome != tc.want {
					t.Fatalf("outcome %s (err %v), want %s", res.Outcome, res.Err, tc.want)
				}
				if tc.atCutoff && !res.At.Equal(plan.Cutoff()) {
					t.Errorf("acted at %v, want at the cut-off %v", res.At.Sub(start), plan.Cutoff().Sub(start))
				}
				if tc.atDeadlne && !res.At.Equal(deadline) {
					t.Errorf("gave up at %v, want at the deadline %v", res.At.Sub(start), deadline.Sub(start))
				}
				if len(s.deletes) != tc.deletes {
					t.Errorf("%d deletes, want %d", len(s.deletes), tc.deletes)
				}
				// Retries back off: no two requests closer than the first step,
				// and no gap longer than the cap (plus jitter). A budget's
				// refusal is retried from 0.5 s up to 4 s (plus a quarter).
				// (The 500 of a pod with two budgets counts as a refusal.)
				refusal := func(err error) bool { return apierrors.IsTooManyRequests(err) || apierrors.IsInternalError(err) }
				budget := refusal(tc.final) || len(tc.evicts) > 0 && refusal(tc.evicts[0])
				lo, hi := 40*time.Millisecond, 2400*time.Millisecond
				if budget {
					lo, hi = 500*time.Millisecond, 5*time.Second
				}
				for i := 1; i < len(s.requests); i++ {
					gap := s.requests[i].Sub(s.requests[i-1])
					atCutoff := s.requests[i].Equal(plan.Cutoff())
					if (gap < lo && !atCutoff) || gap > hi {
						t.Errorf("request %d came %v after the one before, want between %v and %v", i, gap, lo, hi)
					}
				}
				if res.Outcome == Evicted && res.Attempts != len(tc.evicts)+1 {
					t.Errorf("%d attempts, want %d", res.Attempts, len(tc.evicts)+1)
				}
			})
		})
	}
}

func TestEvictConflictMeansReplaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A pod of the same name but another UID: the one we wanted is gone.
		client := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "new"}})
		s := &script{final: apierrors.NewConflict(podGR, "p", errors.New("precondition failed: UID"))}
		s.install(client)
		d := New(clientset.New(client), Options{})
		p := pod("p")
		plan := NewPlan([]corev1.Pod{p}, types.NamespacedName{}, time.Now().Add(30*time.Second), Policy{})
		if res := d.evict(t.Context(), d.log, plan, &lag{}, p); res.Outcome != Gone || res.Attempts != 1 {
			t.Errorf("outcome %s after %d attempts, want gone after 1", res.Outcome, res.Attempts)
		}
	})
}

func TestEvictHeldPod(t *testing.T) {
	for _, tc := range []struct {
		name     string
		release  time.Duration // after which the workers report done; 0: never
		want     time.Duration // when the eviction goes out
		released bool
	}{
		{name: "workers done early", release: 7 * time.Second, want: 7 * time.Second, released: true},
		{name: "workers never done", want: 30*time.Second - 2*time.Second - 10*time.Second}, // deadline − reserve − grace
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client := fake.NewClientset()
				s := &script{}
				s.install(client)
				done := make(chan struct{})
				if tc.release > 0 {
					time.AfterFunc(tc.release, func() { close(done) })
				}
				d := New(clientset.New(client), Options{Hold: func(context.Context, *corev1.Pod) <-chan struct{} { return done }})
				start := time.Now()
				p := pod("p", grace(10))
				plan := NewPlan([]corev1.Pod{p}, types.NamespacedName{}, start.Add(30*time.Second), Policy{})
				res := d.evict(t.Context(), d.log, plan, &lag{}, p)
				if res.Outcome != Evicted || res.Released != tc.released {
					t.Fatalf("outcome %s released %v, want evicted, %v", res.Outcome, res.Released, tc.released)
				}
				if len(s.requests) != 1 || s.requests[0].Sub(start) != tc.want {
					t.Errorf("eviction sent at %v, want at %v", s.requests[0].Sub(start), tc.want)
				}
				if res.Grace != 10 {
					t.Errorf("grace %d, want the pod's own 10 s", res.Grace)
				}
			})
		})
	}
}

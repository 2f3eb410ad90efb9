package drainer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lastcall-dev/lastcall/kubeclient"
)

// PodLister lists the pods bound to a node. The agent passes one backed by
// its informer so that a drain adds no list requests; the default asks the
// apiserver with the field selector spec.nodeName.
type PodLister interface {
	// ListPods returns the pods bound to node. It blocks until the answer
	// arrives or ctx is done.
	ListPods(ctx context.Context, node string) ([]corev1.Pod, error)
}

// Options configure a Drainer. The zero value of each field is a sane default.
type Options struct {
	// Logger receives the drainer's log. Default: discard.
	Logger *slog.Logger
	// Self is the agent's own pod, never evicted.
	Self types.NamespacedName
	// Pods lists the node's pods. Default: the apiserver, field selector
	// spec.nodeName.
	Pods PodLister
	// Metrics counts outcomes; nil counts nothing.
	Metrics *Metrics
	// Hold lets pods whose workers cooperate finish before they are
	// evicted; nil evicts every pod at once. See HoldFunc.
	Hold HoldFunc
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// CallTimeout bounds each apiserver request; the drain's deadline
	// bounds them too. Default 20s (DefaultCallTimeout).
	CallTimeout time.Duration
	// PollInterval is how often a drain checks which pods are gone.
	// Default 250ms.
	PollInterval time.Duration
	// TaintEffect is the effect of the TaintKey taint Cordon adds:
	// NoSchedule (the default) or NoExecute.
	TaintEffect corev1.TaintEffect
	// Refused, if set, is told the first time in a drain that a pod's
	// eviction is refused: by a PodDisruptionBudget (retried until the
	// cut-off) or for good (RBAC, admission). It is called from the drain's
	// goroutines and must not block.
	Refused func(pod *corev1.Pod, err error)
}

// HoldFunc tells the drain which pods to hold back. For a pod whose workers
// have been told to finish (through their sidecar), it returns a channel
// that is closed when they report done; for any other pod, nil. A held pod
// is evicted when its channel closes, or at the latest moment that still
// leaves it its grace period before the deadline, whichever comes first:
// its workers finish their task without a SIGTERM in the middle of it.
type HoldFunc func(ctx context.Context, pod *corev1.Pod) <-chan struct{}

// Drainer cordons and drains nodes. It is safe for concurrent use.
type Drainer struct {
	client kubeclient.Interface
	log    *slog.Logger
	self   types.NamespacedName
	pods   PodLister
	m      *Metrics
	hold   HoldFunc
	now    func() time.Time
	call   time.Duration
	poll   time.Duration
	effect corev1.TaintEffect
	refuse func(pod *corev1.Pod, err error)
}

// DefaultCallTimeout is how long one apiserver request may take, queueing
// included. A busy apiserver queues requests in API Priority and Fairness
// for up to a quarter of their 60 s deadline, 15 s, and answers 429 with
// Retry-After itself when that is up. A client that gives up sooner cancels
// a request that was waiting its turn and sends it again at the back of the
// queue: when a zone's nodes drain at once, every agent does that, and the
// queues fill with requests that will be canceled before they run (found
// at 300 drains at once with a 5 s timeout: over 26,000 canceled in the
// queues, most pods never asked to leave).
const DefaultCallTimeout = 20 * time.Second

// New returns a Drainer that talks to the apiserver through client.
func New(client kubeclient.Interface, opts Options) *Drainer {
	d := &Drainer{
		client: client, log: opts.Logger, self: opts.Self, pods: opts.Pods, m: opts.Metrics, hold: opts.Hold,
		now: opts.Now, call: opts.CallTimeout, poll: opts.PollInterval, effect: opts.TaintEffect,
		refuse: opts.Refused,
	}
	if d.effect == "" {
		d.effect = corev1.TaintEffectNoSchedule
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.pods == nil {
		d.pods = apiPods{client}
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.call == 0 {
		d.call = DefaultCallTimeout
	}
	if d.poll == 0 {
		d.poll = 250 * time.Millisecond
	}
	return d
}

type apiPods struct{ client kubeclient.Interface }

func (a apiPods) ListPods(ctx context.Context, node string) ([]corev1.Pod, error) {
	list, err := a.client.ListPods(ctx, metav1.NamespaceAll, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list pods on node %s: %w", node, err)
	}
	return list.Items, nil
}

// Plan lists the node's pods and returns what a drain before deadline would
// do, changing nothing. It retries transient errors until ctx is done.
func (d *Drainer) Plan(ctx context.Context, node string, deadline time.Time, policy Policy) (Plan, error) {
	var pods []corev1.Pod
	err := d.retryTransient(ctx, "list pods", func(ctx context.Context) error {
		cctx, cancel := d.callContext(ctx)
		defer cancel()
		var err error
		pods, err = d.pods.ListPods(cctx, node)
		return err
	})
	if err != nil {
		return Plan{}, err
	}
	return NewPlan(pods, d.self, deadline, policy), nil
}

// callContext bounds one apiserver request.
func (d *Drainer) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.call)
}

// retryTransient calls fn until it succeeds, fails with an error that
// retrying cannot fix, or ctx is done; it backs off between tries.
func (d *Drainer) retryTransient(ctx context.Context, what string, fn func(context.Context) error) error {
	backoff := newBackoff()
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if permanent(err) {
			return err
		}
		d.log.Debug("apiserver request failed, retrying", "what", what, "err", err)
		if !sleep(ctx, backoff.Step()) {
			return fmt.Errorf("%s: %w (last error: %w)", what, context.Cause(ctx), err)
		}
	}
}

// permanent reports errors that no retry within a drain can fix.
func permanent(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) ||
		apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) ||
		errors.Is(err, context.Canceled)
}

// newBudgetBackoff paces the retries of an eviction a budget refuses:
// 0.5 s doubling to 4 s, each up to a quarter longer at random. A budget
// frees up as replacement pods become ready, which takes seconds; when a
// whole zone drains, every node's agent retries at once, and retrying every
// few seconds with jitter keeps those refusals from crowding the apiserver.
func newBudgetBackoff() *wait.Backoff {
	return &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.25, Steps: 1 << 30, Cap: 4 * time.Second}
}

func newBackoff() *wait.Backoff {
	return &wait.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 1 << 30, Cap: 2 * time.Second}
}

// sleep waits for d or until ctx is done; it reports whether the full wait
// happened.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

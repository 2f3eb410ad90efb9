package agent

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// Sidecars is the node-local endpoint of the worker sidecars
// (*sidecar.Hub): a Notifier that also knows which pods have a sidecar.
type Sidecars interface {
	Notifier
	// Subscribed reports whether the sidecar of pod namespace/name is
	// connected.
	Subscribed(namespace, name string) bool
}

// PodUIDs finds the UID of a pod on the node; *NodePods implements it.
type PodUIDs interface {
	// PodUID returns the UID of pod namespace/name, if it is on the node.
	PodUID(namespace, name string) (types.UID, bool)
}

// Holds joins the sidecars' done reports to the drain: a pod whose sidecar
// is connected is held back until its workers report done (or the latest
// moment that still leaves it its grace period), so that they finish their
// task without a SIGTERM in the middle of it. It is the Notifier the agent
// uses, the drainer's HoldFunc (Hold) and the hub's done callback (Done).
//
// Reports are kept by pod UID: a new pod with the same name (a StatefulSet
// replica) is not released by its predecessor's report. Forget drops the
// reports of pods that left the node.
type Holds struct {
	sidecars Sidecars
	pods     PodUIDs

	mu    sync.Mutex // guards done and until
	done  map[types.UID]chan struct{}
	until time.Time // sidecars of injected pods are waited for until then; zero: the pod cache has not synced
}

var _ Notifier = (*Holds)(nil)
var _ drainer.HoldFunc = (*Holds)(nil).Hold

// NewHolds returns Holds over sidecars; pods names the pods that report.
func NewHolds(sidecars Sidecars, pods PodUIDs) *Holds {
	return &Holds{sidecars: sidecars, pods: pods, done: map[types.UID]chan struct{}{}}
}

// Reconnect is how long after the agent's pod cache has synced the
// sidecars of injected pods are waited for before their pods count as
// having none: sidecars retry at most a second apart, and are refused
// (their pods unknown) until the cache has synced, which on a busy
// apiserver can take long after the agent started.
const Reconnect = 10 * time.Second

// Synced tells Holds that the pod cache synced at now: the window in which
// sidecars of injected pods are waited for (Reconnect) starts then.
func (h *Holds) Synced(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.until.IsZero() {
		h.until = now.Add(Reconnect)
	}
}

// awaitSidecar waits, for an injected pod while the agent is young, until
// its sidecar connects; it reports whether it did.
func (h *Holds) awaitSidecar(ctx context.Context, pod *corev1.Pod) bool {
	h.mu.Lock()
	until := h.until
	h.mu.Unlock()
	if pod.Annotations[injectedAnnotation] != "true" || (!until.IsZero() && !time.Now().Before(until)) {
		return false
	}
	if until.IsZero() {
		until = time.Now().Add(Reconnect) // not synced: no drain plans before it, but be safe
	}
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if h.sidecars.Subscribed(pod.Namespace, pod.Name) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// Hold returns a channel closed when pod's workers report done, or nil when
// the pod has no connected sidecar (it is evicted at once). A pod that got
// the sidecar injected but whose sidecar is not connected yet, while the
// agent is young (Reconnect after NewHolds), is waited for until it connects
// or that window ends, or ctx is done: after an agent restart, sidecars
// reconnect within seconds, and their workers deserve the hold too.
func (h *Holds) Hold(ctx context.Context, pod *corev1.Pod) <-chan struct{} {
	if !h.sidecars.Subscribed(pod.Namespace, pod.Name) && !h.awaitSidecar(ctx, pod) {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.chanLocked(pod.UID)
}

// Done records that the workers of pod namespace/name, as it is on the node
// now, are done. A report for a pod not on the node is dropped.
func (h *Holds) Done(namespace, name string) {
	uid, ok := h.pods.PodUID(namespace, name)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := h.chanLocked(uid)
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// Undone records that the workers of pod namespace/name took their done
// report back: a later hold waits for them again.
func (h *Holds) Undone(namespace, name string) {
	uid, ok := h.pods.PodUID(namespace, name)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.done[uid]; ok {
		select {
		case <-ch:
			delete(h.done, uid) // closed: the next hold gets a fresh channel
		default:
		}
	}
}

// Forget drops the reports of the pods not in present.
func (h *Holds) Forget(present map[types.UID]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for uid := range h.done {
		if !present[uid] {
			delete(h.done, uid)
		}
	}
}

// Len returns how many pods have a report or a hold.
func (h *Holds) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.done)
}

func (h *Holds) chanLocked(uid types.UID) chan struct{} {
	ch, ok := h.done[uid]
	if !ok {
		ch = make(chan struct{})
		h.done[uid] = ch
	}
	return ch
}

// Tell tells the sidecars. A running state also forgets the done reports:
// workers back at work must report done again before a later drain evicts
// them early.
func (h *Holds) Tell(st wire.NodeState) uint64 {
	if st.Phase == wire.PhaseRunning {
		h.mu.Lock()
		h.done = map[types.UID]chan struct{}{}
		h.mu.Unlock()
	}
	return h.sidecars.Tell(st)
}

// SetPodDeadlines tells the sidecars their pods' stop times; see Notifier.
func (h *Holds) SetPodDeadlines(deadlines map[sidecar.PodRef]time.Time) {
	h.sidecars.SetPodDeadlines(deadlines)
}

// Told waits for the sidecars; see Notifier.
func (h *Holds) Told(ctx context.Context, gen uint64) (int, error) {
	return h.sidecars.Told(ctx, gen)
}

package agent

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/watcher"
)

// Sidecars is the node-local endpoint of the worker sidecars
// (*sidecar.Hub): a Notifier that also knows which pods have a sidecar.
type Sidecars interface {
	Notifier
	// Subscribed reports whether the sidecar of pod namespace/name is
	// connected.
	Subscribed(namespace, name string) bool
}

// Holds joins the sidecars' done reports to the drain: a pod whose sidecar
// is connected is held back until its workers report done (or the latest
// moment that still leaves it its grace period), so that they finish their
// task without a SIGTERM in the middle of it. It is the Notifier the agent
// uses, the drainer's HoldFunc (Hold) and the hub's done callback (Done).
type Holds struct {
	sidecars Sidecars

	mu   sync.Mutex // guards done
	done map[string]chan struct{}
}

var _ Notifier = (*Holds)(nil)
var _ drainer.HoldFunc = (*Holds)(nil).Hold

// NewHolds returns Holds over sidecars.
func NewHolds(sidecars Sidecars) *Holds {
	return &Holds{sidecars: sidecars, done: map[string]chan struct{}{}}
}

// Hold returns a channel closed when pod's workers report done, or nil when
// the pod has no connected sidecar (it is evicted at once).
func (h *Holds) Hold(pod *corev1.Pod) <-chan struct{} {
	if !h.sidecars.Subscribed(pod.Namespace, pod.Name) {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.chanLocked(pod.Namespace + "/" + pod.Name)
}

// Done records that the workers of pod namespace/name are done.
func (h *Holds) Done(namespace, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := h.chanLocked(namespace + "/" + name)
	select {
	case <-ch:
	default:
		close(ch)
	}
}

func (h *Holds) chanLocked(key string) chan struct{} {
	ch, ok := h.done[key]
	if !ok {
		ch = make(chan struct{})
		h.done[key] = ch
	}
	return ch
}

// Draining tells the sidecars.
func (h *Holds) Draining(ctx context.Context, n watcher.Notice) (int, error) {
	return h.sidecars.Draining(ctx, n)
}

// Resumed tells the sidecars and forgets the done reports: workers back at
// work must report done again before a later drain evicts them early.
func (h *Holds) Resumed(ctx context.Context, n watcher.Notice) (int, error) {
	h.mu.Lock()
	h.done = map[string]chan struct{}{}
	h.mu.Unlock()
	return h.sidecars.Resumed(ctx, n)
}

package agent

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

type fakeSidecars struct {
	mu         sync.Mutex
	subscribed map[string]bool
	told       []wire.NodeState
}

func (f *fakeSidecars) Tell(st wire.NodeState) uint64 {
	f.told = append(f.told, st)
	return uint64(len(f.told))
}
func (f *fakeSidecars) Told(context.Context, uint64) (int, error)    { return 0, nil }
func (f *fakeSidecars) SetPodDeadlines(map[sidecar.PodRef]time.Time) {}
func (f *fakeSidecars) Subscribed(ns, name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subscribed[ns+"/"+name]
}

// fakeUIDs maps namespace/name to the UID of the pod now on the node.
type fakeUIDs map[string]types.UID

func (f fakeUIDs) PodUID(ns, name string) (types.UID, bool) {
	uid, ok := f[ns+"/"+name]
	return uid, ok
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func pod(ns, name, uid string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)}}
}

func TestHolds(t *testing.T) {
	sc := &fakeSidecars{subscribed: map[string]bool{"ns/worker": true}}
	uids := fakeUIDs{"ns/worker": "u1", "ns/plain": "u2"}
	h := NewHolds(sc, uids)
	worker := pod("ns", "worker", "u1")
	plain := pod("ns", "plain", "u2")

	if h.Hold(t.Context(), plain) != nil {
		t.Error("a pod without a sidecar is held")
	}
	ch := h.Hold(t.Context(), worker)
	if ch == nil || closed(ch) {
		t.Fatal("a pod with a sidecar is not held")
	}
	h.Done("ns", "worker")
	h.Done("ns", "worker") // twice is fine
	if !closed(ch) || !closed(h.Hold(t.Context(), worker)) {
		t.Error("done did not release the pod")
	}
	h.Tell(wire.NodeState{Phase: wire.PhaseDraining})
	if !closed(h.Hold(t.Context(), worker)) {
		t.Error("a draining word forgot the done report")
	}
	h.Tell(wire.NodeState{Phase: wire.PhaseRunning})
	if len(sc.told) != 2 {
		t.Fatalf("told %d states, want 2 forwarded", len(sc.told))
	}
	if closed(h.Hold(t.Context(), worker)) {
		t.Error("a done report survived the resume")
	}
}

// A done report belongs to the pod that sent it, not to its name: the next
// pod of a StatefulSet, same name, new UID, is held until it reports itself.
// Reports of pods that left are forgotten.
func TestHoldsByUID(t *testing.T) {
	sc := &fakeSidecars{subscribed: map[string]bool{"ns/web-0": true}}
	uids := fakeUIDs{"ns/web-0": "old"}
	h := NewHolds(sc, uids)
	h.Done("ns", "web-0")
	if !closed(h.Hold(t.Context(), pod("ns", "web-0", "old"))) {
		t.Fatal("the reporting pod is not released")
	}
	uids["ns/web-0"] = "new" // replaced
	if closed(h.Hold(t.Context(), pod("ns", "web-0", "new"))) {
		t.Error("the replacement pod was released by its predecessor's report")
	}
	h.Forget(map[types.UID]bool{"new": true})
	if h.Len() != 1 {
		t.Errorf("%d entries after Forget, want only the present pod's", h.Len())
	}
	delete(uids, "ns/web-0")
	h.Done("ns", "web-0") // the pod is gone: nothing to record
	h.Forget(map[types.UID]bool{})
	if h.Len() != 0 {
		t.Errorf("%d entries kept for pods that left", h.Len())
	}
}

// After an agent restart, an injected pod whose sidecar has not reconnected
// yet is waited for (until it connects, within Reconnect), not evicted at
// once as if it had no sidecar; once the agent is older, such a pod is not
// waited for.
func TestHoldsWaitForReconnectingSidecars(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := &fakeSidecars{subscribed: map[string]bool{}}
		h := NewHolds(sc, fakeUIDs{})
		h.Synced(time.Now())
		injected := pod("ns", "w", "u1")
		injected.Annotations = map[string]string{injectedAnnotation: "true"}
		go func() {
			time.Sleep(3 * time.Second)
			sc.mu.Lock()
			sc.subscribed["ns/w"] = true
			sc.mu.Unlock()
		}()
		start := time.Now()
		if h.Hold(t.Context(), injected) == nil {
			t.Fatal("an injected pod whose sidecar reconnects within the window was not held")
		}
		if waited := time.Since(start); waited < 3*time.Second || waited >= Reconnect {
			t.Errorf("held after %v: want once the sidecar connected (3 s), within the window", waited)
		}
		if h.Hold(t.Context(), pod("ns", "plain", "u2")) != nil {
			t.Error("a pod without the sidecar is held")
		}
		time.Sleep(Reconnect)
		late := pod("ns", "late", "u3")
		late.Annotations = map[string]string{injectedAnnotation: "true"}
		start = time.Now()
		if h.Hold(t.Context(), late) != nil || time.Since(start) != 0 {
			t.Error("after the window, an injected pod without a sidecar was waited for")
		}
	})
}

// The window for reconnecting sidecars counts from when the pod cache
// synced, not from the agent's start: on a busy apiserver the first list
// can take longer than the window, and sidecars are refused until then.
func TestHoldsReconnectWindowStartsAtSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := &fakeSidecars{subscribed: map[string]bool{}}
		h := NewHolds(sc, fakeUIDs{})
		time.Sleep(30 * time.Second) // the pod cache takes 30 s to sync
		h.Synced(time.Now())
		injected := pod("ns", "w", "u1")
		injected.Annotations = map[string]string{injectedAnnotation: "true"}
		go func() {
			time.Sleep(2 * time.Second)
			sc.mu.Lock()
			sc.subscribed["ns/w"] = true
			sc.mu.Unlock()
		}()
		if h.Hold(t.Context(), injected) == nil {
			t.Fatal("an injected pod whose sidecar reconnected 2 s after the cache synced was not held")
		}
	})
}

// A done report taken back (a restarted sidecar re-sends its saved done,
// then what holds now: not done) no longer releases the pod: the next
// drain holds it again until its workers say done anew.
func TestHoldsRetractedDone(t *testing.T) {
	sc := &fakeSidecars{subscribed: map[string]bool{"ns/worker": true}}
	h := NewHolds(sc, fakeUIDs{"ns/worker": "u1"})
	worker := pod("ns", "worker", "u1")
	h.Done("ns", "worker")
	if !closed(h.Hold(t.Context(), worker)) {
		t.Fatal("done did not release the pod")
	}
	h.Undone("ns", "worker")
	ch := h.Hold(t.Context(), worker)
	if ch == nil || closed(ch) {
		t.Fatal("a retracted done report still releases the pod")
	}
	h.Done("ns", "worker")
	if !closed(ch) {
		t.Error("a fresh done report did not release the pod held after the retraction")
	}
}

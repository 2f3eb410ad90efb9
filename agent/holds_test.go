package agent

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastcall-dev/lastcall/watcher"
)

type fakeSidecars struct {
	subscribed map[string]bool
	resumed    int
}

func (f *fakeSidecars) Draining(context.Context, watcher.Notice) (int, error) { return 0, nil }
func (f *fakeSidecars) Resumed(context.Context, watcher.Notice) (int, error) {
	f.resumed++
	return 0, nil
}
func (f *fakeSidecars) Subscribed(ns, name string) bool { return f.subscribed[ns+"/"+name] }

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestHolds(t *testing.T) {
	sc := &fakeSidecars{subscribed: map[string]bool{"ns/worker": true}}
	h := NewHolds(sc)
	worker := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "worker"}}
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "plain"}}

	if h.Hold(plain) != nil {
		t.Error("a pod without a sidecar is held")
	}
	ch := h.Hold(worker)
	if ch == nil || closed(ch) {
		t.Fatal("a pod with a sidecar is not held")
	}
	h.Done("ns", "worker")
	h.Done("ns", "worker") // twice is fine
	if !closed(ch) || !closed(h.Hold(worker)) {
		t.Error("done did not release the pod")
	}
	if _, err := h.Resumed(t.Context(), watcher.Notice{}); err != nil || sc.resumed != 1 {
		t.Fatalf("Resumed: %v, forwarded %d times", err, sc.resumed)
	}
	if closed(h.Hold(worker)) {
		t.Error("a done report survived the resume")
	}
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The agent's pod and node sources for the tests that run it inside a
// synctest bubble, where client-go's informers cannot run (their resync
// loop waits on a channel made outside the bubble). They read the fake
// clientset's object tracker directly and learn of changes from a
// reactor, which also loses replies on demand: the write applies, the
// client is told it failed.

// tracked wraps a fake clientset: every write to nodes or pods goes
// through the tracker, then calls the hooks; writes whose replies are to
// be lost (lose) apply and return errLost.
type tracked struct {
	client *fake.Clientset

	mu    sync.Mutex
	hooks []func()
	lose  func(verb, resource string) bool // nil: no reply is lost
}

var errLost = errors.New("reply lost: the connection closed after the request was sent")

func newTracked(objs ...runtime.Object) *tracked {
	t := &tracked{client: fake.NewClientset(objs...)}
	react := k8stesting.ObjectReaction(t.client.Tracker())
	for _, res := range []string{"nodes", "pods"} {
		t.client.PrependReactor("*", res, func(action k8stesting.Action) (bool, runtime.Object, error) {
			switch action.GetVerb() {
			case "get", "list", "watch":
				return false, nil, nil
			}
			handled, obj, err := react(action)
			t.mu.Lock()
			hooks := append([]func(){}, t.hooks...)
			lost := err == nil && t.lose != nil && t.lose(action.GetVerb(), action.GetResource().Resource)
			t.mu.Unlock()
			for _, f := range hooks {
				f()
			}
			if lost {
				return true, nil, errLost
			}
			return handled, obj, err
		})
	}
	return t
}

func (t *tracked) onChange(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.hooks = append(t.hooks, f)
}

func (t *tracked) setLose(f func(verb, resource string) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lose = f
}

// trackedNode is a NodeSource over the tracker.
type trackedNode struct {
	t    *tracked
	name string
}

func (n trackedNode) Node() *corev1.Node {
	obj, err := n.t.client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("nodes"), "", n.name)
	if err != nil {
		return nil
	}
	return obj.(*corev1.Node)
}

func (n trackedNode) OnChange(f func()) { n.t.onChange(f) }

// trackedPods is a PodSource and PodUIDs over the tracker.
type trackedPods struct {
	t    *tracked
	node string
}

func (p trackedPods) ListPods(_ context.Context, node string) ([]corev1.Pod, error) {
	if node != p.node {
		return nil, fmt.Errorf("pods of node %s, not %s", p.node, node)
	}
	obj, err := p.t.client.Tracker().List(corev1.SchemeGroupVersion.WithResource("pods"), corev1.SchemeGroupVersion.WithKind("Pod"), "")
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, pod := range obj.(*corev1.PodList).Items {
		if pod.Spec.NodeName == node {
			out = append(out, pod)
		}
	}
	return out, nil
}

func (p trackedPods) Synced() bool      { return true }
func (p trackedPods) OnChange(f func()) { p.t.onChange(f) }
func (p trackedPods) PodUID(namespace, name string) (types.UID, bool) {
	obj, err := p.t.client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), namespace, name)
	if err != nil {
		return "", false
	}
	return obj.(*corev1.Pod).UID, true
}

package agent

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/kubeclient"
)

// NodePods is the agent's one watch on the apiserver: the pods bound to its
// node (field selector spec.nodeName), kept in an informer's cache. Drains
// read the cache instead of listing. The cache holds each pod trimmed to the
// fields the agent and the drainer read (see TrimPod): a new reader of
// another field adds it there first.
type NodePods struct {
	node     string
	informer cache.SharedIndexInformer
}

var _ drainer.PodLister = (*NodePods)(nil)

// NewNodePods returns the pod cache of node; Run starts it.
func NewNodePods(client kubeclient.Interface, node string) *NodePods {
	bound := fields.OneTermEqualSelector("spec.nodeName", node).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = bound
			return client.ListPods(ctx, metav1.NamespaceAll, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = bound
			return client.WatchPods(ctx, metav1.NamespaceAll, o)
		},
	}
	informer := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
	// SetTransform fails only once the informer has started.
	_ = informer.SetTransform(TrimPod)
	return &NodePods{node: node, informer: informer}
}

// Run keeps the cache until ctx is done. It returns an error if the first
// list cannot complete before ctx is done.
func (p *NodePods) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.informer.RunWithContext(ctx)
	}()
	defer func() { <-done }()
	if !cache.WaitForCacheSync(ctx.Done(), p.informer.HasSynced) {
		return fmt.Errorf("pods on node %s: cache never synced: %w", p.node, context.Cause(ctx))
	}
	<-ctx.Done()
	return nil
}

// Synced reports whether the first list has completed.
func (p *NodePods) Synced() bool { return p.informer.HasSynced() }

// ListPods returns the cached pods of node. It fails for another node and
// before the cache has synced.
func (p *NodePods) ListPods(_ context.Context, node string) ([]corev1.Pod, error) {
	if node != p.node {
		return nil, fmt.Errorf("pod cache is for node %s, not %s", p.node, node)
	}
	if !p.informer.HasSynced() {
		return nil, errors.New("pod cache not synced yet")
	}
	objs := p.informer.GetStore().List()
	pods := make([]corev1.Pod, 0, len(objs))
	for _, o := range objs {
		pods = append(pods, *o.(*corev1.Pod))
	}
	return pods, nil
}

// PodIP returns the IP of the pod namespace/name on the node, if it is
// there and has one.
func (p *NodePods) PodIP(namespace, name string) (string, bool) {
	obj, ok, err := p.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return "", false
	}
	ip := obj.(*corev1.Pod).Status.PodIP
	return ip, ip != ""
}

// PodUID returns the UID of the pod namespace/name on the node, if it is
// there.
func (p *NodePods) PodUID(namespace, name string) (types.UID, bool) {
	obj, ok, err := p.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return "", false
	}
	return obj.(*corev1.Pod).UID, true
}

// OnChange calls f, which must not block, whenever a pod lands on the node,
// starts being deleted, gets its IP, or leaves.
func (p *NodePods) OnChange(f func()) {
	_, _ = p.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { f() },
		UpdateFunc: func(old, cur any) {
			// A deletion starting (its end is the pod's stop time, told
			// to its sidecar) or its IP arriving; not every status change.
			o, ok1 := old.(*corev1.Pod)
			c, ok2 := cur.(*corev1.Pod)
			if !ok1 || !ok2 || (o.DeletionTimestamp == nil) != (c.DeletionTimestamp == nil) || o.Status.PodIP != c.Status.PodIP {
				f()
			}
		},
		DeleteFunc: func(any) { f() },
	})
}

// TrimPod is the pod cache's transform: it returns a copy of a *corev1.Pod
// holding only what is read from the cache, and anything else unchanged
// (the informer also passes deletion tombstones). Its readers: the drainer's
// plan (namespace, name, UID, owner references, deletion timestamp, the
// mirror-pod annotation, phase, priority, priority class, grace period),
// the sidecar holds (the injected annotation, UID), the injector check
// (the inject label, the injected annotation), the webhook (names), and the
// sidecar endpoint (pod IP). Dropped: managed fields, the
// last-applied-configuration annotation, containers, volumes and the rest
// of the spec and status, which are most of a pod's size.
func TrimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	annotations := pod.Annotations
	if _, ok := annotations[corev1.LastAppliedConfigAnnotation]; ok {
		annotations = make(map[string]string, len(pod.Annotations)-1)
		for k, v := range pod.Annotations {
			if k != corev1.LastAppliedConfigAnnotation {
				annotations[k] = v
			}
		}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			CreationTimestamp: pod.CreationTimestamp, DeletionTimestamp: pod.DeletionTimestamp,
			DeletionGracePeriodSeconds: pod.DeletionGracePeriodSeconds,
			Labels:                     pod.Labels, Annotations: annotations, OwnerReferences: pod.OwnerReferences,
		},
		Spec: corev1.PodSpec{
			NodeName: pod.Spec.NodeName, Priority: pod.Spec.Priority, PriorityClassName: pod.Spec.PriorityClassName,
			TerminationGracePeriodSeconds: pod.Spec.TerminationGracePeriodSeconds,
		},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP},
	}, nil
}

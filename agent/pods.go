package agent

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/lastcall-dev/lastcall/drainer"
)

// NodePods is the agent's one watch on the apiserver: the pods bound to its
// node (field selector spec.nodeName), kept in an informer's cache. Drains
// read the cache instead of listing.
type NodePods struct {
	node     string
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

var _ drainer.PodLister = (*NodePods)(nil)

// NewNodePods returns the pod cache of node; Run starts it.
func NewNodePods(client kubernetes.Interface, node string) *NodePods {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	return &NodePods{node: node, factory: factory, informer: factory.Core().V1().Pods().Informer()}
}

// Run keeps the cache until ctx is done. It returns an error if the first
// list cannot complete before ctx is done.
func (p *NodePods) Run(ctx context.Context) error {
	p.factory.Start(ctx.Done())
	defer p.factory.Shutdown()
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

// OnChange calls f, which must not block, whenever a pod lands on the node
// or leaves it.
func (p *NodePods) OnChange(f func()) {
	_, _ = p.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { f() },
		DeleteFunc: func(any) { f() },
	})
}

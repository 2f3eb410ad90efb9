// Package clientset adapts client-go's kubernetes.Interface to
// kubeclient.Interface: for tests that hold a clientset (the fake one of
// unit tests, an admin client), and tools that link the clientset anyway.
// The node agent does not import it.
package clientset

import (
	"context"

	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/lastcall-dev/lastcall/kubeclient"
)

// Adapter is kubeclient.Interface over a kubernetes.Interface.
type Adapter struct {
	// Clientset serves every call.
	Clientset kubernetes.Interface
}

var _ kubeclient.Interface = Adapter{}

// New returns c as a kubeclient.Interface.
func New(c kubernetes.Interface) Adapter { return Adapter{Clientset: c} }

// GetNode implements kubeclient.Interface.
func (a Adapter) GetNode(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error) {
	return a.Clientset.CoreV1().Nodes().Get(ctx, name, opts)
}

// UpdateNode implements kubeclient.Interface.
func (a Adapter) UpdateNode(ctx context.Context, node *corev1.Node, opts metav1.UpdateOptions) (*corev1.Node, error) {
	return a.Clientset.CoreV1().Nodes().Update(ctx, node, opts)
}

// PatchNode implements kubeclient.Interface.
func (a Adapter) PatchNode(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error) {
	return a.Clientset.CoreV1().Nodes().Patch(ctx, name, pt, data, opts, subresources...)
}

// ListNodes implements kubeclient.Interface.
func (a Adapter) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	return a.Clientset.CoreV1().Nodes().List(ctx, opts)
}

// WatchNodes implements kubeclient.Interface.
func (a Adapter) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return a.Clientset.CoreV1().Nodes().Watch(ctx, opts)
}

// GetPod implements kubeclient.Interface.
func (a Adapter) GetPod(ctx context.Context, namespace, name string, opts metav1.GetOptions) (*corev1.Pod, error) {
	return a.Clientset.CoreV1().Pods(namespace).Get(ctx, name, opts)
}

// ListPods implements kubeclient.Interface.
func (a Adapter) ListPods(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error) {
	return a.Clientset.CoreV1().Pods(namespace).List(ctx, opts)
}

// WatchPods implements kubeclient.Interface.
func (a Adapter) WatchPods(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error) {
	return a.Clientset.CoreV1().Pods(namespace).Watch(ctx, opts)
}

// DeletePod implements kubeclient.Interface.
func (a Adapter) DeletePod(ctx context.Context, namespace, name string, opts metav1.DeleteOptions) error {
	return a.Clientset.CoreV1().Pods(namespace).Delete(ctx, name, opts)
}

// EvictPod implements kubeclient.Interface.
func (a Adapter) EvictPod(ctx context.Context, eviction *policyv1.Eviction) error {
	return a.Clientset.PolicyV1().Evictions(eviction.Namespace).Evict(ctx, eviction)
}

// CreateSelfSubjectAccessReview implements kubeclient.Interface.
func (a Adapter) CreateSelfSubjectAccessReview(ctx context.Context, review *authv1.SelfSubjectAccessReview, opts metav1.CreateOptions) (*authv1.SelfSubjectAccessReview, error) {
	return a.Clientset.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, opts)
}

// CreateEvent implements kubeclient.Interface.
func (a Adapter) CreateEvent(ctx context.Context, event *corev1.Event) (*corev1.Event, error) {
	return a.Clientset.CoreV1().Events(event.Namespace).Create(ctx, event, metav1.CreateOptions{})
}

// UpdateEvent implements kubeclient.Interface.
func (a Adapter) UpdateEvent(ctx context.Context, event *corev1.Event) (*corev1.Event, error) {
	return a.Clientset.CoreV1().Events(event.Namespace).Update(ctx, event, metav1.UpdateOptions{})
}

// PatchEvent implements kubeclient.Interface.
func (a Adapter) PatchEvent(ctx context.Context, namespace, name string, data []byte) (*corev1.Event, error) {
	return a.Clientset.CoreV1().Events(namespace).Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
}

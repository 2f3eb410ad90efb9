// Package kubeclient is the node agent's client of the apiserver: nodes,
// pods, evictions, Events and access reviews, and nothing else.
//
// client-go's generated clientset (k8s.io/client-go/kubernetes) registers
// every API group of Kubernetes in its scheme when the program starts, and
// links the typed client of each: a 70 MB binary of which about 20 MiB is
// resident on every node although the agent uses three groups. Client is
// client-go's REST client with a scheme of those groups alone. Package
// clientset adapts a kubernetes.Interface (the fake clientset of unit tests,
// a test's admin client) to Interface.
package kubeclient

import (
	"context"
	"fmt"

	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
)

// Interface is what the node agent and the drainer ask of the apiserver.
// Every method takes the context of the call; options are those of the
// Kubernetes API.
type Interface interface {
	// GetNode reads a Node.
	GetNode(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error)
	// UpdateNode replaces a Node (optimistic concurrency: its resourceVersion).
	UpdateNode(ctx context.Context, node *corev1.Node, opts metav1.UpdateOptions) (*corev1.Node, error)
	// PatchNode patches a Node or, with subresource "status", its status.
	PatchNode(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error)
	// ListNodes lists Nodes.
	ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	// WatchNodes watches Nodes.
	WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	// GetPod reads a Pod.
	GetPod(ctx context.Context, namespace, name string, opts metav1.GetOptions) (*corev1.Pod, error)
	// ListPods lists Pods of namespace (metav1.NamespaceAll: of all).
	ListPods(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error)
	// WatchPods watches Pods of namespace (metav1.NamespaceAll: of all).
	WatchPods(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error)
	// DeletePod deletes a Pod.
	DeletePod(ctx context.Context, namespace, name string, opts metav1.DeleteOptions) error
	// EvictPod asks the Eviction API to evict the pod eviction names.
	EvictPod(ctx context.Context, eviction *policyv1.Eviction) error
	// CreateSelfSubjectAccessReview asks what the caller may do.
	CreateSelfSubjectAccessReview(ctx context.Context, review *authv1.SelfSubjectAccessReview, opts metav1.CreateOptions) (*authv1.SelfSubjectAccessReview, error)
	// CreateEvent creates an Event in its namespace.
	CreateEvent(ctx context.Context, event *corev1.Event) (*corev1.Event, error)
	// UpdateEvent replaces an Event.
	UpdateEvent(ctx context.Context, event *corev1.Event) (*corev1.Event, error)
	// PatchEvent patches an Event (a strategic merge patch).
	PatchEvent(ctx context.Context, namespace, name string, data []byte) (*corev1.Event, error)
}

// NewScheme returns a scheme of the API groups Interface uses: core/v1,
// policy/v1 and authorization.k8s.io/v1, with the meta/v1 options.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, policyv1.AddToScheme, authv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err) // static: only a programming error fails here
		}
	}
	return s
}

// Client is Interface over client-go's REST client.
type Client struct {
	rest   rest.Interface
	params runtime.ParameterCodec
}

var _ Interface = (*Client)(nil)

// NewForConfig returns a Client for cfg (its host, credentials, rate limit
// and user agent; the API path and serializer are set here). Unless cfg
// names a content type, it speaks protobuf, as the kubelet and the
// controller manager do: smaller to decode than JSON for the agent, and an
// encoding the apiserver already makes of each watch event for them.
func NewForConfig(cfg *rest.Config) (*Client, error) {
	s := NewScheme()
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(s).WithoutConversion()
	if c.ContentType == "" {
		c.ContentType = runtime.ContentTypeProtobuf
		c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	}
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("apiserver client: %w", err)
	}
	return &Client{rest: rc, params: runtime.NewParameterCodec(s)}, nil
}

// GetNode implements Interface.
func (c *Client) GetNode(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error) {
	out := &corev1.Node{}
	err := c.rest.Get().Resource("nodes").Name(name).VersionedParams(&opts, c.params).Do(ctx).Into(out)
	return out, err
}

// UpdateNode implements Interface.
func (c *Client) UpdateNode(ctx context.Context, node *corev1.Node, opts metav1.UpdateOptions) (*corev1.Node, error) {
	out := &corev1.Node{}
	err := c.rest.Put().Resource("nodes").Name(node.Name).VersionedParams(&opts, c.params).Body(node).Do(ctx).Into(out)
	return out, err
}

// PatchNode implements Interface.
func (c *Client) PatchNode(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error) {
	out := &corev1.Node{}
	err := c.rest.Patch(pt).Resource("nodes").Name(name).SubResource(subresources...).
		VersionedParams(&opts, c.params).Body(data).Do(ctx).Into(out)
	return out, err
}

// ListNodes implements Interface.
func (c *Client) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	out := &corev1.NodeList{}
	err := c.rest.Get().Resource("nodes").VersionedParams(&opts, c.params).Do(ctx).Into(out)
	return out, err
}

// WatchNodes implements Interface.
func (c *Client) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.rest.Get().Resource("nodes").VersionedParams(&opts, c.params).Watch(ctx)
}

// GetPod implements Interface.
func (c *Client) GetPod(ctx context.Context, namespace, name string, opts metav1.GetOptions) (*corev1.Pod, error) {
	out := &corev1.Pod{}
	err := c.rest.Get().Namespace(namespace).Resource("pods").Name(name).VersionedParams(&opts, c.params).Do(ctx).Into(out)
	return out, err
}

// ListPods implements Interface.
func (c *Client) ListPods(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error) {
	out := &corev1.PodList{}
	err := c.rest.Get().Namespace(namespace).Resource("pods").VersionedParams(&opts, c.params).Do(ctx).Into(out)
	return out, err
}

// WatchPods implements Interface.
func (c *Client) WatchPods(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.rest.Get().Namespace(namespace).Resource("pods").VersionedParams(&opts, c.params).Watch(ctx)
}

// DeletePod implements Interface.
func (c *Client) DeletePod(ctx context.Context, namespace, name string, opts metav1.DeleteOptions) error {
	return c.rest.Delete().Namespace(namespace).Resource("pods").Name(name).Body(&opts).Do(ctx).Error()
}

// EvictPod implements Interface: POST the Eviction to the pod's eviction
// subresource (policy/v1).
func (c *Client) EvictPod(ctx context.Context, eviction *policyv1.Eviction) error {
	e := eviction.DeepCopy()
	e.APIVersion, e.Kind = policyv1.SchemeGroupVersion.String(), "Eviction"
	return c.rest.Post().Namespace(e.Namespace).Resource("pods").Name(e.Name).SubResource("eviction").Body(e).Do(ctx).Error()
}

// CreateSelfSubjectAccessReview implements Interface.
func (c *Client) CreateSelfSubjectAccessReview(ctx context.Context, review *authv1.SelfSubjectAccessReview, opts metav1.CreateOptions) (*authv1.SelfSubjectAccessReview, error) {
	out := &authv1.SelfSubjectAccessReview{}
	r := review.DeepCopy()
	r.APIVersion, r.Kind = authv1.SchemeGroupVersion.String(), "SelfSubjectAccessReview"
	err := c.rest.Post().AbsPath("/apis", authv1.GroupName, "v1", "selfsubjectaccessreviews").
		VersionedParams(&opts, c.params).Body(r).Do(ctx).Into(out)
	return out, err
}

// CreateEvent implements Interface.
func (c *Client) CreateEvent(ctx context.Context, event *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := c.rest.Post().Namespace(event.Namespace).Resource("events").Body(event).Do(ctx).Into(out)
	return out, err
}

// UpdateEvent implements Interface.
func (c *Client) UpdateEvent(ctx context.Context, event *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := c.rest.Put().Namespace(event.Namespace).Resource("events").Name(event.Name).Body(event).Do(ctx).Into(out)
	return out, err
}

// PatchEvent implements Interface.
func (c *Client) PatchEvent(ctx context.Context, namespace, name string, data []byte) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := c.rest.Patch(types.StrategicMergePatchType).Namespace(namespace).Resource("events").Name(name).Body(data).Do(ctx).Into(out)
	return out, err
}

// EventSink returns a sink for record.EventBroadcaster that writes Events
// through c, each call bounded by ctx.
func EventSink(ctx context.Context, c Interface) record.EventSink { return sink{ctx: ctx, c: c} }

type sink struct {
	ctx context.Context
	c   Interface
}

func (s sink) Create(e *corev1.Event) (*corev1.Event, error) { return s.c.CreateEvent(s.ctx, e) }
func (s sink) Update(e *corev1.Event) (*corev1.Event, error) { return s.c.UpdateEvent(s.ctx, e) }
func (s sink) Patch(old *corev1.Event, data []byte) (*corev1.Event, error) {
	return s.c.PatchEvent(s.ctx, old.Namespace, old.Name, data)
}

// NewForConfigOrDie is NewForConfig for a config known to be valid (tests,
// a config NewForConfig accepted before); it panics on an error.
func NewForConfigOrDie(cfg *rest.Config) *Client {
	c, err := NewForConfig(cfg)
	if err != nil {
		panic(err)
	}
	return c
}

package kubetest

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// KubeletOptions configure a Kubelet.
type KubeletOptions struct {
	// FinishAtOnce ends every graceful deletion as soon as it is seen, like a
	// kubelet whose containers exit on SIGTERM at once.
	FinishAtOnce bool
	// FirstIP is the first pod IP handed out; the next pods get the
	// following addresses. Default 127.1.0.1 (loopback, so that tests may
	// listen on it).
	FirstIP netip.Addr
	// HostIP is the node address written into pod status. Default 127.0.0.1.
	HostIP string
	// Logger receives the kubelet's log; default discards.
	Logger *slog.Logger
}

// KubeletEvent is one thing the Kubelet did, in the order it did it.
type KubeletEvent struct {
	// Time is when it happened.
	Time time.Time
	// Pod is namespace/name.
	Pod string
	// What is "running", "terminating" or "deleted".
	What string
	// Grace is the deletion grace period in seconds, for "terminating".
	Grace int64
}

// Kubelet plays the node's kubelet for the pods bound to one node.
type Kubelet struct {
	client kubernetes.Interface
	node   string
	opts   KubeletOptions

	mu      sync.Mutex           // guards the fields below
	nextIP  netip.Addr           // next pod IP to hand out
	ips     map[types.UID]string // pod IPs handed out
	release map[string]chan struct{}
	ending  map[types.UID]bool // graceful deletions being finished
	events  []KubeletEvent
}

// NewKubelet returns a Kubelet for node; Run starts it.
func NewKubelet(client kubernetes.Interface, node string, opts KubeletOptions) *Kubelet {
	if !opts.FirstIP.IsValid() {
		opts.FirstIP = netip.MustParseAddr("127.1.0.1")
	}
	if opts.HostIP == "" {
		opts.HostIP = "127.0.0.1"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Kubelet{
		client: client, node: node, opts: opts,
		nextIP:  opts.FirstIP,
		ips:     map[types.UID]string{},
		release: map[string]chan struct{}{},
		ending:  map[types.UID]bool{},
	}
}

// StartKubelet runs a Kubelet for node until the test ends.
func (e *Env) StartKubelet(ctx context.Context, node string, opts KubeletOptions) (k *Kubelet, stop func()) {
	k = NewKubelet(e.Client, node, opts)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = k.Run(ctx)
	}()
	return k, func() { cancel(); <-done }
}

// Run watches the pods bound to the node (field selector spec.nodeName) and
// acts on them until ctx is done. It returns ctx's error.
func (k *Kubelet) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.node).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTyped[string]()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer queue.ShutDown()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	cache.WaitForCacheSync(ctx.Done(), inf.HasSynced)
	for range 4 {
		wg.Go(func() {
			for {
				key, quit := queue.Get()
				if quit {
					return
				}
				obj, exists, err := inf.GetStore().GetByKey(key)
				if err == nil && exists {
					k.sync(ctx, &wg, obj.(*corev1.Pod))
				}
				queue.Done(key)
			}
		})
	}
	<-ctx.Done()
	return ctx.Err()
}

// Finish ends the graceful deletion of namespace/name now, as if its
// containers had exited; before the deletion starts, it makes the kubelet
// finish that pod at once when it does.
func (k *Kubelet) Finish(namespace, name string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ch := k.releaseLocked(namespace + "/" + name)
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// Events returns what the kubelet did so far, in order.
func (k *Kubelet) Events() []KubeletEvent {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]KubeletEvent(nil), k.events...)
}

func (k *Kubelet) releaseLocked(key string) chan struct{} {
	ch, ok := k.release[key]
	if !ok {
		ch = make(chan struct{})
		k.release[key] = ch
	}
	return ch
}

func (k *Kubelet) record(pod *corev1.Pod, what string, grace int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.events = append(k.events, KubeletEvent{Time: time.Now(), Pod: pod.Namespace + "/" + pod.Name, What: what, Grace: grace})
}

func (k *Kubelet) sync(ctx context.Context, wg *sync.WaitGroup, pod *corev1.Pod) {
	log := k.opts.Logger.With("pod", pod.Namespace+"/"+pod.Name)
	if pod.DeletionTimestamp != nil {
		k.mu.Lock()
		started := k.ending[pod.UID]
		k.ending[pod.UID] = true
		release := k.releaseLocked(pod.Namespace + "/" + pod.Name)
		k.mu.Unlock()
		if started {
			return
		}
		var grace int64
		if pod.DeletionGracePeriodSeconds != nil {
			grace = *pod.DeletionGracePeriodSeconds
		}
		k.record(pod, "terminating", grace)
		wg.Go(func() { k.finish(ctx, log, pod, grace, release) })
		return
	}
	if pod.Status.Phase == corev1.PodRunning || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return
	}
	k.mu.Lock()
	ip, ok := k.ips[pod.UID]
	if !ok {
		ip = k.nextIP.String()
		k.nextIP = k.nextIP.Next()
		k.ips[pod.UID] = ip
	}
	k.mu.Unlock()
	now := metav1.Now()
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP = k.opts.HostIP
	p.Status.HostIPs = []corev1.HostIP{{IP: k.opts.HostIP}}
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	p.Status.StartTime = &now
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	p.Status.ContainerStatuses = nil
	for _, c := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: ptrTo(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	if _, err := k.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			log.Warn("kubelet status update failed", "err", err)
		}
		return
	}
	k.record(pod, "running", 0)
}

// finish waits for the grace period, or for Finish, then deletes the pod
// with grace 0, as the kubelet does once the containers are gone.
func (k *Kubelet) finish(ctx context.Context, log *slog.Logger, pod *corev1.Pod, grace int64, release <-chan struct{}) {
	if !k.opts.FinishAtOnce {
		timer := time.NewTimer(time.Duration(grace) * time.Second)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return
		case <-release:
		case <-timer.C:
		}
	}
	opts := metav1.DeleteOptions{GracePeriodSeconds: ptrTo[int64](0), Preconditions: &metav1.Preconditions{UID: &pod.UID}}
	for {
		err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts)
		if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			k.record(pod, "deleted", 0)
			return
		}
		log.Warn("kubelet final delete failed", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// String describes the kubelet for test logs.
func (k *Kubelet) String() string { return fmt.Sprintf("kubelet(%s)", k.node) }

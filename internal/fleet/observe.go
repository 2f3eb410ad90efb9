package fleet

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// drainTaint is the taint the agent puts on a node it drains.
const drainTaint = "lastcall.dev/draining"

// NodeRecord is what the observer saw of one preempted node. Times are when
// the observer's watch delivered the change, so they include the watch's
// own delay.
type NodeRecord struct {
	Node  string
	Cloud Cloud
	// Notice is when the metadata server started announcing the end;
	// Deadline is when the node stops.
	Notice, Deadline time.Time
	// Cordoned is when the node was first seen unschedulable or tainted.
	Cordoned time.Time
	// Emptied is when the last pod a drain moves (not a DaemonSet's) was
	// last seen leaving; zero while one is there.
	Emptied time.Time
	// LeftAtDeadline are the pods a drain moves still on the node at its
	// deadline, deleting or not.
	LeftAtDeadline []string
	// Landed counts pods bound to the node after its notice;
	// LandedAfterCordon those bound after it was seen cordoned.
	Landed, LandedAfterCordon int
}

// Observer watches every node and pod as a cluster admin and keeps a
// NodeRecord per preempted node.
type Observer struct {
	factory informers.SharedInformerFactory
	pods    cache.SharedIndexInformer
	cancel  context.CancelFunc

	mu      sync.Mutex
	records map[string]*NodeRecord
	onNode  map[string]map[string]bool // node → pods a drain moves
	running int                        // pods Running
	timers  []*time.Timer
}

// NewObserver returns an observer; Start starts its watches.
func NewObserver(client kubernetes.Interface) *Observer {
	o := &Observer{
		factory: informers.NewSharedInformerFactory(client, 0),
		records: map[string]*NodeRecord{},
		onNode:  map[string]map[string]bool{},
	}
	o.pods = o.factory.Core().V1().Pods().Informer()
	_ = o.pods.AddIndexers(cache.Indexers{nodeIndex: func(obj any) ([]string, error) {
		return []string{obj.(*corev1.Pod).Spec.NodeName}, nil
	}})
	_, _ = o.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { o.pod(nil, obj.(*corev1.Pod)) },
		UpdateFunc: func(old, obj any) { o.pod(old.(*corev1.Pod), obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				o.podGone(p)
			}
		},
	})
	_, _ = o.factory.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { o.node(obj.(*corev1.Node)) },
	})
	return o
}

// Start starts the watches, until Stop, and waits for their first lists.
func (o *Observer) Start(ctx context.Context) error {
	watchCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	o.cancel = cancel
	o.factory.Start(watchCtx.Done())
	for typ, ok := range o.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("observer: %v cache never synced", typ)
		}
	}
	return nil
}

// Stop ends the watches and the deadline timers.
func (o *Observer) Stop() {
	o.mu.Lock()
	for _, t := range o.timers {
		t.Stop()
	}
	o.mu.Unlock()
	if o.cancel != nil {
		o.cancel()
	}
	o.factory.Shutdown()
}

// moved reports whether a drain moves pod: it is not a DaemonSet's, not a
// mirror pod, and has not finished.
func moved(p *corev1.Pod) bool {
	if _, mirror := p.Annotations[corev1.MirrorPodAnnotationKey]; mirror {
		return false
	}
	if ref := metav1.GetControllerOf(p); ref != nil && ref.Kind == "DaemonSet" {
		return false
	}
	return p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

func running(p *corev1.Pod) bool {
	return p != nil && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil
}

func (o *Observer) pod(old, p *corev1.Pod) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if running(p) && !running(old) {
		o.running++
	} else if !running(p) && running(old) {
		o.running--
	}
	node := p.Spec.NodeName
	if node == "" {
		return
	}
	if (old == nil || old.Spec.NodeName == "") && moved(p) {
		if r := o.records[node]; r != nil {
			r.Landed++
			if !r.Cordoned.IsZero() {
				r.LandedAfterCordon++
			}
		}
	}
	key := p.Namespace + "/" + p.Name
	set := o.onNode[node]
	if set == nil {
		set = map[string]bool{}
		o.onNode[node] = set
	}
	if moved(p) {
		set[key] = true
		if r := o.records[node]; r != nil {
			r.Emptied = time.Time{}
		}
	} else {
		o.left(node, key, now)
	}
}

func (o *Observer) podGone(p *corev1.Pod) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if running(p) {
		o.running--
	}
	o.left(p.Spec.NodeName, p.Namespace+"/"+p.Name, now)
}

// left takes key off node's pods; the caller holds mu.
func (o *Observer) left(node, key string, now time.Time) {
	set := o.onNode[node]
	if !set[key] {
		return
	}
	delete(set, key)
	if r := o.records[node]; r != nil && len(set) == 0 {
		r.Emptied = now
	}
}

func (o *Observer) node(n *corev1.Node) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	r := o.records[n.Name]
	if r == nil || !r.Cordoned.IsZero() {
		return
	}
	cordoned := n.Spec.Unschedulable
	for _, t := range n.Spec.Taints {
		cordoned = cordoned || t.Key == drainTaint
	}
	if cordoned {
		r.Cordoned = now
	}
}

// nodeIndex indexes the observer's pods by node.
const nodeIndex = "node"

// ListPods returns the pods bound to node from the observer's watch: a
// drainer.PodLister for the baseline drain, which then adds no list
// requests, as an agent's own watch does not.
func (o *Observer) ListPods(_ context.Context, node string) ([]corev1.Pod, error) {
	objs, err := o.pods.GetIndexer().ByIndex(nodeIndex, node)
	if err != nil {
		return nil, err
	}
	out := make([]corev1.Pod, 0, len(objs))
	for _, obj := range objs {
		out = append(out, *obj.(*corev1.Pod))
	}
	return out, nil
}

// Running is the number of pods seen Running.
func (o *Observer) Running() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.running
}

// Pods returns how many pods a drain would move are on node.
func (o *Observer) Pods(node string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.onNode[node])
}

// Preempted starts the record of node, noticed now, ending at deadline;
// at the deadline the observer notes the pods still there.
func (o *Observer) Preempted(node string, cloud Cloud, notice, deadline time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := &NodeRecord{Node: node, Cloud: cloud, Notice: notice, Deadline: deadline}
	o.records[node] = r
	if len(o.onNode[node]) == 0 {
		r.Emptied = notice
	}
	o.timers = append(o.timers, time.AfterFunc(time.Until(deadline), func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		for key := range o.onNode[node] {
			r.LeftAtDeadline = append(r.LeftAtDeadline, key)
		}
	}))
}

// Records returns a copy of every preempted node's record.
func (o *Observer) Records() []NodeRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]NodeRecord, 0, len(o.records))
	for _, r := range o.records {
		c := *r
		c.LeftAtDeadline = append([]string(nil), r.LeftAtDeadline...)
		out = append(out, c)
	}
	return out
}

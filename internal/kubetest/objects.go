package kubetest

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// CreateNode creates a Ready, untainted node with the given labels.
func (e *Env) CreateNode(ctx context.Context, name string, labels map[string]string) (*corev1.Node, error) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	node, err := e.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	node.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}
	node, err = e.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("mark node %s ready: %w", name, err)
	}
	// Admission tainted the new node not-ready; the node lifecycle
	// controller, which does not run here, would lift that once it is Ready.
	node.Spec.Taints = nil
	node, err = e.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("untaint node %s: %w", name, err)
	}
	return node, nil
}

// PodOption changes a pod built by NewPod.
type PodOption func(*corev1.Pod)

// NewPod returns a pod bound to node (spec.nodeName set, as the scheduler
// would), with one container and the given options applied.
func NewPod(namespace, name, node string, opts ...PodOption) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": "worker"}},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "worker", Image: "worker:test"}},
		},
	}
	for _, o := range opts {
		o(pod)
	}
	return pod
}

// WithLabels sets labels on the pod, replacing the default app=worker.
func WithLabels(labels map[string]string) PodOption {
	return func(p *corev1.Pod) { p.Labels = labels }
}

// WithGrace sets the pod's terminationGracePeriodSeconds.
func WithGrace(seconds int64) PodOption {
	return func(p *corev1.Pod) { p.Spec.TerminationGracePeriodSeconds = &seconds }
}

// WithPriorityClass sets the pod's priority class name. The built-in classes
// system-cluster-critical and system-node-critical are admitted only in
// kube-system or for pods the apiserver trusts; the admission plugin that
// checks this resolves the priority value as the real cluster does.
func WithPriorityClass(name string) PodOption {
	return func(p *corev1.Pod) { p.Spec.PriorityClassName = name }
}

// WithOwner sets a controller owner reference.
func WithOwner(kind, name string, uid types.UID) PodOption {
	return func(p *corev1.Pod) {
		apiVersion := "apps/v1"
		if kind == "Job" {
			apiVersion = "batch/v1"
		}
		p.OwnerReferences = append(p.OwnerReferences, metav1.OwnerReference{
			APIVersion: apiVersion, Kind: kind, Name: name, UID: uid, Controller: ptrTo(true),
		})
	}
}

// WithAnnotations adds annotations to the pod.
func WithAnnotations(a map[string]string) PodOption {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		for k, v := range a {
			p.Annotations[k] = v
		}
	}
}

// CreatePods creates the pods in order and returns them as stored.
func (e *Env) CreatePods(ctx context.Context, pods ...*corev1.Pod) ([]*corev1.Pod, error) {
	out := make([]*corev1.Pod, 0, len(pods))
	for _, p := range pods {
		got, err := e.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		out = append(out, got)
	}
	return out, nil
}

// CreateReplicaSet creates a ReplicaSet that claims pods labelled app=name,
// so that the disruption controller can find the scale of a budget's pods.
// No ReplicaSet controller runs: the set never creates or deletes pods.
func (e *Env) CreateReplicaSet(ctx context.Context, namespace, name string, replicas int32) (*appsv1.ReplicaSet, error) {
	labels := map[string]string{"app": name}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "worker", Image: "worker:test"}}},
			},
		},
	}
	rs, err := e.Client.AppsV1().ReplicaSets(namespace).Create(ctx, rs, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create replicaset %s/%s: %w", namespace, name, err)
	}
	return rs, nil
}

// CreateDaemonSet creates a DaemonSet object (no controller runs it) so that
// pods can name it as their owner.
func (e *Env) CreateDaemonSet(ctx context.Context, namespace, name string) (*appsv1.DaemonSet, error) {
	labels := map[string]string{"app": name}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "agent:test"}}},
			},
		},
	}
	ds, err := e.Client.AppsV1().DaemonSets(namespace).Create(ctx, ds, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create daemonset %s/%s: %w", namespace, name, err)
	}
	return ds, nil
}

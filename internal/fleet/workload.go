package fleet

import (
	"context"
	"fmt"
	"strconv"

	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Deployments is how many Deployments the workload has; their replicas
// scale with the fleet so that each node runs about 17 of their pods.
const Deployments = 170

// DaemonSets are the node agents every node runs (the lastcall agent's
// pod among them); drains leave their pods.
var DaemonSets = []struct{ Namespace, Name string }{
	{"lastcall", "lastcall"}, {"monitoring", "node-exporter"}, {"logging", "fluent-bit"},
}

// Workload describes the pods of a fleet of n nodes.
type Workload struct {
	// Nodes is the fleet's size.
	Nodes int
}

// Replicas is each Deployment's replica count: about 17 pods per node in
// all.
func (w Workload) Replicas() int32 { return int32(max(2, (w.Nodes*17+Deployments-1)/Deployments)) }

// CriticalReplicas is the system-critical Deployment's replica count.
func (w Workload) CriticalReplicas() int32 { return int32(max(2, w.Nodes/50)) }

// Pods is the number of pods the workload runs.
func (w Workload) Pods() int {
	return Deployments*int(w.Replicas()) + int(w.CriticalReplicas()) + len(DaemonSets)*w.Nodes
}

// NodeName is the name of node i.
func NodeName(i int) string { return fmt.Sprintf("spot-%04d", i) }

// CreateNodes creates the fleet's nodes, which KWOK then keeps Ready.
func CreateNodes(ctx context.Context, client kubernetes.Interface, n int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	zones := []string{"a", "b", "c"}
	for i := range n {
		g.Go(func() error {
			name := NodeName(i)
			capacity := corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("32"),
				corev1.ResourceMemory: resource.MustParse("128Gi"),
				corev1.ResourcePods:   resource.MustParse("110"),
			}
			_, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{
					Name:        name,
					Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
					Labels: map[string]string{
						"kubernetes.io/hostname":      name,
						"kubernetes.io/os":            "linux",
						"topology.kubernetes.io/zone": "zone-" + zones[i%len(zones)],
						"lastcall.dev/preemptible":    "true",
						"type":                        "kwok",
					},
				},
				Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
			}, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("create node %s: %w", name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// container is every simulated pod's one container.
func container(name string) []corev1.Container {
	return []corev1.Container{{
		Name: name, Image: "fleet.invalid/" + name + ":1",
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi"),
		}},
	}}
}

// Create creates the workload: the DaemonSets, a system-critical
// Deployment with a budget, and the application Deployments, three in four
// of them with a PodDisruptionBudget (10 % or 25 % unavailable, or 50 %
// available). Their pods take 1 to 20 s to stop.
func (w Workload) Create(ctx context.Context, client kubernetes.Interface) error {
	namespaces := map[string]bool{"kube-system": true}
	for _, ds := range DaemonSets {
		namespaces[ds.Namespace] = true
	}
	for i := range 10 {
		namespaces["team-"+strconv.Itoa(i)] = true
	}
	for ns := range namespaces {
		if ns == "kube-system" {
			continue
		}
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	for _, ds := range DaemonSets {
		labels := map[string]string{"app": ds.Name}
		if _, err := client.AppsV1().DaemonSets(ds.Namespace).Create(ctx, &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Name: ds.Name},
			Spec: appsv1.DaemonSetSpec{
				Selector:       &metav1.LabelSelector{MatchLabels: labels},
				UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						Containers:  container(ds.Name),
						Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					},
				},
			},
		}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create daemonset %s: %w", ds.Name, err)
		}
	}
	one := intstr.FromInt32(1)
	if err := deployment(ctx, client, "kube-system", "coredns", w.CriticalReplicas(), "system-cluster-critical", "5s", &one, nil); err != nil {
		return err
	}
	stops := []string{"1s", "3s", "5s", "10s", "20s"}
	for i := range Deployments {
		var maxUnavailable, minAvailable *intstr.IntOrString
		switch i % 4 {
		case 0:
			v := intstr.FromString("10%")
			maxUnavailable = &v
		case 1:
			v := intstr.FromString("25%")
			maxUnavailable = &v
		case 2:
			v := intstr.FromString("50%")
			minAvailable = &v
		}
		ns := "team-" + strconv.Itoa(i%10)
		if err := deployment(ctx, client, ns, fmt.Sprintf("app-%03d", i), w.Replicas(), "", stops[i%len(stops)], maxUnavailable, minAvailable); err != nil {
			return err
		}
	}
	return nil
}

// deployment creates a Deployment and, when one of the bounds is set, its
// PodDisruptionBudget.
func deployment(ctx context.Context, client kubernetes.Interface, ns, name string, replicas int32, priorityClass, stopAfter string, maxUnavailable, minAvailable *intstr.IntOrString) error {
	labels := map[string]string{"app": name}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      labels,
					Annotations: map[string]string{"fleet.lastcall.dev/stop-after": stopAfter},
				},
				Spec: corev1.PodSpec{Containers: container("app"), PriorityClassName: priorityClass},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create deployment %s/%s: %w", ns, name, err)
	}
	if maxUnavailable == nil && minAvailable == nil {
		return nil
	}
	_, err := client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policyv1.PodDisruptionBudgetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels}, MaxUnavailable: maxUnavailable, MinAvailable: minAvailable,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create budget %s/%s: %w", ns, name, err)
	}
	return nil
}

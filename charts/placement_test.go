package charts

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// TestPlacement runs Kubernetes' own DaemonSet controller on the chart's
// DaemonSet: it must create an agent pod for every Linux node that carries
// any one of the default spot labels, tainted or cordoned or not, and on no
// other (a Windows spot node included, whose taint the agent tolerates);
// the apiserver must admit those pods (system-node-critical outside
// kube-system, hostNetwork, the security contexts).
func TestPlacement(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "placement")
	if err != nil {
		t.Fatal(err)
	}
	release := e.UniqueName("lc-placement")
	objs := render(t, release, ns, nil, nil)
	newApplier(t, e).create(t, objs)
	ds := find(t, objs, "DaemonSet")

	type node struct {
		labels map[string]string
		taints []corev1.Taint
		cordon bool
		want   bool
	}
	nodes := map[string]node{
		"gke-spot":        {labels: map[string]string{"cloud.google.com/gke-spot": "true"}, want: true},
		"gke-preemptible": {labels: map[string]string{"cloud.google.com/gke-preemptible": "true"}, want: true},
		"eks-spot":        {labels: map[string]string{"eks.amazonaws.com/capacityType": "SPOT"}, want: true},
		"karpenter-spot":  {labels: map[string]string{"karpenter.sh/capacity-type": "spot"}, want: true},
		"aks-spot": {
			labels: map[string]string{"kubernetes.azure.com/scalesetpriority": "spot"},
			taints: []corev1.Taint{{Key: "kubernetes.azure.com/scalesetpriority", Value: "spot", Effect: corev1.TaintEffectNoSchedule}},
			want:   true,
		},
		"labelled-draining": {
			labels: map[string]string{"lastcall.dev/preemptible": "true"},
			taints: []corev1.Taint{{Key: "lastcall.dev/draining", Value: "gce", Effect: corev1.TaintEffectNoSchedule}},
			cordon: true,
			want:   true,
		},
		"gke-spot-tainted": {
			labels: map[string]string{"cloud.google.com/gke-spot": "true"},
			taints: []corev1.Taint{{Key: "cloud.google.com/gke-spot", Value: "true", Effect: corev1.TaintEffectNoSchedule}},
			want:   true,
		},
		"on-demand":     {labels: map[string]string{"cloud.google.com/gke-nodepool": "default"}},
		"eks-on-demand": {labels: map[string]string{"eks.amazonaws.com/capacityType": "ON_DEMAND"}},
		"not-spot":      {labels: map[string]string{"cloud.google.com/gke-spot": "false"}},
		// An AKS Windows spot pool: spot label, spot taint (tolerated), but
		// the agent is a Linux binary.
		"aks-windows-spot": {
			labels: map[string]string{"kubernetes.azure.com/scalesetpriority": "spot", "kubernetes.io/os": "windows"},
			taints: []corev1.Taint{
				{Key: "kubernetes.azure.com/scalesetpriority", Value: "spot", Effect: corev1.TaintEffectNoSchedule},
				{Key: "os", Value: "windows", Effect: corev1.TaintEffectNoSchedule},
			},
		},
	}
	names := map[string]string{} // node name -> case
	for name, n := range nodes {
		nodeName := e.UniqueName("place-" + name)
		names[nodeName] = name
		// The kubelet labels every node with its OS.
		nodeLabels := map[string]string{"kubernetes.io/os": "linux"}
		maps.Copy(nodeLabels, n.labels)
		created, err := e.CreateNode(ctx, nodeName, nodeLabels)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Client.CoreV1().Nodes().Delete(context.Background(), nodeName, metav1.DeleteOptions{}) })
		if len(n.taints) > 0 || n.cordon {
			created.Spec.Taints = n.taints
			created.Spec.Unschedulable = n.cordon
			if _, err := e.Client.CoreV1().Nodes().Update(ctx, created, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}

	startControllers(t, e, "daemonset-controller")

	// Wait (bounded) until the controller has placed a pod on every node it
	// wants; then no pod may be on any other of this test's nodes.
	selector := labels.SelectorFromSet(map[string]string{"app.kubernetes.io/instance": release}).String()
	var pods []corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := e.Client.AppsV1().DaemonSets(ns).Get(ctx, ds.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		pods = list.Items
		st := got.Status
		return st.ObservedGeneration >= got.Generation && st.DesiredNumberScheduled > 0 &&
			st.CurrentNumberScheduled == st.DesiredNumberScheduled && int(st.DesiredNumberScheduled) == len(pods), nil
	})
	if err != nil {
		t.Fatalf("the DaemonSet controller did not settle: %v (pods: %d)", err, len(pods))
	}
	placed := map[string]bool{}
	for _, p := range pods {
		if name, ours := names[daemonPodNode(p)]; ours {
			placed[name] = true
		}
		if p.Spec.Priority == nil || *p.Spec.Priority != 2000001000 {
			t.Errorf("pod %s: priority %v, want system-node-critical's 2000001000", p.Name, p.Spec.Priority)
		}
	}
	for name, n := range nodes {
		if placed[name] != n.want {
			t.Errorf("node %s (labels %v, taints %v, cordoned %v): agent placed %v, want %v",
				name, n.labels, n.taints, n.cordon, placed[name], n.want)
		}
	}
	var got []string
	for name := range placed {
		got = append(got, name)
	}
	slices.Sort(got)
	t.Logf("agents placed on %v", got)
}

// daemonPodNode returns the node a DaemonSet pod is made for: the DaemonSet
// controller leaves binding to the scheduler (none runs here) and pins the
// pod with a required node affinity on the field metadata.name.
func daemonPodNode(p corev1.Pod) string {
	if p.Spec.NodeName != "" {
		return p.Spec.NodeName
	}
	aff := p.Spec.Affinity
	if aff == nil || aff.NodeAffinity == nil || aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, f := range term.MatchFields {
			if f.Key == "metadata.name" && f.Operator == corev1.NodeSelectorOpIn && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}

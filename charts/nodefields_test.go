package charts

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
)

// TestNodeFieldsTable tries, with the agent's pod-bound token on its own
// node and the chart's default values, every node field and action an agent
// token might touch, against the real apiserver and the chart's node
// policy; it logs the table of what was allowed and refused. Only
// lastcall's own fields may change: the drainer's real cordon, uncordon and
// condition go through; an operator's cordon, taint and label survive.
func TestNodeFieldsTable(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "fields")
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, e.UniqueName("lc-fields"), ns, nil, nil)
	var policyObjs []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding":
			if o.GetLabels()["app.kubernetes.io/component"] != "injector" {
				policyObjs = append(policyObjs, o)
			}
		}
	}
	newApplier(t, e).create(t, policyObjs)
	sa := find(t, objs, "ServiceAccount").GetName()
	node, other := e.UniqueName("spot-f"), e.UniqueName("spot-g")
	for _, n := range []string{node, other} {
		if _, err := e.CreateNode(ctx, n, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Client.CoreV1().Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
	}
	agentPod := kubetest.NewPod(ns, "agent", node)
	agentPod.Spec.ServiceAccountName = sa
	pods, err := e.CreatePods(ctx, agentPod)
	if err != nil {
		t.Fatal(err)
	}
	agent := tokenClient(t, e, ns, sa, &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pods[0].Name, UID: pods[0].UID}, node)
	// The policy takes effect once loaded: wait for its first refusal.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		err := labelNode(ctx, agent, other, drainer.ExcludeLBLabel, "true", false)
		return apierrors.IsForbidden(err), nil
	})
	if err != nil {
		t.Fatalf("the node policy never refused an update of another node")
	}

	// reset puts the node back as the kubelet and an operator left it: no
	// cordon, lastcall's fields absent, a Ready condition and capacity,
	// then applies setup as the cluster admin.
	reset := func(t *testing.T, setup func(*corev1.Node)) {
		t.Helper()
		n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Spec.Unschedulable = false
		n.Spec.Taints = []corev1.Taint{{Key: "team", Value: "ml", Effect: corev1.TaintEffectNoSchedule}}
		delete(n.Labels, drainer.ExcludeLBLabel)
		delete(n.Annotations, drainer.RecordAnnotation)
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		if setup != nil {
			setup(n)
		}
		if _, err := e.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		n, err = e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Capacity = corev1.ResourceList{"cpu": resource.MustParse("4"), "pods": resource.MustParse("110")}
		n.Status.Allocatable = n.Status.Capacity
		n.Status.Images = []corev1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1 << 20}}
		n.Status.RuntimeHandlers = nil
		n.Status.Phase = ""
		if _, err := e.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update := func(change func(*corev1.Node)) error {
		n, err := agent.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		change(n)
		_, err = agent.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	}
	// The agent may patch nodes/status (its condition), not update it: the
	// status cases are patches, as a stolen token would send them.
	patchStatus := func(patch string) error {
		_, err := agent.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
		return err
	}
	d := drainer.New(clientset.New(agent), drainer.Options{})
	lastcallCordon := func(n *corev1.Node) {
		// What drainer.Cordon leaves, as the admin would have it stored.
		n.Spec.Unschedulable = true
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: drainer.TaintKey, Value: "gce.preemption", Effect: corev1.TaintEffectNoSchedule})
		n.Labels[drainer.ExcludeLBLabel] = "true"
		n.Annotations[drainer.RecordAnnotation] = `{"unschedulable":true,"taint":true,"label":true,"source":"gce","time":"2026-12-04T00:00:00Z"}`
	}
	operatorCordon := func(n *corev1.Node) { n.Spec.Unschedulable = true }
	cases := []struct {
		name  string
		setup func(*corev1.Node)
		try   func() error
		allow bool
	}{
		{"drainer.Cordon (unschedulable, taint, label, record)", nil, func() error { _, err := d.Cordon(ctx, node, "gce", "preemption"); return err }, true},
		{"drainer.Uncordon of lastcall's cordon", lastcallCordon, func() error { _, err := d.Uncordon(ctx, node); return err }, true},
		{"drainer.Cordon of an operator's cordon, then Uncordon: the operator's cordon stays", operatorCordon, func() error {
			if _, err := d.Cordon(ctx, node, "gce", "preemption"); err != nil {
				return err
			}
			if _, err := d.Uncordon(ctx, node); err != nil {
				return err
			}
			n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err == nil && !n.Spec.Unschedulable {
				err = fmt.Errorf("the operator's cordon was undone")
			}
			return err
		}, true},
		{"PreemptionImminent condition (status patch)", nil, func() error { return patchCondition(ctx, agent, node) }, true},
		{"drainer.OutOfService (chart: agent.taint.outOfService off)", lastcallCordon, func() error { _, err := d.OutOfService(ctx, node); return err }, false},
		{"spec.unschedulable=true without lastcall's record", nil, func() error { return update(func(n *corev1.Node) { n.Spec.Unschedulable = true }) }, false},
		{"uncordon an operator's cordon", operatorCordon, func() error { return update(func(n *corev1.Node) { n.Spec.Unschedulable = false }) }, false},
		{"uncordon an operator's cordon under a forged record", operatorCordon, func() error {
			return update(func(n *corev1.Node) {
				n.Annotations[drainer.RecordAnnotation] = `{"unschedulable":true,"source":"gce","time":"2026-12-04T00:00:00Z"}`
			})
		}, false},
		{"uncordon an operator's cordon while lastcall's record (no unschedulable claim) is on", func(n *corev1.Node) {
			lastcallCordon(n)
			n.Annotations[drainer.RecordAnnotation] = `{"taint":true,"label":true,"source":"gce","time":"2026-12-04T00:00:00Z"}`
		}, func() error { return update(func(n *corev1.Node) { n.Spec.Unschedulable = false }) }, false},
		{"remove an operator's out-of-service taint", func(n *corev1.Node) {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: drainer.OutOfServiceKey, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute})
		}, func() error {
			return update(func(n *corev1.Node) { n.Spec.Taints = n.Spec.Taints[:1] })
		}, false},
		{"add out-of-service:NoExecute (chart: off)", nil, func() error {
			return update(func(n *corev1.Node) {
				n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: drainer.OutOfServiceKey, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute})
				n.Annotations[drainer.RecordAnnotation] = `{"outOfService":true,"source":"gce","time":"2026-12-04T00:00:00Z"}`
			})
		}, false},
		{"its own taint with NoExecute (chart: NoSchedule)", nil, func() error {
			return update(func(n *corev1.Node) {
				n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: drainer.TaintKey, Value: "gce.preemption", Effect: corev1.TaintEffectNoExecute})
			})
		}, false},
		{"remove an operator's taint", nil, func() error { return update(func(n *corev1.Node) { n.Spec.Taints = nil }) }, false},
		{"remove an operator's exclude-from-load-balancers label", func(n *corev1.Node) { n.Labels[drainer.ExcludeLBLabel] = "true" }, func() error {
			return update(func(n *corev1.Node) { delete(n.Labels, drainer.ExcludeLBLabel) })
		}, false},
		{"exclude-from-load-balancers label without lastcall's record", nil, func() error {
			return update(func(n *corev1.Node) { n.Labels[drainer.ExcludeLBLabel] = "true" })
		}, false},
		{"another label", nil, func() error { return update(func(n *corev1.Node) { n.Labels["team"] = "attacker" }) }, false},
		{"another annotation", nil, func() error { return update(func(n *corev1.Node) { n.Annotations["x"] = "y" }) }, false},
		{"a 200 KiB record annotation", nil, func() error {
			return update(func(n *corev1.Node) {
				n.Annotations[drainer.RecordAnnotation] = `{"source":"` + strings.Repeat("x", 200<<10) + `"}`
			})
		}, false},
		{"spec.providerID", nil, func() error { return update(func(n *corev1.Node) { n.Spec.ProviderID = "gce://evil" }) }, false},
		{"status.capacity nvidia.com/gpu: 64", nil, func() error {
			return patchStatus(`{"status":{"capacity":{"nvidia.com/gpu":"64"}}}`)
		}, false},
		{"status.allocatable nvidia.com/gpu: 64", nil, func() error {
			return patchStatus(`{"status":{"allocatable":{"nvidia.com/gpu":"64"}}}`)
		}, false},
		{"status.allocatable cpu: 4 -> 400", nil, func() error {
			return patchStatus(`{"status":{"allocatable":{"cpu":"400"}}}`)
		}, false},
		{"status.images", nil, func() error {
			return patchStatus(`{"status":{"images":[{"names":["evil:1"],"sizeBytes":1}]}}`)
		}, false},
		{"status.runtimeHandlers", nil, func() error {
			return patchStatus(`{"status":{"runtimeHandlers":[{"name":"evil"}]}}`)
		}, false},
		{"status.phase", nil, func() error {
			return patchStatus(`{"status":{"phase":"Terminated"}}`)
		}, false},
		{"status: the Ready condition", nil, func() error {
			return patchStatus(`{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Attacker"}]}}`)
		}, false},
		{"another node: drainer.Cordon", nil, func() error { _, err := d.Cordon(ctx, other, "gce", "preemption"); return err }, false},
	}
	var table []string
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reset(t, tc.setup)
			err := tc.try()
			got := "allowed"
			if err != nil {
				got = "refused"
			}
			table = append(table, fmt.Sprintf("| %s | %s |", tc.name, got))
			switch {
			case tc.allow && err != nil:
				t.Errorf("refused: %v; want allowed", err)
			case !tc.allow && err == nil:
				t.Error("allowed; want refused")
			case !tc.allow && (!apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "lastcall:")):
				t.Errorf("error %v; want 403 Forbidden with one of the policy's messages", err)
			}
		})
	}
	t.Logf("an agent token on its own node, chart defaults:\n| field / action | result |\n|---|---|\n%s", strings.Join(table, "\n"))
}

package fleet

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
)

// TestObserverRecords drives the observer's bookkeeping (a fake clientset:
// only the observer's own logic is under test): cordon seen by taint, a
// DaemonSet pod that does not keep the node from being empty, a pod
// landing after the cordon, and the pods left at the deadline.
func TestObserverRecords(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	client := fake.NewClientset()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(name string, ds bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}
		if ds {
			yes := true
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "DaemonSet", Name: "ds", Controller: &yes}}
		}
		return p
	}
	for _, p := range []*corev1.Pod{pod("app", false), pod("ds", true)} {
		if _, err := client.CoreV1().Pods("ns").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	o := NewObserver(client)
	if err := o.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer o.Stop()
	waitFor := func(what string, cond func(NodeRecord) bool) {
		t.Helper()
		err := wait.PollUntilContextCancel(ctx, 10*time.Millisecond, true, func(context.Context) (bool, error) {
			rs := o.Records()
			return len(rs) == 1 && cond(rs[0]), nil
		})
		if err != nil {
			t.Fatalf("%s: %v; record %+v", what, err, o.Records())
		}
	}
	if got := o.Running(); got != 2 {
		t.Fatalf("running %d, want 2", got)
	}
	notice := time.Now()
	o.Preempted("n1", GCE, notice, notice.Add(500*time.Millisecond))
	node.Spec.Taints = []corev1.Taint{{Key: drainTaint, Effect: corev1.TaintEffectNoSchedule}}
	if _, err := client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("cordon seen", func(r NodeRecord) bool { return !r.Cordoned.IsZero() })
	if err := client.CoreV1().Pods("ns").Delete(ctx, "app", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("emptied (the DaemonSet pod stays)", func(r NodeRecord) bool { return !r.Emptied.IsZero() })
	late := pod("late", false)
	late.Spec.NodeName = ""
	if _, err := client.CoreV1().Pods("ns").Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	late.Spec.NodeName = "n1"
	if _, err := client.CoreV1().Pods("ns").Update(ctx, late, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("landing after the cordon", func(r NodeRecord) bool {
		return r.Landed == 1 && r.LandedAfterCordon == 1 && r.Emptied.IsZero()
	})
	waitFor("left at the deadline", func(r NodeRecord) bool {
		return len(r.LeftAtDeadline) == 1 && r.LeftAtDeadline[0] == "ns/late"
	})
}

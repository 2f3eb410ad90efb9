package agent

import (
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/lastcall-dev/lastcall/drainer"
)

// fatPod is a pod as the apiserver sends it: managed fields, a
// last-applied-configuration, containers with env, probes and resources,
// volumes and container statuses.
func fatPod() *corev1.Pod {
	prio, grace := int32(2000001000), int64(45)
	deleted := metav1.NewTime(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	ctrl := true
	var containers []corev1.Container
	for i := range 3 {
		c := corev1.Container{Name: "c" + string(rune('a'+i)), Image: "registry.example/worker:v1", Command: []string{"/worker", "--queue", "jobs"}}
		for j := range 20 {
			c.Env = append(c.Env, corev1.EnvVar{Name: "VAR_" + string(rune('A'+j)), Value: "some value that takes room"})
		}
		containers = append(containers, c)
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "worker-0", Namespace: "jobs", UID: "uid-0", ResourceVersion: "42",
			DeletionTimestamp: &deleted,
			Labels:            map[string]string{injectLabel: "enabled", "app": "worker"},
			Annotations: map[string]string{
				injectedAnnotation:                 "true",
				corev1.MirrorPodAnnotationKey:      "",
				corev1.LastAppliedConfigAnnotation: `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"worker-0"}}`,
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "ds", UID: "ds-uid", Controller: &ctrl}},
			ManagedFields: []metav1.ManagedFieldsEntry{{
				Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
				FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{}}}`)},
			}},
		},
		Spec: corev1.PodSpec{
			NodeName: "node-a", Priority: &prio, PriorityClassName: "system-node-critical",
			TerminationGracePeriodSeconds: &grace, Containers: containers,
			Volumes: []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.0.0.7",
			ContainerStatuses: []corev1.ContainerStatus{{Name: "ca", Ready: true, Image: "registry.example/worker:v1"}},
		},
	}
}

// TestTrimPod: the cache's transform keeps every field a reader of the
// cache reads (the drainer's tier, grace, skip reasons and end of
// eviction; the holds' and injector check's label and annotation; the
// sidecar endpoint's pod IP) and drops the rest, which is most of a pod.
func TestTrimPod(t *testing.T) {
	full := fatPod()
	obj, err := TrimPod(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	trim := obj.(*corev1.Pod)
	if drainer.TierOf(trim) != drainer.TierOf(full) {
		t.Errorf("tier %v, want %v", drainer.TierOf(trim), drainer.TierOf(full))
	}
	plan := drainer.Plan{Deadline: time.Date(2026, 3, 1, 12, 2, 0, 0, time.UTC)}
	if got, want := plan.LatestEviction(trim), plan.LatestEviction(full); !got.Equal(want) {
		t.Errorf("latest eviction %v, want %v", got, want)
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"name", trim.Name, full.Name}, {"namespace", trim.Namespace, full.Namespace}, {"uid", trim.UID, full.UID},
		{"labels", trim.Labels, full.Labels}, {"owner references", trim.OwnerReferences, full.OwnerReferences},
		{"deletion timestamp", trim.DeletionTimestamp, full.DeletionTimestamp},
		{"node", trim.Spec.NodeName, full.Spec.NodeName}, {"priority", trim.Spec.Priority, full.Spec.Priority},
		{"priority class", trim.Spec.PriorityClassName, full.Spec.PriorityClassName},
		{"grace", trim.Spec.TerminationGracePeriodSeconds, full.Spec.TerminationGracePeriodSeconds},
		{"phase", trim.Status.Phase, full.Status.Phase}, {"pod IP", trim.Status.PodIP, full.Status.PodIP},
		{"injected annotation", trim.Annotations[injectedAnnotation], "true"},
	} {
		if !equality.Semantic.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if _, ok := trim.Annotations[corev1.MirrorPodAnnotationKey]; !ok {
		t.Error("mirror-pod annotation dropped")
	}
	if _, ok := trim.Annotations[corev1.LastAppliedConfigAnnotation]; ok {
		t.Error("last-applied-configuration kept")
	}
	if _, ok := full.Annotations[corev1.LastAppliedConfigAnnotation]; !ok {
		t.Error("the original pod's annotations were changed")
	}
	if trim.ManagedFields != nil || trim.Spec.Containers != nil || trim.Spec.Volumes != nil || trim.Status.ContainerStatuses != nil {
		t.Errorf("kept what no reader reads: %+v", trim)
	}
	fullJSON, _ := json.Marshal(full)
	trimJSON, _ := json.Marshal(trim)
	t.Logf("pod JSON %d bytes, trimmed %d", len(fullJSON), len(trimJSON))
	if len(trimJSON)*3 > len(fullJSON) {
		t.Errorf("trimmed pod %d bytes of %d", len(trimJSON), len(fullJSON))
	}

	tomb := cache.DeletedFinalStateUnknown{Key: "jobs/worker-0", Obj: full}
	if got, err := TrimPod(tomb); err != nil || got != any(tomb) {
		t.Errorf("tombstone: %v, %v; want it unchanged", got, err)
	}
}

package injector

import (
	"io"
	"log/slog"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The guard acts for the agent's user only: a review naming anyone else
// (the apiserver never sends one, since the chart's matchConditions select
// the agent; anything else that reaches the port may) is allowed without
// a read, so the port answers no question about where pods run.
func TestEvictionGuardOnlyForItsUser(t *testing.T) {
	const agent = "system:serviceaccount:lastcall:lastcall"
	client := fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "work", Name: "w"}, Spec: corev1.PodSpec{NodeName: "node-b"},
	})
	reads := 0
	client.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		reads++
		return false, nil, nil
	})
	g := NewEvictionGuard(client, agent, slog.New(slog.NewTextHandler(io.Discard, nil)))
	review := func(user, node string) *admissionv1.AdmissionResponse {
		return g.review(t.Context(), &admissionv1.AdmissionRequest{
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, SubResource: "eviction",
			Operation: admissionv1.Create, Namespace: "work", Name: "w",
			UserInfo: authnv1.UserInfo{Username: user, Extra: map[string]authnv1.ExtraValue{NodeNameExtra: {node}}},
		})
	}
	for _, user := range []string{"system:serviceaccount:work:curious", "admin", ""} {
		if r := review(user, "node-a"); !r.Allowed {
			t.Errorf("user %q: refused %v, want allowed", user, r.Result)
		}
	}
	if reads != 0 {
		t.Errorf("%d pod reads for reviews of other users, want none", reads)
	}
	if r := review(agent, "node-a"); r.Allowed || r.Result.Code != 403 {
		t.Errorf("the agent on node-a evicting a pod of node-b: %+v, want 403", r)
	}
	if r := review(agent, "node-b"); !r.Allowed {
		t.Errorf("the agent on node-b evicting its own pod: %+v, want allowed", r.Result)
	}
	if reads != 2 {
		t.Errorf("%d pod reads for the agent's two reviews, want 2", reads)
	}
}

package kubeclient_test

import (
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient"
)

var env *kubetest.Env

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, &env)) }

// Every call of Interface against a real apiserver: the narrow scheme
// encodes and decodes what the agent sends and reads, in protobuf, and the
// apiserver's refusals come back as the errors apierrors recognises.
func TestClient(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	cfg := rest.CopyConfig(e.Config)
	answers := &contentTypes{seen: map[string]int{}}
	cfg.Wrap(answers.wrap)
	c, err := kubeclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Everything the apiserver answered, objects, lists, watch events
		// and refusals alike, came in protobuf.
		answers.mu.Lock()
		defer answers.mu.Unlock()
		for ct, n := range answers.seen {
			if !strings.HasPrefix(ct, "application/vnd.kubernetes.protobuf") {
				t.Errorf("%d answers in %q, want protobuf (all: %v)", n, ct, answers.seen)
			}
		}
		if len(answers.seen) == 0 {
			t.Error("no answers seen")
		}
	}()
	node := e.UniqueName("node")
	if _, err := e.CreateNode(ctx, node, nil); err != nil {
		t.Fatal(err)
	}
	only := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", node).String()}
	nodes, err := c.ListNodes(ctx, only)
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("ListNodes = %v, %v; want %s alone", nodes, err, node)
	}
	only.ResourceVersion = nodes.ResourceVersion
	w, err := c.WatchNodes(ctx, only)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	n, err := c.GetNode(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Spec.Unschedulable = true
	if _, err := c.UpdateNode(ctx, n, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Fatalf("UpdateNode (dry run): %v", err)
	}
	if got, err := c.UpdateNode(ctx, n, metav1.UpdateOptions{}); err != nil || !got.Spec.Unschedulable {
		t.Fatalf("UpdateNode = %v, %v", got, err)
	}
	if _, err := c.UpdateNode(ctx, n, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Errorf("UpdateNode with a stale resourceVersion: %v, want a conflict", err)
	}
	patch := []byte(`{"status":{"conditions":[{"type":"PreemptionImminent","status":"True","reason":"Test","message":"m"}]}}`)
	got, err := c.PatchNode(ctx, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil || len(got.Status.Conditions) == 0 {
		t.Fatalf("PatchNode status = %v, %v", got, err)
	}
	select {
	case ev := <-w.ResultChan():
		if ev.Type != watch.Modified || ev.Object.(*corev1.Node).Name != node {
			t.Errorf("watch: %s %T, want the node modified", ev.Type, ev.Object)
		}
	case <-time.After(10 * time.Second):
		t.Error("the node's watch saw no change")
	}

	ns, err := e.CreateNamespace(ctx, "kubeclient")
	if err != nil {
		t.Fatal(err)
	}
	pods, err := e.CreatePods(ctx, kubetest.NewPod(ns, "a", node), kubetest.NewPod(ns, "b", node))
	if err != nil {
		t.Fatal(err)
	}
	bound := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()}
	if list, err := c.ListPods(ctx, metav1.NamespaceAll, bound); err != nil || len(list.Items) != 2 {
		t.Fatalf("ListPods = %v, %v; want a and b", list, err)
	}
	pw, err := c.WatchPods(ctx, metav1.NamespaceAll, bound)
	if err != nil {
		t.Fatal(err)
	}
	pw.Stop()
	if _, err := c.GetPod(ctx, ns, "none", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("GetPod of no pod: %v, want not found", err)
	}
	grace := int64(7)
	err = c.EvictPod(ctx, &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Namespace: ns, Name: "a"},
		DeleteOptions: &metav1.DeleteOptions{GracePeriodSeconds: &grace, Preconditions: &metav1.Preconditions{UID: &pods[0].UID}},
	})
	if err != nil {
		t.Fatalf("EvictPod: %v", err)
	}
	if p, err := c.GetPod(ctx, ns, "a", metav1.GetOptions{}); err != nil || p.DeletionTimestamp == nil || *p.DeletionGracePeriodSeconds != grace {
		t.Errorf("evicted pod: %v, %v; want it terminating with grace %d", p, err, grace)
	}
	other := types.UID("not-b")
	err = c.DeletePod(ctx, ns, "b", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &other}})
	if !apierrors.IsConflict(err) {
		t.Errorf("DeletePod with another UID: %v, want a conflict", err)
	}
	if err := c.DeletePod(ctx, ns, "b", metav1.DeleteOptions{GracePeriodSeconds: &grace, Preconditions: &metav1.Preconditions{UID: &pods[1].UID}}); err != nil {
		t.Errorf("DeletePod: %v", err)
	}

	review, err := c.CreateSelfSubjectAccessReview(ctx, &authv1.SelfSubjectAccessReview{Spec: authv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authv1.ResourceAttributes{Verb: "create", Group: "policy", Resource: "pods", Subresource: "eviction"},
	}}, metav1.CreateOptions{})
	if err != nil || !review.Status.Allowed {
		t.Errorf("SelfSubjectAccessReview = %+v, %v; want allowed to a cluster admin", review.Status, err)
	}

	sink := kubeclient.EventSink(ctx, c)
	ev, err := sink.Create(&corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: "default", Name: node + ".test"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: node},
		Reason:         "Test", Message: "one", Type: corev1.EventTypeNormal, Count: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	ev.Message = "two"
	if ev, err = sink.Update(ev); err != nil || ev.Message != "two" {
		t.Fatalf("Update = %v, %v", ev, err)
	}
	if ev, err = sink.Patch(ev, []byte(`{"count":3}`)); err != nil || ev.Count != 3 {
		t.Errorf("Patch = %v, %v", ev, err)
	}
}

// contentTypes counts the content types of the apiserver's answers.
type contentTypes struct {
	mu   sync.Mutex
	seen map[string]int
}

func (c *contentTypes) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(r)
		if err == nil {
			c.mu.Lock()
			c.seen[resp.Header.Get("Content-Type")]++
			c.mu.Unlock()
		}
		return resp, err
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

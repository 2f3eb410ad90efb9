package charts

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authnv1 "k8s.io/api/authentication/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/injector"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
)

// TestEvictionGuard shows the chart's eviction guard at work on the real
// apiserver, with a real pod-bound token: the agent on node A may evict
// pods bound to node A only; other identities are not affected. The guard
// is the injector's handler, served on loopback with the injector's own
// certificates; its webhook entry is the chart's, pointed at it.
func TestEvictionGuard(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "guard")
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, e.UniqueName("lc-guard"), ns, []string{"testdata/injector.yaml"}, nil)
	// The agent's ServiceAccount and RBAC, as the chart renders them.
	sa := ""
	var agentObjs []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding":
			if o.GetLabels()["app.kubernetes.io/component"] == "injector" {
				continue
			}
			if o.GetKind() == "ServiceAccount" {
				sa = o.GetName()
			}
			agentObjs = append(agentObjs, o)
		}
	}
	newApplier(t, e).create(t, agentObjs)
	var whc *admissionregistrationv1.MutatingWebhookConfiguration
	for _, o := range objs {
		if o.GetKind() == "MutatingWebhookConfiguration" {
			whc = into[admissionregistrationv1.MutatingWebhookConfiguration](t, o)
		}
	}
	guardAt := -1
	for i, w := range whc.Webhooks {
		if w.Name == "eviction-guard.lastcall.dev" {
			guardAt = i
		}
	}
	if guardAt < 0 {
		t.Fatal("the injector variant renders no eviction guard")
	}

	// The guard, over TLS on loopback, reading pods as cluster admin.
	certs, err := injector.EnsureCerts(ctx, e.Client, ns, "guard-tls", []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certs.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           injector.NewEvictionGuard(e.Client, "system:serviceaccount:"+ns+":"+sa, slog.New(slog.NewTextHandler(io.Discard, nil))),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	guard := whc.Webhooks[guardAt]
	url := "https://" + ln.Addr().String() + "/evict"
	guard.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: certs.CACert}
	fail := admissionregistrationv1.Fail
	guard.FailurePolicy = &fail // a test must not pass because the guard was skipped
	name := e.UniqueName("lc-guard")
	api := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := api.Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Webhooks: []admissionregistrationv1.MutatingWebhook{guard},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Delete(context.Background(), name, metav1.DeleteOptions{}) })

	nodeA, nodeB := e.UniqueName("spot-a"), e.UniqueName("spot-b")
	for _, n := range []string{nodeA, nodeB} {
		if _, err := e.CreateNode(ctx, n, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Client.CoreV1().Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
	}
	agentPod := kubetest.NewPod(ns, "agent", nodeA)
	agentPod.Spec.ServiceAccountName = sa
	pods, err := e.CreatePods(ctx, agentPod,
		kubetest.NewPod(ns, "worker-a", nodeA), kubetest.NewPod(ns, "worker-b", nodeB), kubetest.NewPod(ns, "worker-c", nodeB))
	if err != nil {
		t.Fatal(err)
	}
	agentClient := tokenClient(t, e, ns, sa, &authnv1.BoundObjectReference{
		Kind: "Pod", APIVersion: "v1", Name: pods[0].Name, UID: pods[0].UID,
	}, nodeA)

	deny := "lastcall: the agent on node " + nodeA + " may evict only pods bound to it, not " + ns + "/worker-b"
	// Webhook configurations take effect once the apiserver has loaded
	// them: wait (bounded) for the first refusal.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		err := evict(ctx, agentClient, ns, "worker-b")
		return err != nil && strings.Contains(err.Error(), deny), nil
	})
	if err != nil {
		t.Fatalf("the guard never refused the eviction of a pod on node B: %v", evict(ctx, agentClient, ns, "worker-b"))
	}
	if err := evict(ctx, agentClient, ns, "worker-b"); !apierrors.IsForbidden(err) {
		t.Errorf("refusal %v: want 403 Forbidden (the agent does not retry it)", err)
	}
	if err := evict(ctx, agentClient, ns, "worker-a"); err != nil {
		t.Errorf("eviction of a pod on its own node: %v", err)
	}
	unbound := tokenClient(t, e, ns, sa, nil, "")
	if err := evict(ctx, unbound, ns, "worker-c"); err == nil || !strings.Contains(err.Error(), "token names no node") {
		t.Errorf("eviction with a token bound to no pod: %v, want refused", err)
	}
	if err := evict(ctx, e.Client, ns, "worker-c"); err != nil {
		t.Errorf("cluster admin's eviction on node B: %v", err)
	}
}

func evict(ctx context.Context, c kubernetes.Interface, ns, name string) error {
	return c.PolicyV1().Evictions(ns).Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
}

// TestEvictionGuardDown installs the chart's eviction guard as rendered by
// default (its failurePolicy included) with nothing answering at its
// address, as when every injector replica is down: the agent's evictions
// are refused, on its own node and on others, never let through unchecked;
// the cluster admin's evictions are not sent to the guard at all; and the
// agent's drain still empties its own node, deleting the pods at the
// cut-off under the pod-restriction policy, which needs no injector.
func TestEvictionGuardDown(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "guard-down")
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, e.UniqueName("lc-down"), ns, nil, nil)
	sa := ""
	var agentObjs []*unstructured.Unstructured
	var whc *admissionregistrationv1.MutatingWebhookConfiguration
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding":
			if o.GetLabels()["app.kubernetes.io/component"] == "injector" {
				continue
			}
			if o.GetKind() == "ServiceAccount" {
				sa = o.GetName()
			}
			agentObjs = append(agentObjs, o)
		case "MutatingWebhookConfiguration":
			whc = into[admissionregistrationv1.MutatingWebhookConfiguration](t, o)
		}
	}
	if whc == nil {
		t.Fatal("the default install renders no MutatingWebhookConfiguration: the injector and its guard are off")
	}
	newApplier(t, e).create(t, agentObjs)
	var guard *admissionregistrationv1.MutatingWebhook
	for i, w := range whc.Webhooks {
		if w.Name == "eviction-guard.lastcall.dev" {
			guard = &whc.Webhooks[i]
		}
	}
	if guard == nil {
		t.Fatal("the default install renders no eviction guard")
	}
	// Nothing listens at the guard's address: a port taken and closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + ln.Addr().String() + "/evict"
	ln.Close()
	guard.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url}
	name := e.UniqueName("lc-down")
	api := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := api.Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Webhooks: []admissionregistrationv1.MutatingWebhook{*guard},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Delete(context.Background(), name, metav1.DeleteOptions{}) })

	nodeA, nodeB := e.UniqueName("spot-a"), e.UniqueName("spot-b")
	for _, n := range []string{nodeA, nodeB} {
		if _, err := e.CreateNode(ctx, n, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Client.CoreV1().Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
	}
	agentPod := kubetest.NewPod(ns, "agent", nodeA)
	agentPod.Spec.ServiceAccountName = sa
	pods, err := e.CreatePods(ctx, agentPod,
		kubetest.NewPod(ns, "worker-a", nodeA), kubetest.NewPod(ns, "worker-b", nodeB), kubetest.NewPod(ns, "worker-c", nodeB))
	if err != nil {
		t.Fatal(err)
	}
	agentClient := tokenClient(t, e, ns, sa, &authnv1.BoundObjectReference{
		Kind: "Pod", APIVersion: "v1", Name: pods[0].Name, UID: pods[0].UID,
	}, nodeA)

	// Once the configuration is loaded, the agent's evictions fail at the
	// guard (500: failed calling webhook), on node B too.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		err := evict(ctx, agentClient, ns, "worker-b")
		return err != nil && strings.Contains(err.Error(), "eviction-guard.lastcall.dev"), nil
	})
	if err != nil {
		t.Fatalf("with the guard down, the agent's eviction of a pod on node B: %v, want refused at the guard", evict(ctx, agentClient, ns, "worker-b"))
	}
	if err := evict(ctx, agentClient, ns, "worker-b"); !apierrors.IsInternalError(err) {
		t.Errorf("with the guard down: %v, want 500 (the drainer retries it as a budget's refusal)", err)
	}
	if err := evict(ctx, agentClient, ns, "worker-a"); err == nil {
		t.Error("with the guard down, an agent's eviction on its own node went through unchecked")
	}
	if err := evict(ctx, e.Client, ns, "worker-c"); err != nil {
		t.Errorf("the cluster admin's eviction with the guard down: %v, want it not sent to the guard", err)
	}

	// The drain: evictions refused until the cut-off, then deleted.
	d := drainer.New(clientset.New(agentClient), drainer.Options{Self: types.NamespacedName{Namespace: ns, Name: "agent"}, PollInterval: 100 * time.Millisecond})
	start := time.Now()
	rep, err := d.Drain(ctx, nodeA, start.Add(8*time.Second), drainer.Policy{OnBlocked: drainer.Delete, BlockedCutoff: 5 * time.Second, Reserve: time.Second, CriticalWindow: time.Second})
	if err != nil {
		t.Fatalf("drain with the guard down: %v", err)
	}
	var outcome []string
	for _, p := range rep.Pods {
		outcome = append(outcome, fmt.Sprintf("%s %s after %.1fs", p.Pod, p.Outcome, p.At.Sub(start).Seconds()))
	}
	t.Logf("drain with the guard down: %v", outcome)
	if len(rep.Pods) != 1 || rep.Pods[0].Pod != ns+"/worker-a" || rep.Pods[0].Outcome != drainer.Deleted {
		t.Errorf("drain report %v, want worker-a deleted at the cut-off", outcome)
	}
	if _, err := e.Client.CoreV1().Pods(ns).Get(ctx, "worker-b", metav1.GetOptions{}); err != nil {
		t.Errorf("worker-b on node B: %v, want it untouched", err)
	}
}

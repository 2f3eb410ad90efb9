package charts

import (
	"context"
	"crypto/tls"
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
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/lastcall-dev/lastcall/injector"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
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
		Handler:           injector.NewEvictionGuard(e.Client, slog.New(slog.NewTextHandler(io.Discard, nil))),
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

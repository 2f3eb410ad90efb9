package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// env is the control plane the apiserver tests share; nil under -short.
var env *kubetest.Env

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, &env)) }

func getenv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--image=img:1", "--native-sidecar=false", "--exclude-namespaces=kube-system, infra"},
		getenv(map[string]string{"POD_NAMESPACE": "lastcall"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.inject.NativeSidecar || o.inject.Image != "img:1" || !slices.Equal(o.inject.Command, []string{"/usr/local/bin/sidecar"}) {
		t.Errorf("inject config %+v", o.inject)
	}
	if want := []string{"lastcall", "kube-system", "infra"}; !slices.Equal(o.inject.ExcludedNamespaces, want) {
		t.Errorf("excluded %v, want %v", o.inject.ExcludedNamespaces, want)
	}
	if got := o.inject.Resources.Requests.Cpu().String() + " " + o.inject.Resources.Requests.Memory().String() + " " + o.inject.Resources.Limits.Memory().String(); got != "5m 16Mi 32Mi" {
		t.Errorf("resources %s", got)
	}
	if _, ok := o.inject.Resources.Limits["cpu"]; ok {
		t.Error("a CPU limit by default")
	}
	if want := "lastcall-injector.lastcall.svc"; o.hosts()[0] != want {
		t.Errorf("hosts %v, want %s first", o.hosts(), want)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "--image"},
		{[]string{"--image=i", "--namespace="}, "namespace"},
		{[]string{"--image=i", "--image-pull-policy=Sometimes"}, "image-pull-policy"},
		{[]string{"--image=i", "--sidecar-user=-1"}, "sidecar-user"},
		{[]string{"--image=i", "--sidecar-memory-limit=lots"}, "memory"},
		{[]string{"--image=i", "--agent-port=0"}, "agent-port"},
	} {
		_, err := parseFlags(tc.args, getenv(map[string]string{"POD_NAMESPACE": "lastcall"}), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want one about %s", tc.args, err, tc.want)
		}
	}
}

// TestRun starts the injector against the real apiserver: it creates its
// Secret, writes the CA into the webhook configuration, turns ready, and
// serves /mutate over TLS with a certificate for its Service's name.
func TestRun(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "injector")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if _, err := e.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	whName := e.UniqueName("lastcall-injector")
	url := "https://127.0.0.1:1/mutate" // never called: no pod carries the label here
	none := admissionregistrationv1.SideEffectClassNone
	whc := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	_, err = whc.Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: whName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "inject.lastcall.dev", ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			AdmissionReviewVersions: []string{"v1"}, SideEffects: &none,
			ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"test": whName}},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = whc.Delete(context.Background(), whName, metav1.DeleteOptions{}) })

	o, err := parseFlags([]string{"--image=img:1", "--kubeconfig=" + kubeconfig, "--webhook-config=" + whName},
		getenv(map[string]string{"POD_NAMESPACE": ns}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx, o, ln, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})

	var ca []byte
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := whc.Get(ctx, whName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ca = got.Webhooks[0].ClientConfig.CABundle
		return len(ca) > 0, nil
	})
	if err != nil {
		t.Fatalf("caBundle never written: %v", err)
	}
	s, err := e.Client.CoreV1().Secrets(ns).Get(ctx, "lastcall-injector-tls", metav1.GetOptions{})
	if err != nil || !bytes.Equal(s.Data["ca.crt"], ca) {
		t.Fatalf("Secret: %v; want it to hold the caBundle's CA", err)
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "lastcall-injector." + ns + ".svc"},
	}}
	base := "https://" + ln.Addr().String()
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		resp, err := client.Get(base + "/readyz")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("never ready: %v", err)
	}
	resp, err := client.Post(base+"/mutate", "application/json", strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"jobs","object":{"metadata":{"name":"p","labels":{"lastcall.dev/inject":"enabled"}},"spec":{"containers":[{"name":"w","image":"w"}]}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"patchType":"JSONPatch"`) {
		t.Errorf("/mutate: %d %s", resp.StatusCode, body)
	}
}

// TestInjectSubcommand runs "injector inject" on a Deployment: the output
// carries the sidecar and the pull secret; a bad flag is a usage error.
func TestInjectSubcommand(t *testing.T) {
	in := `apiVersion: apps/v1
kind: Deployment
metadata: {name: workers}
spec:
  selector: {matchLabels: {app: w}}
  template:
    metadata: {labels: {app: w}}
    spec:
      containers: [{name: w, image: w:1}]
`
	var out, errb strings.Builder
	code := injectMain([]string{"--image=registry.example/lastcall:v1", "--image-pull-secrets=regcred"}, strings.NewReader(in), &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"image: registry.example/lastcall:v1", "lastcall.dev/injected: \"true\"", "name: regcred", "- probe"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(errb.String(), "1 pods injected") {
		t.Errorf("stderr %q", errb.String())
	}
	if code := injectMain([]string{"-f", "-"}, strings.NewReader(in), io.Discard, io.Discard); code != 2 {
		t.Errorf("without --image: exit %d, want 2", code)
	}
}

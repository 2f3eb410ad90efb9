package injector

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// webhookServer serves Handler over TLS on 127.0.0.1 with certificates from
// EnsureCerts, until stop or the end of the test.
type webhookServer struct {
	url   string
	certs *Certs
	srv   *http.Server
	done  chan error
	once  sync.Once
}

func startWebhookServer(t *testing.T, e *kubetest.Env, ownNS string, cfg Config) *webhookServer {
	t.Helper()
	certs, err := EnsureCerts(t.Context(), e.Client, ownNS, "lastcall-injector-tls", []string{"127.0.0.1"}, time.Now())
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
	mux := http.NewServeMux()
	mux.Handle("/mutate", NewHandler(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))))
	nsCfg := cfg
	nsCfg.NamespaceOptIn = true
	mux.Handle("/mutate-namespace", NewHandler(nsCfg, slog.New(slog.NewTextHandler(io.Discard, nil))))
	s := &webhookServer{
		url:   "https://" + ln.Addr().String() + "/mutate",
		certs: certs,
		srv: &http.Server{
			Handler:           mux,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
			ReadHeaderTimeout: 5 * time.Second,
		},
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.ServeTLS(ln, "", "") }()
	t.Cleanup(s.stop)
	return s
}

// stop closes the server and waits until it has stopped serving.
func (s *webhookServer) stop() {
	s.once.Do(func() {
		_ = s.srv.Close()
		<-s.done
	})
}

// webhookConfig returns the MutatingWebhookConfiguration the chart installs,
// pointing at url (and url-namespace) instead of a Service: pods labelled
// for the sidecar, and pods of namespaces labelled for it.
func webhookConfig(name, url, ownNS string) *admissionregistrationv1.MutatingWebhookConfiguration {
	ignore := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	never := admissionregistrationv1.NeverReinvocationPolicy
	nsURL := url + "-namespace"
	excluded := metav1.LabelSelectorRequirement{
		Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", ownNS},
	}
	rules := []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
		Rule: admissionregistrationv1.Rule{
			APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
			Scope: ptrTo(admissionregistrationv1.NamespacedScope),
		},
	}}
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "inject-namespace.lastcall.dev",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &nsURL},
			AdmissionReviewVersions: []string{"v1"},
			FailurePolicy:           &ignore,
			SideEffects:             &none,
			ReinvocationPolicy:      &never,
			TimeoutSeconds:          ptrTo(int32(2)),
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: InjectLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{InjectEnabled, InjectDisabled},
			}}},
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: InjectLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{InjectEnabled},
			}, excluded}},
			Rules: rules,
		}, {
			Name:                    "inject.lastcall.dev",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url},
			AdmissionReviewVersions: []string{"v1"},
			FailurePolicy:           &ignore,
			SideEffects:             &none,
			ReinvocationPolicy:      &never,
			TimeoutSeconds:          ptrTo(int32(2)),
			ObjectSelector:          &metav1.LabelSelector{MatchLabels: map[string]string{InjectLabel: InjectEnabled}},
			NamespaceSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{excluded}},
			Rules:                   rules,
		}},
	}
}

func labelled(p *corev1.Pod) {
	p.Labels = map[string]string{"app": "worker", InjectLabel: InjectEnabled}
}

// restrictedWorker makes the worker container comply with Pod Security
// "restricted".
func restrictedWorker(p *corev1.Pod) {
	p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{
		RunAsNonRoot:             ptrTo(true),
		RunAsUser:                ptrTo(int64(1000)),
		AllowPrivilegeEscalation: ptrTo(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func hasSidecar(p *corev1.Pod) bool {
	return len(p.Spec.InitContainers) > 0 && p.Spec.InitContainers[0].Name == ContainerName
}

// TestWebhook runs the webhook against the real apiserver: the apiserver
// calls it over TLS with the injector's own CA, as the chart sets it up.
func TestWebhook(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ownNS, err := e.CreateNamespace(ctx, "lastcall")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := e.CreateNamespace(ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig(testImage, ownNS)
	srv := startWebhookServer(t, e, ownNS, cfg)

	// The configuration as the chart creates it, without a caBundle; the
	// injector adds it at start.
	name := e.UniqueName("lastcall-injector")
	whc := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := whc.Create(ctx, webhookConfig(name, srv.url, ownNS), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = whc.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	for i, want := range []bool{true, false} {
		changed, err := PatchCABundle(ctx, e.Client, name, srv.certs.CACert)
		if err != nil || changed != want {
			t.Fatalf("PatchCABundle #%d: changed %v err %v, want changed %v", i+1, changed, err, want)
		}
	}
	got, err := whc.Get(ctx, name, metav1.GetOptions{})
	if err != nil || !bytes.Equal(got.Webhooks[0].ClientConfig.CABundle, srv.certs.CACert) {
		t.Fatalf("caBundle not set: %v", err)
	}
	waitForWebhook(t, e, ns)

	create := func(t *testing.T, namespace, name string, opts ...kubetest.PodOption) *corev1.Pod {
		t.Helper()
		p, err := e.Client.CoreV1().Pods(namespace).Create(ctx, kubetest.NewPod(namespace, name, "", opts...), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s/%s: %v", namespace, name, err)
		}
		t.Cleanup(func() {
			_ = e.Client.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(0))})
		})
		return p
	}

	t.Run("labelled pod gets the sidecar", func(t *testing.T) {
		p := create(t, ns, "labelled", labelled, kubetest.WithAnnotations(map[string]string{SignalAnnotation: "TSTP"}),
			func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m:1"}}
				p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptrTo(int64(1000))}
			})
		if !hasSidecar(p) || p.Annotations[InjectedAnnotation] != "true" {
			t.Fatalf("stored pod: init containers %v, annotations %v", names(p.Spec.InitContainers), p.Annotations)
		}
		if got := names(p.Spec.InitContainers); len(got) != 2 || got[1] != "migrate" {
			t.Errorf("init containers %v, want the sidecar, then migrate", got)
		}
		if !slices.Contains(p.Spec.InitContainers[0].Args, "--prestop-timeout=25s") {
			t.Errorf("sidecar args %q: want --prestop-timeout=25s for the default grace period", p.Spec.InitContainers[0].Args)
		}
		c := p.Spec.InitContainers[0]
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways || c.Image != testImage {
			t.Errorf("sidecar %+v", c)
		}
		w := p.Spec.Containers[0]
		if w.Lifecycle == nil || w.Lifecycle.PreStop == nil || w.Lifecycle.PreStop.Exec == nil || !mounts(&w, MountPath) {
			t.Errorf("worker %+v: want the preStop hook and the /lastcall mount", w)
		}
		if p.Spec.ShareProcessNamespace == nil || !*p.Spec.ShareProcessNamespace {
			t.Error("shareProcessNamespace not set for a signal")
		}
		if u := c.SecurityContext.RunAsUser; u == nil || *u != 1000 {
			t.Errorf("sidecar runs as %v, want the workers' user 1000 so that it may signal them", u)
		}
	})
	t.Run("signal without the workers' user: refused with the reason", func(t *testing.T) {
		pod := kubetest.NewPod(ns, "unsignallable", "", labelled, kubetest.WithAnnotations(map[string]string{SignalAnnotation: "TSTP"}))
		_, err := e.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "no runAsUser") {
			t.Fatalf("create: %v, want a refusal naming runAsUser", err)
		}
	})
	t.Run("unlabelled pod untouched", func(t *testing.T) {
		p := create(t, ns, "unlabelled")
		if len(p.Spec.InitContainers) != 0 || len(p.Spec.Volumes) != 0 || p.Annotations[InjectedAnnotation] != "" {
			t.Errorf("unlabelled pod changed: %+v", p.Spec)
		}
	})
	t.Run("kube-system untouched", func(t *testing.T) {
		p := create(t, "kube-system", e.UniqueName("labelled"), labelled)
		if hasSidecar(p) || len(p.Spec.Volumes) != 0 {
			t.Errorf("pod in kube-system changed: %+v", p.Spec)
		}
	})
	t.Run("own namespace untouched", func(t *testing.T) {
		p := create(t, ownNS, "labelled", labelled)
		if hasSidecar(p) {
			t.Errorf("pod in the injector's namespace changed: %+v", p.Spec)
		}
	})
	t.Run("re-injection is a no-op", func(t *testing.T) {
		in := kubetest.NewPod(ns, "marked", "", labelled)
		injected, changed, err := Inject(in, cfg)
		if err != nil || !changed {
			t.Fatal(changed, err)
		}
		p, err := e.Client.CoreV1().Pods(ns).Create(ctx, injected, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Client.CoreV1().Pods(ns).Delete(context.Background(), "marked", metav1.DeleteOptions{}) })
		if len(p.Spec.InitContainers) != 1 || len(p.Spec.Volumes) != 1 || len(p.Spec.Containers[0].VolumeMounts) != 1 {
			t.Errorf("marked pod injected again: init containers %v, volumes %d", names(p.Spec.InitContainers), len(p.Spec.Volumes))
		}
	})
	for _, level := range []string{"baseline", "restricted"} {
		t.Run("pod security "+level+" admits an injected worker", func(t *testing.T) {
			psNS := e.UniqueName("ps-" + level)
			_, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
				Name: psNS, Labels: map[string]string{"pod-security.kubernetes.io/enforce": level},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p := create(t, psNS, "worker", labelled, restrictedWorker)
			if !hasSidecar(p) {
				t.Fatalf("not injected: %+v", p.Spec)
			}
			// The namespace does enforce: a hostPath volume is refused.
			bad := kubetest.NewPod(psNS, "hostpath", "", labelled, restrictedWorker, func(p *corev1.Pod) {
				p.Spec.Volumes = []corev1.Volume{{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run"}}}}
			})
			_, err = e.Client.CoreV1().Pods(psNS).Create(ctx, bad, metav1.CreateOptions{})
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "hostPath") {
				t.Errorf("hostPath pod in a %s namespace: %v, want forbidden", level, err)
			}
		})
	}
	t.Run("namespace opt-in", func(t *testing.T) {
		optNS := e.UniqueName("opted-in")
		_, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: optNS, Labels: map[string]string{InjectLabel: InjectEnabled},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		plain := create(t, optNS, "plain")
		optedOut := create(t, optNS, "opted-out", kubetest.WithLabels(map[string]string{"app": "w", InjectLabel: InjectDisabled}))
		both := create(t, optNS, "labelled-too", labelled)
		if !hasSidecar(plain) || hasSidecar(optedOut) || !hasSidecar(both) {
			t.Errorf("in a namespace labelled %s=%s: plain %v, opted out %v, labelled %v; want true, false, true",
				InjectLabel, InjectEnabled, hasSidecar(plain), hasSidecar(optedOut), hasSidecar(both))
		}
		if n := len(both.Spec.InitContainers); n != 1 {
			t.Errorf("a labelled pod in an opted-in namespace has %d init containers: injected twice?", n)
		}
		if p := create(t, ns, "plain-elsewhere"); hasSidecar(p) {
			t.Error("an unlabelled pod in a namespace that did not opt in got the sidecar")
		}
	})
	t.Run("webhook down: pods still created", func(t *testing.T) {
		srv.stop()
		p := create(t, ns, "while-down", labelled)
		if hasSidecar(p) {
			t.Errorf("injected with the webhook down?")
		}
	})
}

// waitForWebhook waits (bounded) until the apiserver has loaded the webhook
// configuration: a dry-run create of a labelled pod comes back injected.
func waitForWebhook(t *testing.T, e *kubetest.Env, ns string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := e.Client.CoreV1().Pods(ns).Create(ctx, kubetest.NewPod(ns, "probe", "", labelled), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err
		}
		return hasSidecar(p), nil
	})
	if err != nil {
		t.Fatalf("the apiserver never called the webhook: %v", err)
	}
}

func TestEnsureCerts(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "certs")
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{"lastcall-injector." + ns + ".svc"}
	now := time.Now()
	first, err := EnsureCerts(ctx, e.Client, ns, "tls", hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	again, err := EnsureCerts(ctx, e.Client, ns, "tls", hosts, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.CACert, again.CACert) || !bytes.Equal(first.ServeCert, again.ServeCert) {
		t.Error("a valid Secret was not reused")
	}
	moved := append(hosts, "lastcall-injector."+ns+".svc.cluster.local")
	renewed, err := EnsureCerts(ctx, e.Client, ns, "tls", moved, now)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(renewed.CACert, first.CACert) || bytes.Equal(renewed.ServeCert, first.ServeCert) {
		t.Error("new host name: want the same CA and a new serving certificate")
	}
	s, err := e.Client.CoreV1().Secrets(ns).Get(ctx, "tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Data["tls.crt"], renewed.ServeCert) {
		t.Error("the Secret does not hold the renewed certificate")
	}

	// Replicas starting together end with one CA.
	type result struct {
		certs *Certs
		err   error
	}
	results := make(chan result, 4)
	for range 4 {
		go func() {
			c, err := EnsureCerts(ctx, e.Client, ns, "race", hosts, now)
			results <- result{c, err}
		}()
	}
	var cas [][]byte
	for range 4 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		cas = append(cas, r.certs.CACert)
	}
	for _, ca := range cas[1:] {
		if !bytes.Equal(ca, cas[0]) {
			t.Error("racing replicas ended with different CAs")
		}
	}
}

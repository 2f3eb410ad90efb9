package charts

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lastcall-dev/lastcall/injector"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// injectorObjects returns the injector's objects among objs, by kind; kinds
// the agent has too (ServiceAccount, ClusterRole, ...) are told apart by the
// component label.
func injectorObjects(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetLabels()["app.kubernetes.io/component"] == "injector" {
			out = append(out, o)
		}
	}
	return out
}

func checkInjector(t *testing.T, objs []*unstructured.Unstructured) {
	inj := injectorObjects(objs)
	// Two ClusterRoles: its own webhook configuration, and the eviction
	// guard's pod reads.
	want := []string{"ServiceAccount", "Service", "Deployment", "PodDisruptionBudget", "Role", "RoleBinding",
		"ClusterRole", "ClusterRoleBinding", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
	got := kinds(inj)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("injector kinds = %v, want %v", got, want)
	}
	dep := into[appsv1.Deployment](t, find(t, inj, "Deployment"))
	spec := dep.Spec.Template.Spec
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", dep.Spec.Replicas)
	}
	for k, v := range dep.Spec.Selector.MatchLabels {
		if k == "app.kubernetes.io/component" && v != "injector" {
			t.Errorf("Deployment selects component %s", v)
		}
	}
	ds, _ := daemonSet(t, objs)
	if slices.Equal(mapKeys(ds.Spec.Selector.MatchLabels), mapKeys(dep.Spec.Selector.MatchLabels)) &&
		ds.Spec.Selector.MatchLabels["app.kubernetes.io/component"] == dep.Spec.Selector.MatchLabels["app.kubernetes.io/component"] {
		t.Error("the Deployment's selector is the DaemonSet's")
	}
	aff := spec.Affinity
	if aff == nil || aff.NodeAffinity == nil || aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil ||
		len(aff.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("affinity %+v: want a preferred (not required: all-spot clusters) node affinity off spot nodes", aff)
	}
	pref := aff.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].Preference
	if len(pref.MatchExpressions) != 6 {
		t.Fatalf("preference %+v: want a NotIn per spot label", pref)
	}
	if spec.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector %v: want kubernetes.io/os=linux", spec.NodeSelector)
	}
	for _, e := range pref.MatchExpressions {
		if e.Operator != corev1.NodeSelectorOpNotIn || len(e.Values) == 0 {
			t.Errorf("expression %+v: want NotIn", e)
		}
	}
	c := spec.Containers[0]
	for _, arg := range []string{"--native-sidecar=true", "--agent-port=10574", "--sidecar-user=65532", "--exclude-namespaces=kube-system,monitoring",
		"--secret=" + dep.Name + "-tls", "--webhook-config=" + dep.Name, "--service=" + dep.Name,
		"--sidecar-cpu-request=5m", "--sidecar-memory-request=16Mi", "--sidecar-memory-limit=32Mi",
		"--image=ghcr.io/lastcall-dev/sidecar:" + chartAppVersion(t)} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("args %q lack %q", c.Args, arg)
		}
	}
	if !slices.Equal(c.Command, []string{"/usr/local/bin/injector"}) {
		t.Errorf("command %q", c.Command)
	}
	cs := c.SecurityContext
	if cs == nil || cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation || cs.ReadOnlyRootFilesystem == nil ||
		!*cs.ReadOnlyRootFilesystem || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("securityContext %+v", cs)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("hostPath volume %s", v.Name)
		}
	}
	if spec.HostNetwork {
		t.Error("hostNetwork")
	}

	pdb := into[policyv1.PodDisruptionBudget](t, find(t, inj, "PodDisruptionBudget"))
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB minAvailable %v, want 1", pdb.Spec.MinAvailable)
	}
	svc := into[corev1.Service](t, find(t, inj, "Service"))
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the injector pods", k, v)
		}
	}

	whc := into[admissionregistrationv1.MutatingWebhookConfiguration](t, find(t, inj, "MutatingWebhookConfiguration"))
	if len(whc.Webhooks) != 3 {
		t.Fatalf("%d webhooks, want 3 (labelled pods, labelled namespaces, the eviction guard)", len(whc.Webhooks))
	}
	nsw := whc.Webhooks[1]
	if nsw.ClientConfig.Service == nil || *nsw.ClientConfig.Service.Path != "/mutate-namespace" ||
		nsw.NamespaceSelector == nil || len(nsw.NamespaceSelector.MatchExpressions) != 2 ||
		nsw.NamespaceSelector.MatchExpressions[0].Key != "lastcall.dev/inject" ||
		nsw.ObjectSelector == nil || !slices.Equal(nsw.ObjectSelector.MatchExpressions[0].Values, []string{"enabled", "disabled"}) {
		t.Errorf("namespace webhook %+v", nsw)
	}
	guard := whc.Webhooks[2]
	if guard.Name != "eviction-guard.lastcall.dev" || *guard.ClientConfig.Service.Path != "/evict" ||
		len(guard.MatchConditions) != 1 || !strings.Contains(guard.MatchConditions[0].Expression, "system:serviceaccount:lastcall-system:") ||
		len(guard.Rules) != 1 || !slices.Equal(guard.Rules[0].Resources, []string{"pods/eviction"}) {
		t.Errorf("eviction guard %+v", guard)
	}
	wh := whc.Webhooks[0]
	if *wh.FailurePolicy != admissionregistrationv1.Ignore || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone ||
		*wh.ReinvocationPolicy != admissionregistrationv1.NeverReinvocationPolicy || *wh.TimeoutSeconds != 2 {
		t.Errorf("webhook policy: failure %v side effects %v reinvocation %v timeout %v",
			*wh.FailurePolicy, *wh.SideEffects, *wh.ReinvocationPolicy, *wh.TimeoutSeconds)
	}
	if wh.ObjectSelector == nil || wh.ObjectSelector.MatchLabels["lastcall.dev/inject"] != "enabled" {
		t.Errorf("objectSelector %+v", wh.ObjectSelector)
	}
	ns := wh.NamespaceSelector
	if ns == nil || len(ns.MatchExpressions) != 1 || ns.MatchExpressions[0].Operator != "NotIn" ||
		!slices.Equal(ns.MatchExpressions[0].Values, []string{"lastcall-system", "kube-system", "monitoring"}) {
		t.Errorf("namespaceSelector %+v: want NotIn the release namespace, kube-system, monitoring", ns)
	}
	if len(wh.Rules) != 1 || !slices.Equal(wh.Rules[0].Operations, []admissionregistrationv1.OperationType{"CREATE"}) ||
		!slices.Equal(wh.Rules[0].Resources, []string{"pods"}) {
		t.Errorf("rules %+v: want pods CREATE", wh.Rules)
	}
	ref := wh.ClientConfig.Service
	if ref == nil || ref.Name != svc.Name || ref.Namespace != "lastcall-system" || *ref.Path != "/mutate" || *ref.Port != 443 {
		t.Errorf("clientConfig %+v", wh.ClientConfig)
	}

	role := into[rbacv1.Role](t, find(t, inj, "Role"))
	var clusterRole rbacv1.ClusterRole
	for _, o := range inj {
		if o.GetKind() == "ClusterRole" && !strings.HasSuffix(o.GetName(), "-eviction-guard") {
			clusterRole = *into[rbacv1.ClusterRole](t, o)
		}
	}
	for _, r := range append(role.Rules, clusterRole.Rules...) {
		for _, v := range r.Verbs {
			if v != "create" && len(r.ResourceNames) != 1 {
				t.Errorf("rule %+v: %s not narrowed to one name", r, v)
			}
		}
	}
	if cr := clusterRole.Rules; len(cr) != 1 || cr[0].ResourceNames[0] != whc.Name ||
		!slices.Equal(cr[0].Resources, []string{"mutatingwebhookconfigurations"}) || !slices.Equal(cr[0].Verbs, []string{"get", "patch"}) {
		t.Errorf("ClusterRole rules %+v: want get, patch of %s only", cr, whc.Name)
	}
}

func mapKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestInjectorCertManager renders the cert-manager variant (no CRDs in the
// test apiserver: render only): a Certificate and Issuer, the caBundle
// annotation, the mounted Secret, and no RBAC for a CA of its own.
func TestInjectorCertManager(t *testing.T) {
	objs := injectorObjects(render(t, "lastcall", "lastcall-system", []string{"testdata/injector-certmanager.yaml"}, nil))
	ks := kinds(objs)
	for _, k := range []string{"Issuer", "Certificate", "Deployment", "MutatingWebhookConfiguration"} {
		if !slices.Contains(ks, k) {
			t.Errorf("kinds %v lack %s", ks, k)
		}
	}
	for _, o := range objs {
		if (o.GetKind() == "Role" || o.GetKind() == "ClusterRole") && !strings.HasSuffix(o.GetName(), "-eviction-guard") {
			t.Errorf("%s %s: not needed with cert-manager (only the eviction guard's pod reads are)", o.GetKind(), o.GetName())
		}
	}
	whc := find(t, objs, "MutatingWebhookConfiguration")
	cert := find(t, objs, "Certificate")
	if got, want := whc.GetAnnotations()["cert-manager.io/inject-ca-from"], "lastcall-system/"+cert.GetName(); got != want {
		t.Errorf("inject-ca-from %q, want %q", got, want)
	}
	secret, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	dnsNames, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	dep := into[appsv1.Deployment](t, find(t, objs, "Deployment"))
	if want := dep.Name + ".lastcall-system.svc"; !slices.Contains(dnsNames, want) {
		t.Errorf("dnsNames %v lack %s", dnsNames, want)
	}
	spec := dep.Spec.Template.Spec
	if len(spec.Volumes) != 1 || spec.Volumes[0].Secret == nil || spec.Volumes[0].Secret.SecretName != secret {
		t.Errorf("volumes %+v: want the Certificate's Secret %s", spec.Volumes, secret)
	}
	if !slices.Contains(spec.Containers[0].Args, "--cert-dir=/tls") {
		t.Errorf("args %q lack --cert-dir=/tls", spec.Containers[0].Args)
	}
	issuer, _, _ := unstructured.NestedString(cert.Object, "spec", "issuerRef", "name")
	if find(t, objs, "Issuer").GetName() != issuer || !strings.HasSuffix(issuer, "-injector") {
		t.Errorf("issuerRef %q", issuer)
	}
}

// TestHelmInstallInjector installs the injector variant with helm itself
// into the real apiserver and checks what NOTES.txt tells the user.
func TestHelmInstallInjector(t *testing.T) {
	e := kubetest.Need(t, env)
	ns, release, _, out := helmInstall(t, e, "injector", "testdata/injector.yaml")
	for _, want := range []string{
		"STATUS: deployed",
		"The sidecar injector " + release + "-lastcall-injector adds the sidecar",
		"(not in kube-system or " + ns + ", monitoring), as a native sidecar",
		"kubectl -n " + ns + " get deploy " + release + "-lastcall-injector",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	whc, err := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), release+"-lastcall-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("MutatingWebhookConfiguration after helm install: %v", err)
	}
	t.Cleanup(func() {
		_ = e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), whc.Name, metav1.DeleteOptions{})
	})
}

// TestInjectorSchemaRejects shows values.schema.json refusing injector
// typos and nonsense before anything reaches the cluster.
func TestInjectorSchemaRejects(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"injector.nativeSidcar=true", "nativeSidcar"},
		{"injector.replicas=0", "replicas"},
		{"injector.timeoutSeconds=31", "timeoutSeconds"},
		{"injector.certManager.issuer=x", "issuer"},
		{"injector.sidecarImage.repo=x", "repo"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			out, stderr, err := runHelm(t, templateArgs("lastcall", "lastcall-system", nil, []string{"injector.enabled=true", tc.set})...)
			if err == nil {
				t.Fatalf("helm template accepted %s:\n%s", tc.set, out)
			}
			if !strings.Contains(stderr, "values don't meet the specifications of the schema") || !strings.Contains(stderr, tc.want) {
				t.Errorf("%s: want a schema error about %s, got:\n%s", tc.set, tc.want, stderr)
			}
		})
	}
}

// TestInjectorRBAC applies the injector variant to the real apiserver and
// runs the injector's start-up calls (injector.EnsureCerts,
// injector.PatchCABundle) as its ServiceAccount: the chart's narrowed RBAC
// is enough for them, and for nothing beyond its own Secret and webhook
// configuration.
func TestInjectorRBAC(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "injector-rbac")
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, e.UniqueName("lc-rbac"), ns, []string{"testdata/injector.yaml"}, nil)
	newApplier(t, e).create(t, objs)
	inj := injectorObjects(objs)
	whName := find(t, inj, "MutatingWebhookConfiguration").GetName()
	t.Cleanup(func() {
		_ = e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), whName, metav1.DeleteOptions{})
	})
	dep := into[appsv1.Deployment](t, find(t, inj, "Deployment"))
	secretName := ""
	for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--secret="); ok {
			secretName = v
		}
	}
	cfg := rest.CopyConfig(e.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + dep.Spec.Template.Spec.ServiceAccountName}
	as, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hosts := []string{dep.Name + "." + ns + ".svc"}
	certs, err := injector.EnsureCerts(ctx, as, ns, secretName, hosts, time.Now())
	if err != nil {
		t.Fatalf("EnsureCerts as the injector: %v", err)
	}
	// Again, with a new host name: reuse the CA, update the Secret.
	if _, err := injector.EnsureCerts(ctx, as, ns, secretName, append(hosts, dep.Name+"."+ns+".svc.cluster.local"), time.Now()); err != nil {
		t.Fatalf("EnsureCerts (update) as the injector: %v", err)
	}
	if changed, err := injector.PatchCABundle(ctx, as, whName, certs.CACert); err != nil || !changed {
		t.Fatalf("PatchCABundle as the injector: changed %v, %v", changed, err)
	}
	// The eviction guard reads the pod an eviction names.
	if _, err := as.CoreV1().Pods("default").Get(ctx, "any", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get a pod as the injector: %v, want not found (allowed)", err)
	}
	for name, call := range map[string]func() error{
		"list pods": func() error {
			_, err := as.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			return err
		},
		"get another secret": func() error {
			_, err := as.CoreV1().Secrets(ns).Get(ctx, "other", metav1.GetOptions{})
			return err
		},
		"list secrets": func() error {
			_, err := as.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			return err
		},
		"secret in another namespace": func() error {
			_, err := as.CoreV1().Secrets("default").Get(ctx, secretName, metav1.GetOptions{})
			return err
		},
		"another webhook configuration": func() error {
			_, err := as.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "other", metav1.GetOptions{})
			return err
		},
	} {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: %v, want forbidden", name, err)
		}
	}
}

// TestHelmUninstallRemovesInjectorSecret installs the injector variant,
// lets the injector's certificate code do what the running injector does
// (create the Secret with its CA, own it by the webhook configuration,
// write the caBundle), then uninstalls: Kubernetes' garbage collector
// deletes the Secret with the webhook configuration helm deletes.
func TestHelmUninstallRemovesInjectorSecret(t *testing.T) {
	e := kubetest.Need(t, env)
	startControllers(t, e, "garbage-collector-controller")
	ns, release, kubeconfig, _ := helmInstall(t, e, "uninstall", "testdata/injector.yaml")
	name := release + "-lastcall-injector"
	r := &injector.Rotator{Client: e.Client, Namespace: ns, Secret: name + "-tls", WebhookConfig: name,
		Hosts: []string{name + "." + ns + ".svc"}}
	if err := r.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	secrets := e.Client.CoreV1().Secrets(ns)
	if _, err := secrets.Get(t.Context(), name+"-tls", metav1.GetOptions{}); err != nil {
		t.Fatalf("the injector's Secret: %v", err)
	}
	if out, stderr, err := runHelm(t, "uninstall", release, "--kubeconfig", kubeconfig, "--namespace", ns, "--wait"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s%s", err, out, stderr)
	}
	start := time.Now()
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := secrets.Get(ctx, name+"-tls", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("the injector's Secret outlived helm uninstall: %v", err)
	}
	t.Logf("Secret deleted %v after helm uninstall", time.Since(start).Round(time.Millisecond))
}

// helmInstall installs the chart with values into a new namespace of the
// real apiserver and returns the namespace, the release, the kubeconfig
// used and helm's output.
func helmInstall(t *testing.T, e *kubetest.Env, name, values string) (ns, release, kubeconfig, out string) {
	t.Helper()
	kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if _, err := e.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	ns, release = e.UniqueName("helm-"+name), e.UniqueName("lc-"+name)
	out, stderr, err := runHelm(t, "install", release, chartDir, "--kubeconfig", kubeconfig,
		"--namespace", ns, "--create-namespace", "--values", values)
	if err != nil {
		t.Fatalf("helm install: %v\n%s%s", err, out, stderr)
	}
	return ns, release, kubeconfig, out
}

// TestSidecarImageDigest: the sidecar image may be pinned by digest; a
// malformed digest is refused by the schema.
func TestSidecarImageDigest(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	objs := render(t, "lastcall", "lastcall-system", nil, []string{"injector.sidecarImage.digest=" + digest})
	dep := into[appsv1.Deployment](t, find(t, injectorObjects(objs), "Deployment"))
	want := "--image=ghcr.io/lastcall-dev/sidecar:" + chartAppVersion(t) + "@" + digest
	if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, want) {
		t.Errorf("injector args %q lack %q", dep.Spec.Template.Spec.Containers[0].Args, want)
	}
	if _, stderr, err := runHelm(t, templateArgs("lastcall", "lastcall-system", nil, []string{"injector.sidecarImage.digest=latest"})...); err == nil {
		t.Error("a digest that is not sha256:<64 hex> was accepted")
	} else if !strings.Contains(stderr, "digest") {
		t.Errorf("refusal %q does not name the digest", stderr)
	}
}

package charts

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/lastcall-dev/lastcall/agent"
	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
)

// applier creates rendered objects through the dynamic client, finding each
// kind's resource by discovery.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t *testing.T, e *kubetest.Env) *applier {
	t.Helper()
	dyn, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{
		dyn:    dyn,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(e.Client.Discovery())),
	}
}

// resource returns the client for obj's kind and namespace; a kind that
// discovery does not know yet (a CRD just created) is looked up again until
// ctx ends.
func (a *applier) resource(ctx context.Context, obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	var mapping *meta.RESTMapping
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var err error
		mapping, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			a.mapper.Reset()
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return nil, fmt.Errorf("find the resource of %s: %w", gvk, err)
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return a.dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace()), nil
	}
	return a.dyn.Resource(mapping.Resource), nil
}

// create creates every object in order with strict field validation (an
// unknown or duplicated field is an error, not a warning) and returns them
// as stored.
func (a *applier) create(t *testing.T, objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, o := range objs {
		ri, err := a.resource(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ri.Create(t.Context(), o, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict})
		if err != nil {
			t.Fatalf("create %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
		out = append(out, got)
	}
	return out
}

// installMonitoringCRDs creates minimal ServiceMonitor and PodMonitor CRDs,
// once per control plane.
func installMonitoringCRDs(t *testing.T, a *applier) {
	t.Helper()
	raw, err := os.ReadFile("testdata/monitoring-crds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	crds, err := decodeObjects(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range crds {
		ri, err := a.resource(t.Context(), crd)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ri.Create(t.Context(), crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create CRD %s: %v", crd.GetName(), err)
		}
	}
}

// TestApply renders each documented variant and creates every object in the
// real apiserver, which also compiles the admission policy's CEL.
func TestApply(t *testing.T) {
	e := kubetest.Need(t, env)
	a := newApplier(t, e)
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			ns, err := e.CreateNamespace(t.Context(), "chart-"+v.name)
			if err != nil {
				t.Fatal(err)
			}
			objs := render(t, e.UniqueName("lc-"+v.name), ns, v.files, nil)
			if slices.Contains(kinds(objs), "ServiceMonitor") || slices.Contains(kinds(objs), "PodMonitor") {
				installMonitoringCRDs(t, a)
			}
			for _, o := range a.create(t, objs) {
				if o.GetUID() == "" {
					t.Errorf("%s %s stored without a UID", o.GetKind(), o.GetName())
				}
			}
		})
	}
}

// TestPolicyTypeCheck runs Kubernetes' own type checker of admission
// policies (kube-controller-manager's validatingadmissionpolicy-status
// controller, which checks each expression against the OpenAPI schemas of
// the resources the policy matches) on the chart's policy: no warnings. A
// copy with a misspelt field shows that the checker does report them.
func TestPolicyTypeCheck(t *testing.T) {
	e := kubetest.Need(t, env)
	a := newApplier(t, e)
	startControllers(t, e, "validatingadmissionpolicy-status-controller")
	ns, err := e.CreateNamespace(t.Context(), "typecheck")
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, e.UniqueName("lc-typecheck"), ns, nil, nil)
	var policies []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "ValidatingAdmissionPolicy" {
			policies = append(policies, o)
		}
	}
	if len(policies) != 2 {
		t.Fatalf("rendered %d policies, want 2", len(policies))
	}
	broken := policies[0].DeepCopy()
	broken.SetName(broken.GetName() + "-broken")
	validations, _, _ := unstructured.NestedSlice(broken.Object, "spec", "validations")
	validations[len(validations)-1].(map[string]any)["expression"] = "object.metadata.nmae == variables.nodeName"
	if err := unstructured.SetNestedSlice(broken.Object, validations, "spec", "validations"); err != nil {
		t.Fatal(err)
	}
	created := a.create(t, append(policies, broken))
	for _, p := range created[:len(policies)] {
		if w := typeCheckWarnings(t, a, p); len(w) > 0 {
			t.Errorf("policy %s: type-checking warnings: %v", p.GetName(), w)
		}
	}
	if w := typeCheckWarnings(t, a, created[len(policies)]); len(w) == 0 || !strings.Contains(fmt.Sprint(w), "nmae") {
		t.Errorf("misspelt policy: warnings %v, want one about nmae", w)
	}
}

// startControllers runs a kube-controller-manager with only the named
// controllers, until the test ends.
func startControllers(t *testing.T, e *kubetest.Env, controllers ...string) {
	t.Helper()
	assets, err := kubetest.AssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if _, err := e.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "kcm.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+kubeconfig,
		"--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kube-controller-manager: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			if log, err := os.ReadFile(logf.Name()); err == nil {
				if len(log) > 4000 {
					log = log[len(log)-4000:]
				}
				t.Logf("kube-controller-manager's log ends:\n%s", log)
			}
		}
	})
}

// typeCheckWarnings waits (bounded) until the type checker has checked the
// policy's current generation and returns its warnings.
func typeCheckWarnings(t *testing.T, a *applier, policy *unstructured.Unstructured) []any {
	t.Helper()
	ri, err := a.resource(t.Context(), policy)
	if err != nil {
		t.Fatal(err)
	}
	var got *unstructured.Unstructured
	err = wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err = ri.Get(ctx, policy.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		observed, _, _ := unstructured.NestedInt64(got.Object, "status", "observedGeneration")
		return observed >= got.GetGeneration(), nil
	})
	if err != nil {
		t.Fatalf("policy %s never type-checked: %v", policy.GetName(), err)
	}
	warnings, _, _ := unstructured.NestedSlice(got.Object, "status", "typeChecking", "expressionWarnings")
	return warnings
}

// TestHelmInstall installs the dry-run variant with helm itself into the
// real apiserver and checks what NOTES.txt tells the user.
func TestHelmInstall(t *testing.T) {
	e := kubetest.Need(t, env)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if _, err := e.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	ns, release := e.UniqueName("helm-install"), e.UniqueName("lc-install")
	out, stderr, err := runHelm(t, "install", release, chartDir, "--kubeconfig", kubeconfig,
		"--namespace", ns, "--create-namespace", "--values", "testdata/dryrun-slack.yaml")
	if err != nil {
		t.Fatalf("helm install: %v\n%s%s", err, out, stderr)
	}
	t.Logf("helm install:\n%s", out)
	for _, want := range []string{
		"STATUS: deployed",
		"DRY RUN: the agents log what they would do",
		"lastcall.dev/preemptible in (true)",
		"kubectl -n " + ns + " create secret generic lastcall-slack --from-literal=url=",
		"kubectl -n " + ns + " get ds " + release + "-lastcall",
		"port 10573",
		release + "-lastcall-node-restriction",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	if _, err := e.Client.AppsV1().DaemonSets(ns).Get(t.Context(), release+"-lastcall", metav1.GetOptions{}); err != nil {
		t.Errorf("DaemonSet after helm install: %v", err)
	}
}

// TestNodeRestriction shows the ValidatingAdmissionPolicy at work with a
// real pod-bound service-account token: the agent on node A may cordon and
// label node A, set its status and delete pods bound to it, and nothing of
// that on node B.
func TestNodeRestriction(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "restrict")
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, e.UniqueName("lc-restrict"), ns, nil, nil)
	newApplier(t, e).create(t, objs)
	sa := find(t, objs, "ServiceAccount").GetName()

	nodeA, nodeB := e.UniqueName("spot-a"), e.UniqueName("spot-b")
	for _, n := range []string{nodeA, nodeB} {
		if _, err := e.CreateNode(ctx, n, map[string]string{"lastcall.dev/preemptible": "true"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Client.CoreV1().Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
	}
	// The agent's pod, as the DaemonSet would have it on node A (envtest
	// runs no ServiceAccount admission: the name is set here), and a worker
	// on each node.
	agentPod := kubetest.NewPod(ns, "agent", nodeA)
	agentPod.Spec.ServiceAccountName = sa
	pods, err := e.CreatePods(ctx, agentPod,
		kubetest.NewPod(ns, "worker-a", nodeA), kubetest.NewPod(ns, "worker-b", nodeB))
	if err != nil {
		t.Fatal(err)
	}

	// The token the kubelet would mount: bound to the agent's pod.
	agentClient := tokenClient(t, e, ns, sa, &authnv1.BoundObjectReference{
		Kind: "Pod", APIVersion: "v1", Name: pods[0].Name, UID: pods[0].UID,
	}, nodeA)

	// Admission policies take effect once the apiserver has loaded them:
	// wait (bounded) for the first refusal, then assert.
	denyNodeB := fmt.Sprintf("lastcall: the agent on node %s may change only its own Node, not %s", nodeA, nodeB)
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		err := labelNode(ctx, agentClient, nodeB, drainer.ExcludeLBLabel, "true", false)
		return err != nil && apierrors.IsForbidden(err) && strings.Contains(err.Error(), denyNodeB), nil
	})
	if err != nil {
		t.Fatalf("the policy never refused an update of node B: %v", err)
	}

	t.Run("own node: the drainer's cordon and uncordon", func(t *testing.T) {
		// An operator's own taint and label, which the agent must keep.
		n, err := e.Client.CoreV1().Nodes().Get(t.Context(), nodeA, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "team", Value: "ml", Effect: corev1.TaintEffectNoSchedule})
		if _, err := e.Client.CoreV1().Nodes().Update(t.Context(), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		d := drainer.New(clientset.New(agentClient), drainer.Options{})
		if _, err := d.Cordon(t.Context(), nodeA, "gce", "preemption"); err != nil {
			t.Fatalf("cordon of its own node refused: %v", err)
		}
		got, err := e.Client.CoreV1().Nodes().Get(t.Context(), nodeA, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, rec := drainer.RecordOf(got); !got.Spec.Unschedulable || !rec || got.Labels[drainer.ExcludeLBLabel] != "true" {
			t.Errorf("node A after the cordon: unschedulable %v, record %v, labels %v", got.Spec.Unschedulable, rec, got.Labels)
		}
		if _, err := d.Uncordon(t.Context(), nodeA); err != nil {
			t.Fatalf("uncordon of its own node refused: %v", err)
		}
	})
	// What the token cannot do on its own node: anything a cordon does not.
	denyMeta := "lastcall: the agent may change only the label node.kubernetes.io/exclude-from-external-load-balancers"
	denySpec := "lastcall: the agent may change only spec.unschedulable and its own taint"
	denyStatus := "lastcall: the agent may change only its PreemptionImminent condition"
	for _, tc := range []struct {
		name   string
		change func(*corev1.Node)
		want   string
	}{
		{"any other label", func(n *corev1.Node) { n.Labels["team"] = "attacker" }, denyMeta},
		{"a node-restriction label", func(n *corev1.Node) { n.Labels["node-restriction.kubernetes.io/trusted"] = "yes" }, denyMeta},
		{"another annotation", func(n *corev1.Node) { n.Annotations = map[string]string{"x": "y"} }, denyMeta},
		{"an operator's taint removed", func(n *corev1.Node) { n.Spec.Taints = nil }, denySpec},
		{"another taint added", func(n *corev1.Node) {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "evil", Effect: corev1.TaintEffectNoExecute})
		}, denySpec},
	} {
		t.Run("own node: "+tc.name+" refused", func(t *testing.T) {
			n, err := agentClient.CoreV1().Nodes().Get(t.Context(), nodeA, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			tc.change(n)
			_, err = agentClient.CoreV1().Nodes().Update(t.Context(), n, metav1.UpdateOptions{})
			wantRefused(t, err, tc.want)
		})
	}
	t.Run("own node: another condition refused", func(t *testing.T) {
		patch := []byte(`{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Attacker"}]}}`)
		_, err := agentClient.CoreV1().Nodes().Patch(t.Context(), nodeA, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
		wantRefused(t, err, denyStatus)
	})
	t.Run("other node: update refused", func(t *testing.T) {
		err := labelNode(t.Context(), agentClient, nodeB, drainer.ExcludeLBLabel, "true", true)
		wantRefused(t, err, denyNodeB)
	})
	t.Run("own node: status patch", func(t *testing.T) {
		if err := patchCondition(t.Context(), agentClient, nodeA); err != nil {
			t.Fatalf("status patch of its own node refused: %v", err)
		}
	})
	t.Run("other node: status patch refused", func(t *testing.T) {
		wantRefused(t, patchCondition(t.Context(), agentClient, nodeB), denyNodeB)
	})
	t.Run("pod on own node: delete", func(t *testing.T) {
		if err := agentClient.CoreV1().Pods(ns).Delete(t.Context(), "worker-a", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete of a pod on its node refused: %v", err)
		}
	})
	t.Run("pod on other node: delete refused", func(t *testing.T) {
		err := agentClient.CoreV1().Pods(ns).Delete(t.Context(), "worker-b", metav1.DeleteOptions{})
		wantRefused(t, err, fmt.Sprintf("lastcall: the agent on node %s may delete only pods bound to it, not %s/worker-b", nodeA, ns))
	})
	t.Run("token without a node: refused", func(t *testing.T) {
		unbound := tokenClient(t, e, ns, sa, nil, "")
		err := labelNode(t.Context(), unbound, nodeA, drainer.ExcludeLBLabel, "true", false)
		wantRefused(t, err, "lastcall: the agent's token names no node")
	})
	t.Run("other identities unaffected", func(t *testing.T) {
		if err := labelNode(t.Context(), e.Client, nodeB, "lastcall.dev/probe", "admin", false); err != nil {
			t.Errorf("cluster admin's update of node B: %v", err)
		}
	})
	t.Run("agent's own access check passes", func(t *testing.T) {
		// What the agent checks at start (SelfSubjectAccessReviews for each
		// of agent.Permissions) with the chart's RBAC and the real token.
		if err := agent.CheckAccess(t.Context(), clientset.New(agentClient), nodeA); err != nil {
			t.Errorf("CheckAccess: %v", err)
		}
	})
}

// tokenClient returns a client that authenticates as namespace/sa with a
// TokenRequest token bound to ref (nil: bound to nothing). With wantNode set
// it checks that the apiserver puts that node into the token's user info,
// both as the JWT's claim and as the extra the policy reads.
func tokenClient(t *testing.T, e *kubetest.Env, namespace, sa string, ref *authnv1.BoundObjectReference, wantNode string) kubernetes.Interface {
	t.Helper()
	tr, err := e.Client.CoreV1().ServiceAccounts(namespace).CreateToken(t.Context(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{BoundObjectRef: ref},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create token for %s/%s: %v", namespace, sa, err)
	}
	cfg := &rest.Config{
		Host:            e.Config.Host,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: e.Config.CAData, ServerName: e.Config.ServerName},
		QPS:             -1,
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	review, err := client.AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	user := review.Status.UserInfo
	if want := "system:serviceaccount:" + namespace + ":" + sa; user.Username != want {
		t.Fatalf("token authenticates as %q, want %q", user.Username, want)
	}
	gotNode := user.Extra["authentication.kubernetes.io/node-name"]
	if wantNode == "" {
		if len(gotNode) != 0 {
			t.Fatalf("unbound token carries node %v", gotNode)
		}
		return client
	}
	if !slices.Equal(gotNode, authnv1.ExtraValue{wantNode}) {
		t.Fatalf("token's user extra node-name = %v, want [%s] (extra: %v)", gotNode, wantNode, user.Extra)
	}
	if claim := jwtNodeName(t, tr.Status.Token); claim != wantNode {
		t.Fatalf("token's kubernetes.io.node.name claim = %q, want %q", claim, wantNode)
	}
	return client
}

// jwtNodeName returns the node name claim of a service-account JWT.
func jwtNodeName(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token is not a JWT: %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("decode JWT payload: %v", err)
	}
	var claims struct {
		Kubernetes struct {
			Node struct {
				Name string `json:"name"`
			} `json:"node"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("parse JWT claims: %v", err)
	}
	return claims.Kubernetes.Node.Name
}

// labelNode gets the node and updates it with a label set, and cordoned if
// cordon: the agent's own way (RBAC grants it get and update on nodes, not
// patch).
func labelNode(ctx context.Context, client kubernetes.Interface, node, key, value string, cordon bool) error {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[key] = value
	if cordon {
		n.Spec.Unschedulable = true
	}
	_, err = client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	return err
}

// patchCondition sets the PreemptionImminent condition through the status
// subresource, as the agent does.
func patchCondition(ctx context.Context, client kubernetes.Interface, node string) error {
	now := metav1.Now()
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: "PreemptionImminent", Status: corev1.ConditionTrue, Reason: "Preemption",
		Message: "chart test", LastHeartbeatTime: now, LastTransitionTime: now,
	}}}})
	if err != nil {
		return err
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	return err
}

// wantRefused fails the test unless err is the apiserver's 403 carrying msg.
func wantRefused(t *testing.T, err error, msg string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("allowed; want refused with %q", msg)
	case !apierrors.IsForbidden(err):
		t.Errorf("error %v; want 403 Forbidden with %q", err, msg)
	case !strings.Contains(err.Error(), msg):
		t.Errorf("refused with %q; want %q", err, msg)
	}
}

package charts

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/lastcall-dev/lastcall/agent"
)

// variants are the documented values files in testdata/ that must lint and
// render; the apiserver tests apply each of them.
var variants = []struct {
	name  string
	files []string
	check func(t *testing.T, objs []*unstructured.Unstructured)
}{
	{"default", nil, checkDefault},
	{"dryrun-slack", []string{"testdata/dryrun-slack.yaml"}, checkDryRunSlack},
	{"custom-labels", []string{"testdata/custom-labels.yaml"}, checkCustomLabels},
	{"all-nodes", []string{"testdata/all-nodes.yaml"}, checkAllNodes},
	{"monitoring", []string{"testdata/monitoring.yaml"}, checkMonitoring},
	{"policy-warn", []string{"testdata/policy-warn.yaml"}, checkPolicyWarn},
	{"injector", []string{"testdata/injector.yaml"}, checkInjector},
	{"metadata", []string{"testdata/metadata.yaml"}, checkMetadata},
	{"flow-control", []string{"testdata/flow-control.yaml"}, checkFlowControl},
	{"nth-migration", []string{"testdata/nth-migration.yaml"}, checkMigration},
	{"coexistence", []string{"testdata/coexistence.yaml"}, checkCoexistence},
	{"gke", []string{"testdata/gke.yaml"}, checkGKE},
}

func TestLint(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir, "--kube-version", kubeVersion}
			for _, f := range v.files {
				args = append(args, "--values", f)
			}
			out, stderr, err := runHelm(t, args...)
			if err != nil {
				t.Fatalf("helm lint: %v\n%s%s", err, out, stderr)
			}
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Fatalf("helm lint output:\n%s", out)
			}
		})
	}
}

func TestTemplate(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			objs := render(t, "lastcall", "lastcall-system", v.files, nil)
			for _, o := range objs {
				if o.GetKind() == "ServiceAccount" || o.GetKind() == "DaemonSet" || o.GetKind() == "Service" ||
					o.GetKind() == "ServiceMonitor" || o.GetKind() == "PodMonitor" {
					if got := o.GetNamespace(); got != "lastcall-system" {
						t.Errorf("%s %s in namespace %q, want the release namespace", o.GetKind(), o.GetName(), got)
					}
				}
				labels := o.GetLabels()
				for _, l := range []string{"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"} {
					if labels[l] == "" {
						t.Errorf("%s %s has no label %s", o.GetKind(), o.GetName(), l)
					}
				}
			}
			v.check(t, objs)
		})
	}
}

// daemonSet returns the rendered DaemonSet and its one container.
func daemonSet(t *testing.T, objs []*unstructured.Unstructured) (*appsv1.DaemonSet, corev1.Container) {
	t.Helper()
	ds := into[appsv1.DaemonSet](t, find(t, objs, "DaemonSet"))
	if n := len(ds.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("DaemonSet has %d containers, want 1", n)
	}
	return ds, ds.Spec.Template.Spec.Containers[0]
}

// nodeTerms returns the DaemonSet's required node selector terms as
// "key in (v1,v2)" strings, in order.
func nodeTerms(ds *appsv1.DaemonSet) []string {
	aff := ds.Spec.Template.Spec.Affinity
	if aff == nil || aff.NodeAffinity == nil || aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return nil
	}
	var out []string
	for _, term := range aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		var exprs []string
		for _, e := range term.MatchExpressions {
			exprs = append(exprs, e.Key+" "+strings.ToLower(string(e.Operator))+" ("+strings.Join(e.Values, ",")+")")
		}
		out = append(out, strings.Join(exprs, " && "))
	}
	return out
}

func chartAppVersion(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(chartDir + "/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c.AppVersion
}

func checkDefault(t *testing.T, objs []*unstructured.Unstructured) {
	want := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
		"FlowSchema", "FlowSchema", "PriorityLevelConfiguration", "PriorityLevelConfiguration",
		"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding"}
	inj := injectorObjects(objs)
	agentObjs := slices.DeleteFunc(slices.Clone(objs), func(o *unstructured.Unstructured) bool { return slices.Contains(inj, o) })
	if got := kinds(agentObjs); !slices.Equal(got, want) {
		t.Errorf("the agent's kinds = %v, want %v", got, want)
	}
	// The injector is on by default, with the eviction guard, which fails
	// closed: an injector outage must not let the agent evict anywhere.
	whc := into[admissionregistrationv1.MutatingWebhookConfiguration](t, find(t, inj, "MutatingWebhookConfiguration"))
	guard := false
	for _, w := range whc.Webhooks {
		if w.Name == "eviction-guard.lastcall.dev" {
			guard = true
			if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Fail || len(w.MatchConditions) != 1 {
				t.Errorf("eviction guard failurePolicy %v, matchConditions %v: want Fail, matched to the agent only", w.FailurePolicy, w.MatchConditions)
			}
		}
	}
	if !guard {
		t.Error("the default install has no eviction guard")
	}
	ds, c := daemonSet(t, objs)
	spec := ds.Spec.Template.Spec
	wantForeign := []string{"--foreign-sources=" + strings.Join(agent.ForeignTaintSources, ","),
		"--foreign-cordon=false", "--foreign-kubelet-shutdown=true"}
	if got := foreignArgs(c); !slices.Equal(got, wantForeign) {
		t.Errorf("agent's foreign flags %q, want the agent's defaults %q", got, wantForeign)
	}

	wantTerms := []string{
		"cloud.google.com/gke-spot in (true)",
		"cloud.google.com/gke-preemptible in (true)",
		"eks.amazonaws.com/capacityType in (SPOT)",
		"karpenter.sh/capacity-type in (spot)",
		"kubernetes.azure.com/scalesetpriority in (spot)",
		"lastcall.dev/preemptible in (true)",
	}
	if got := nodeTerms(ds); !slices.Equal(got, wantTerms) {
		t.Errorf("node selector terms (ORed) = %q, want %q", got, wantTerms)
	}
	if want := map[string]string{"kubernetes.io/os": "linux"}; !maps.Equal(spec.NodeSelector, want) {
		t.Errorf("nodeSelector = %v, want %v: the binaries are Linux ones", spec.NodeSelector, want)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !slices.Equal(spec.Tolerations, want) {
		t.Errorf("tolerations = %+v, want %+v", spec.Tolerations, want)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork = %v, dnsPolicy = %q; want true, ClusterFirstWithHostNet", spec.HostNetwork, spec.DNSPolicy)
	}
	if spec.ServiceAccountName != find(t, objs, "ServiceAccount").GetName() {
		t.Errorf("serviceAccountName = %q, want the rendered ServiceAccount", spec.ServiceAccountName)
	}
	ps := spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser != 65532 ||
		ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v", ps)
	}
	cs := c.SecurityContext
	if cs == nil || cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation ||
		cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem ||
		cs.RunAsNonRoot == nil || !*cs.RunAsNonRoot || cs.RunAsUser == nil || *cs.RunAsUser != 65532 ||
		cs.Capabilities == nil || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(cs.Capabilities.Add) != 0 ||
		cs.SeccompProfile == nil || cs.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container securityContext = %+v", cs)
	}

	if want := "ghcr.io/lastcall-dev/lastcall:" + chartAppVersion(t); c.Image != want {
		t.Errorf("image = %q, want %q", c.Image, want)
	}
	wantArgs := []string{
		"--cloud=auto",
		"--on-preemption=drain", "--on-spot-interruption=drain", "--on-termination=drain",
		"--on-maintenance=drain", "--on-rebalance=cordon",
		"--on-blocked=delete", "--listen=:10573", "--sidecar-listen=:10574", "--log-format=json", "--log-level=info",
		"--taint-effect=NoSchedule",
		"--foreign-sources=karpenter,cluster-autoscaler,aws-node-termination-handler",
		"--foreign-cordon=false", "--foreign-kubelet-shutdown=true",
	}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args = %q, want %q", c.Args, wantArgs)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	for name, path := range map[string]string{"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		if env[name] != path {
			t.Errorf("env %s from %q, want downward API %s", name, env[name], path)
		}
	}
	if len(c.Ports) != 2 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 10573 ||
		c.Ports[1].Name != "sidecars" || c.Ports[1].ContainerPort != 10574 {
		t.Errorf("ports = %+v, want metrics 10573 and sidecars 10574", c.Ports)
	}
	for name, p := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("probe %s = %+v", name, p)
		}
	}
	for name, q := range map[string]struct {
		got  resource.Quantity
		want string
	}{
		"requests.cpu":    {c.Resources.Requests[corev1.ResourceCPU], "10m"},
		"requests.memory": {c.Resources.Requests[corev1.ResourceMemory], "48Mi"},
		"limits.memory":   {c.Resources.Limits[corev1.ResourceMemory], "128Mi"},
	} {
		if q.got.Cmp(resource.MustParse(q.want)) != 0 {
			t.Errorf("resources %s = %s, want %s", name, q.got.String(), q.want)
		}
	}
	if _, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		t.Error("a CPU limit is set; a throttled agent loses seconds of its notice")
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil ||
		us.RollingUpdate.MaxUnavailable.String() != "10%" {
		t.Errorf("updateStrategy = %+v, want RollingUpdate maxUnavailable 10%%", us)
	}
}

func checkDryRunSlack(t *testing.T, objs []*unstructured.Unstructured) {
	ds, c := daemonSet(t, objs)
	for _, arg := range []string{"--dry-run", "--webhook-url-file=/etc/lastcall/webhook/url", "--webhook-format=slack",
		"--webhook-timeout=5s", "--webhook-attempts=5"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("args %q lack %q", c.Args, arg)
		}
	}
	// The URL is a credential: not in the command line, not in the
	// environment (both readable in /proc), but in a mounted file.
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s from a Secret: the URL would be in the process environment", e.Name)
		}
	}
	vols := ds.Spec.Template.Spec.Volumes
	if len(vols) != 1 || vols[0].Secret == nil || vols[0].Secret.SecretName != "lastcall-slack" ||
		len(vols[0].Secret.Items) != 1 || vols[0].Secret.Items[0].Key != "url" {
		t.Fatalf("volumes %+v, want the Secret lastcall-slack's key url", vols)
	}
	if m := c.VolumeMounts; len(m) != 1 || m[0].Name != vols[0].Name || m[0].MountPath != "/etc/lastcall/webhook" || !m[0].ReadOnly {
		t.Errorf("volume mounts %+v", m)
	}
}

func checkMetadata(t *testing.T, objs []*unstructured.Unstructured) {
	_, c := daemonSet(t, objs)
	for _, arg := range []string{"--cloud=aws", "--gce-metadata-host=127.0.0.1:8088", "--aws-imds-endpoint=http://127.0.0.1:1338",
		"--aws-poll-interval=500ms", "--azure-imds-endpoint=http://127.0.0.1:8089"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("args %q lack %q", c.Args, arg)
		}
	}
}

func checkCustomLabels(t *testing.T, objs []*unstructured.Unstructured) {
	ds, c := daemonSet(t, objs)
	if got, want := nodeTerms(ds), []string{"node-pool in (spot,spot-gpu)"}; !slices.Equal(got, want) {
		t.Errorf("node selector terms = %q, want %q", got, want)
	}
	if got := ds.Spec.Template.Spec.NodeSelector; len(got) != 1 || got["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector = %v", got)
	}
	for _, arg := range []string{"--cloud=aws", "--gce-preemption-notice=120s", "--aws-poll-interval=2s"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("args %q lack %q", c.Args, arg)
		}
	}
}

func checkAllNodes(t *testing.T, objs []*unstructured.Unstructured) {
	ds, _ := daemonSet(t, objs)
	if aff := ds.Spec.Template.Spec.Affinity; aff != nil {
		t.Errorf("affinity = %+v, want none", aff)
	}
}

func checkMonitoring(t *testing.T, objs []*unstructured.Unstructured) {
	var svc *corev1.Service
	for _, o := range objs {
		if o.GetKind() == "Service" && o.GetName() == "lastcall-metrics" {
			svc = into[corev1.Service](t, o)
		}
	}
	if svc == nil {
		t.Fatalf("no Service lastcall-metrics among %v", kinds(objs))
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" {
		t.Errorf("metrics Service = %+v, want headless with port metrics", svc.Spec)
	}
	ds, _ := daemonSet(t, objs)
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the agent pods", k, v)
		}
	}
	for _, kind := range []string{"ServiceMonitor", "PodMonitor"} {
		m := find(t, objs, kind)
		if m.GetAPIVersion() != "monitoring.coreos.com/v1" || m.GetLabels()["release"] != "prometheus" {
			t.Errorf("%s: apiVersion %s, labels %v", kind, m.GetAPIVersion(), m.GetLabels())
		}
	}
	pm := find(t, objs, "PodMonitor")
	eps, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["interval"] != "15s" {
		t.Errorf("PodMonitor endpoints = %v, want one with interval 15s", eps)
	}
}

// checkGKE: the ResourceQuota admits pods of the agent's priority class in
// the release namespace.
func checkGKE(t *testing.T, objs []*unstructured.Unstructured) {
	q := into[corev1.ResourceQuota](t, find(t, objs, "ResourceQuota"))
	ds, _ := daemonSet(t, objs)
	sel := q.Spec.ScopeSelector
	if q.Namespace != "lastcall-system" || sel == nil || len(sel.MatchExpressions) != 1 ||
		sel.MatchExpressions[0].ScopeName != corev1.ResourceQuotaScopePriorityClass ||
		sel.MatchExpressions[0].Operator != corev1.ScopeSelectorOpIn ||
		!slices.Equal(sel.MatchExpressions[0].Values, []string{ds.Spec.Template.Spec.PriorityClassName}) {
		t.Errorf("ResourceQuota %s/%s scope %+v, want the release namespace and priority class %s", q.Namespace, q.Name, sel,
			ds.Spec.Template.Spec.PriorityClassName)
	}
	if got := q.Spec.Hard[corev1.ResourcePods]; got.Value() != 5000 {
		t.Errorf("ResourceQuota pods %s, want 5000", got.String())
	}
}

func checkPolicyWarn(t *testing.T, objs []*unstructured.Unstructured) {
	n := 0
	for _, o := range objs {
		if o.GetKind() != "ValidatingAdmissionPolicyBinding" {
			continue
		}
		n++
		b := into[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, o)
		if want := []admissionregistrationv1.ValidationAction{"Warn", "Audit"}; !slices.Equal(b.Spec.ValidationActions, want) {
			t.Errorf("binding %s: validationActions %v, want %v", b.Name, b.Spec.ValidationActions, want)
		}
	}
	if n != 2 {
		t.Errorf("%d policy bindings, want 2", n)
	}
}

// TestSchemaRejects shows that values.schema.json refuses values the agent
// would refuse at start, and typos, before anything reaches the cluster.
func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct {
		file, want string
	}{
		{"testdata/invalid-action.yaml", "onRebalance"},
		{"testdata/invalid-cloud.yaml", "cloud"},
		{"testdata/invalid-on-blocked.yaml", "onBlocked"},
		{"testdata/invalid-typo.yaml", "onRebalence"},
		{"testdata/invalid-labels.yaml", "values"},
		{"testdata/invalid-policy-actions.yaml", "validationActions"},
		{"testdata/invalid-port-wellknown.yaml", "/metrics/port"},
		{"testdata/invalid-port-nodeport.yaml", "/agent/sidecarPort"},
		{"testdata/invalid-metadata.yaml", "gceHost"},
		{"testdata/invalid-taint-effect.yaml", "effect"},
		{"testdata/invalid-webhook-template.yaml", "template"},
		{"testdata/invalid-duration.yaml", "reserve"},
		{"testdata/invalid-aws-poll.yaml", "awsPollInterval"},
		{"testdata/invalid-foreign-taint.yaml", "extraTaints"},
		{"testdata/invalid-gogc.yaml", "gogc"},
	} {
		t.Run(strings.TrimSuffix(strings.TrimPrefix(tc.file, "testdata/invalid-"), ".yaml"), func(t *testing.T) {
			for _, cmd := range [][]string{
				templateArgs("lastcall", "lastcall-system", []string{tc.file}, nil),
				{"lint", chartDir, "--values", tc.file},
			} {
				out, stderr, err := runHelm(t, cmd...)
				if err == nil {
					t.Fatalf("helm %s accepted %s:\n%s", cmd[0], tc.file, out)
				}
				msg := out + stderr
				if !strings.Contains(msg, "values don't meet the specifications of the schema") || !strings.Contains(msg, tc.want) {
					t.Errorf("helm %s %s: want a schema error about %s, got:\n%s", cmd[0], tc.file, tc.want, msg)
				}
			}
		})
	}
}

func TestKubeVersion(t *testing.T) {
	args := templateArgs("lastcall", "lastcall-system", nil, nil)
	args[len(args)-1] = "1.29.9"
	_, stderr, err := runHelm(t, args...)
	if err == nil || !strings.Contains(stderr, "kubeVersion") {
		t.Errorf("Kubernetes 1.29: err %v, stderr:\n%s", err, stderr)
	}
}

// TestRBACIsPermissions compares the rendered ClusterRole with what the
// agent asks the apiserver for (and checks at start): neither may drift.
func TestRBACIsPermissions(t *testing.T) {
	objs := render(t, "lastcall", "lastcall-system", nil, nil)
	role := into[rbacv1.ClusterRole](t, find(t, objs, "ClusterRole"))
	var got []string
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: resourceNames or nonResourceURLs", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					if g == "*" || res == "*" || v == "*" {
						t.Errorf("rule %+v has a wildcard", r)
					}
					p := agent.Permission{Verb: v, Group: g, Resource: res}
					p.Resource, p.Subresource, _ = strings.Cut(res, "/")
					got = append(got, p.String())
				}
			}
		}
	}
	var want []string
	for _, p := range agent.Permissions() {
		want = append(want, p.String())
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole grants\n  %s\nagent.Permissions() needs\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	binding := into[rbacv1.ClusterRoleBinding](t, find(t, objs, "ClusterRoleBinding"))
	sa := find(t, objs, "ServiceAccount")
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 ||
		binding.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: sa.GetName(), Namespace: "lastcall-system"}) {
		t.Errorf("ClusterRoleBinding = %+v", binding)
	}
}

// TestReadmeValues checks that charts/lastcall/README.md's table documents
// every value in values.yaml, and names no value that is not there.
func TestReadmeValues(t *testing.T) {
	raw, err := os.ReadFile(chartDir + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(chartDir + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\|").FindAllStringSubmatch(string(readme), -1) {
		documented[m[1]] = true
	}
	if len(documented) == 0 {
		t.Fatal("README.md has no table of values (rows starting with | `key` |)")
	}
	for _, leaf := range leaves("", values) {
		ok := false
		for p := leaf; p != ""; p = parent(p) {
			ok = ok || documented[p]
		}
		if !ok {
			t.Errorf("value %s is not in README.md's table", leaf)
		}
	}
	for key := range documented {
		if !hasPath(values, key) {
			t.Errorf("README.md documents %s, which values.yaml lacks", key)
		}
	}
}

// leaves returns the dotted paths of the values that are not non-empty maps.
func leaves(prefix string, m map[string]any) []string {
	var out []string
	for k, v := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
			out = append(out, leaves(p, sub)...)
		} else {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func parent(path string) string {
	i := strings.LastIndex(path, ".")
	if i < 0 {
		return ""
	}
	return path[:i]
}

func hasPath(m map[string]any, path string) bool {
	head, rest, more := strings.Cut(path, ".")
	v, ok := m[head]
	if !ok || !more {
		return ok
	}
	sub, ok := v.(map[string]any)
	return ok && hasPath(sub, rest)
}

// checkMigration checks the values a team moving from
// aws-node-termination-handler writes: each reaches the agent or the
// injector as its own flag or field, none through extraArgs.
// foreignArgs returns the agent's --foreign-* flags, in order.
func foreignArgs(c corev1.Container) []string {
	var out []string
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--foreign-") {
			out = append(out, a)
		}
	}
	return out
}

func checkCoexistence(t *testing.T, objs []*unstructured.Unstructured) {
	_, c := daemonSet(t, objs)
	want := []string{"--foreign-sources=aws-node-termination-handler", "--foreign-taint=example.com/retiring=in-house",
		"--foreign-cordon=true", "--foreign-kubelet-shutdown=false"}
	if got := foreignArgs(c); !slices.Equal(got, want) {
		t.Errorf("agent's foreign flags %q, want %q", got, want)
	}
}

func checkMigration(t *testing.T, objs []*unstructured.Unstructured) {
	ds, c := daemonSet(t, objs)
	for _, arg := range []string{"--cloud=aws", "--aws-poll-interval=2s", "--reserve=3s", "--blocked-cutoff=8s",
		"--critical-window=15s", "--gce-maintenance-notice=1h", "--azure-acknowledge", "--taint-effect=NoExecute",
		"--out-of-service", "--webhook-url-file=/etc/lastcall/webhook/url", "--webhook-format=template",
		"--webhook-template-file=/etc/lastcall/webhook-template/body.tmpl", "--webhook-header=X-Team: platform",
		"--webhook-timeout=3s", "--webhook-attempts=4"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("agent args %q lack %q", c.Args, arg)
		}
	}
	const digest = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if !strings.HasSuffix(c.Image, digest) {
		t.Errorf("agent image %q, want pinned by digest", c.Image)
	}
	spec := ds.Spec.Template.Spec
	if ps := spec.SecurityContext; ps == nil || ps.RunAsUser != nil || ps.RunAsGroup != nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and no UID or GID (the platform assigns them)", ps)
	}
	if cs := c.SecurityContext; cs == nil || cs.RunAsUser != nil || cs.RunAsGroup != nil || cs.ReadOnlyRootFilesystem == nil {
		t.Errorf("container securityContext %+v: want no UID or GID, the rest kept", cs)
	}
	if dc := spec.DNSConfig; dc == nil || len(dc.Options) != 1 || dc.Options[0].Name != "ndots" {
		t.Errorf("dnsConfig %+v", dc)
	}
	for _, o := range objs {
		if o.GetLabels()["team"] != "platform" {
			t.Errorf("%s %s lacks the common label team=platform", o.GetKind(), o.GetName())
		}
	}
	if ds.Spec.Template.Labels["team"] != "platform" {
		t.Errorf("agent pod labels %v lack the common labels", ds.Spec.Template.Labels)
	}
	cm := into[corev1.ConfigMap](t, find(t, objs, "ConfigMap"))
	tmpl := cm.Data["body.tmpl"]
	if _, err := agent.ParseWebhookTemplate(tmpl); err != nil {
		t.Errorf("the chart's webhook template does not parse as the agent will: %v", err)
	}
	if ds.Spec.Template.Annotations["lastcall.dev/webhook-template"] == "" {
		t.Error("no template checksum on the pods: a new template would not restart the agents")
	}

	dep := into[appsv1.Deployment](t, find(t, injectorObjects(objs), "Deployment"))
	ispec := dep.Spec.Template.Spec
	if ispec.PriorityClassName != "system-cluster-critical" || len(ispec.TopologySpreadConstraints) != 1 ||
		len(ispec.Tolerations) != 1 || ispec.NodeSelector["node-role"] != "system" || ispec.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("injector pod spec: priority %q, spread %v, tolerations %v, nodeSelector %v",
			ispec.PriorityClassName, ispec.TopologySpreadConstraints, ispec.Tolerations, ispec.NodeSelector)
	}
	ic := ispec.Containers[0]
	if !slices.Contains(ic.Args, "--log-level=debug") || !slices.Contains(ic.Args, "--image-pull-secrets=regcred") ||
		!slices.Contains(ic.Args, "--sidecar-user=0") || ic.Resources.Requests.Cpu().String() != "20m" {
		t.Errorf("injector args %q, resources %v", ic.Args, ic.Resources)
	}
	if !strings.HasSuffix(ic.Image, digest) {
		t.Errorf("injector image %q, want pinned by digest", ic.Image)
	}
}

// TestChartBumpKeepsPods renders the chart and a copy whose version alone
// differs: the pod templates must be equal, or a chart-only upgrade would
// restart every agent.
func TestChartBumpKeepsPods(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lastcall")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bumped := regexp.MustCompile(`(?m)^version: .*$`).ReplaceAll(raw, []byte("version: 99.0.0"))
	if err := os.WriteFile(filepath.Join(dir, "Chart.yaml"), bumped, 0o644); err != nil {
		t.Fatal(err)
	}
	set := []string{"injector.enabled=true"}
	before := render(t, "lastcall", "lastcall-system", nil, set)
	out, stderr, err := runHelm(t, "template", "lastcall", dir, "--namespace", "lastcall-system", "--kube-version", kubeVersion, "--set", set[0])
	if err != nil {
		t.Fatalf("helm template of the bumped chart: %v\n%s", err, stderr)
	}
	after, err := decodeObjects(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"DaemonSet", "Deployment"} {
		b, _, _ := unstructured.NestedMap(find(t, before, kind).Object, "spec", "template")
		a, _, _ := unstructured.NestedMap(find(t, after, kind).Object, "spec", "template")
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s pod template changes with the chart version:\nbefore %v\nafter  %v", kind, b, a)
		}
		if got := find(t, after, kind).GetLabels()["helm.sh/chart"]; got != "lastcall-99.0.0" {
			t.Errorf("%s label helm.sh/chart = %q: the copy was not bumped", kind, got)
		}
	}
}

// TestWebhookURLNotInCommandLine: a URL given as agent.webhook.url reaches
// the agent as a file of a Secret the chart renders, never as an argument
// or variable (both readable in /proc).
func TestWebhookURLNotInCommandLine(t *testing.T) {
	const url = "https://hooks.example/services/T0/B0/secret-token"
	objs := render(t, "lastcall", "lastcall-system", nil, []string{"agent.webhook.url=" + url})
	ds, c := daemonSet(t, objs)
	for _, a := range c.Args {
		if strings.Contains(a, "secret-token") {
			t.Errorf("argument %q carries the URL", a)
		}
	}
	for _, e := range c.Env {
		if strings.Contains(e.Value, "secret-token") {
			t.Errorf("env %s carries the URL", e.Name)
		}
	}
	if !slices.Contains(c.Args, "--webhook-url-file=/etc/lastcall/webhook/url") {
		t.Errorf("args %q: want the URL file", c.Args)
	}
	secret := into[corev1.Secret](t, find(t, objs, "Secret"))
	vols := ds.Spec.Template.Spec.Volumes
	if secret.StringData["url"] != url || len(vols) != 1 || vols[0].Secret == nil || vols[0].Secret.SecretName != secret.Name {
		t.Errorf("Secret %s (url %q), volumes %+v: want the URL in the Secret the agent mounts", secret.Name, secret.StringData["url"], vols)
	}
}

// checkFlowControl: the agents' service account gets the chart's two
// priority levels, with the values given: its node updates one of their
// own, matched first, everything else the other.
func checkFlowControl(t *testing.T, objs []*unstructured.Unstructured) {
	levels := map[string]*unstructured.Unstructured{}
	var schemas []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "PriorityLevelConfiguration":
			levels[o.GetName()] = o
		case "FlowSchema":
			schemas = append(schemas, o)
		}
	}
	if len(levels) != 2 || len(schemas) != 2 {
		t.Fatalf("rendered %d priority levels and %d flow schemas, want 2 and 2", len(levels), len(schemas))
	}
	sa := find(t, objs, "ServiceAccount")
	precedence := map[string]int64{}
	for _, fs := range schemas {
		level, _, _ := unstructured.NestedString(fs.Object, "spec", "priorityLevelConfiguration", "name")
		plc := levels[level]
		if plc == nil {
			t.Fatalf("flow schema %s names level %q, not one of the chart's", fs.GetName(), level)
		}
		shares, _, _ := unstructured.NestedFieldNoCopy(plc.Object, "spec", "limited", "nominalConcurrencyShares")
		want := "100"
		if strings.HasSuffix(level, "-node") {
			want = "7"
		}
		if fmt.Sprint(shares) != want {
			t.Errorf("level %s: nominalConcurrencyShares = %v, want the value's %s", level, shares, want)
		}
		rules, _, _ := unstructured.NestedSlice(fs.Object, "spec", "rules")
		if !strings.Contains(fmt.Sprint(rules), "name:"+sa.GetName()) {
			t.Errorf("flow schema %s rules %v do not name the agents' service account %s", fs.GetName(), rules, sa.GetName())
		}
		p, _, _ := unstructured.NestedFieldNoCopy(fs.Object, "spec", "matchingPrecedence")
		precedence[level], _ = strconv.ParseInt(fmt.Sprint(p), 10, 64)
	}
	var node, other int64
	for level, p := range precedence {
		if strings.HasSuffix(level, "-node") {
			node = p
		} else {
			other = p
		}
	}
	if node == 0 || node >= other {
		t.Errorf("precedences: node updates %d, the rest %d; want the node updates' schema matched first", node, other)
	}
}

// TestAgentGoRuntime: the agent's GOMEMLIMIT is its container's memory
// limit (downward API), and agent.gogc sets GOGC, which is left out when
// empty.
func TestAgentGoRuntime(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		gogc string
	}{{nil, ""}, {[]string{"agent.gogc=50"}, "50"}} {
		_, c := daemonSet(t, render(t, "lastcall", "lastcall-system", nil, tc.set))
		var limit *corev1.ResourceFieldSelector
		gogc := ""
		for _, e := range c.Env {
			switch e.Name {
			case "GOMEMLIMIT":
				if e.ValueFrom != nil {
					limit = e.ValueFrom.ResourceFieldRef
				}
			case "GOGC":
				gogc = e.Value
			}
		}
		if limit == nil || limit.Resource != "limits.memory" {
			t.Errorf("set %v: GOMEMLIMIT from %+v, want the container's limits.memory", tc.set, limit)
		}
		if gogc != tc.gogc {
			t.Errorf("set %v: GOGC %q, want %q", tc.set, gogc, tc.gogc)
		}
	}
}

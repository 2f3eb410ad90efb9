package charts

import (
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/lastcall-dev/lastcall/agent"
	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/injector"
	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/watcher"
)

// external are the metrics the rules read that lastcall does not export:
// kube-state-metrics' DaemonSet status.
var external = []string{"kube_daemonset_status_desired_number_scheduled", "kube_daemonset_status_number_ready"}

// rulecheckPath returns hack/rulecheck's binary: $LASTCALL_RULECHECK, else
// .tools/rulecheck. A missing one fails the test, and skips it under -short.
func rulecheckPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv("LASTCALL_RULECHECK")
	if path == "" {
		path, _ = filepath.Abs(filepath.Join("..", ".tools", "rulecheck"))
	}
	if _, err := os.Stat(path); err != nil {
		if testing.Short() {
			t.Skipf("rulecheck not found at %s; skipped in -short mode", path)
		}
		t.Fatalf("rulecheck not found at %s (make test builds it from hack/rulecheck, or set LASTCALL_RULECHECK): %v", path, err)
	}
	return path
}

// rulecheckReport is hack/rulecheck's output.
type rulecheckReport struct {
	Rules   int                 `json:"rules"`
	Queries int                 `json:"queries"`
	Metrics map[string][]string `json:"metrics"`
	Alerts  []struct {
		Name        string            `json:"name"`
		For         string            `json:"for"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"alerts"`
}

// runbookBase is the default of metrics.prometheusRule.runbookURL.
const runbookBase = "https://github.com/lastcall-dev/lastcall/blob/main/docs/runbooks/"

// alertSeverity is each alert's severity by impact: critical only where
// work may be lost.
var alertSeverity = map[string]string{
	"LastcallWatcherBlind":          "warning",
	"LastcallDrainIncomplete":       "critical",
	"LastcallEvictionsFailed":       "warning",
	"LastcallSidecarNotInjected":    "warning",
	"LastcallAgentNotReady":         "warning",
	"LastcallInjectorErrors":        "warning",
	"LastcallWebhookDeliveryFailed": "warning",
}

// renderRules renders the chart's PrometheusRule with set and returns its
// spec as JSON.
func renderRules(t *testing.T, set ...string) string {
	t.Helper()
	objs := render(t, "lastcall", "lastcall-system", nil, append([]string{"metrics.prometheusRule.enabled=true"}, set...))
	spec, _, _ := unstructured.NestedMap(find(t, objs, "PrometheusRule").Object, "spec")
	rules, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return string(rules)
}

// rulecheck runs hack/rulecheck on files given as flag → content, with
// flags before them.
func rulecheck(t *testing.T, files map[string]string, flags ...string) (rulecheckReport, error) {
	t.Helper()
	dir := t.TempDir()
	args := slices.Clone(flags)
	for flag, content := range files {
		path := filepath.Join(dir, strings.TrimPrefix(flag, "-")+".json")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, flag, path)
	}
	cmd := exec.CommandContext(t.Context(), rulecheckPath(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return rulecheckReport{}, &exec.ExitError{ProcessState: cmd.ProcessState, Stderr: []byte(stderr.String())}
	}
	var rep rulecheckReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("rulecheck output: %v\n%s", err, out)
	}
	return rep, nil
}

// registryNames returns the names of every series the agent and the
// injector can export, as Prometheus stores them (histograms as _bucket,
// _sum and _count), from their real constructors.
func registryNames(t *testing.T) map[string]bool {
	t.Helper()
	reg := &histograms{Registry: prometheus.NewRegistry(), names: map[string]bool{}}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	agent.NewMetrics(reg)
	drainer.NewMetrics(reg)
	if _, err := watcher.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := sidecar.NewHub(sidecar.HubOptions{Pods: noPods{}, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	// The injector is a binary, and a registry, of its own.
	ireg := &histograms{Registry: prometheus.NewRegistry(), names: map[string]bool{}}
	injector.NewMetrics(ireg, "test")
	names := seriesNames(t, reg.Registry)
	for n := range seriesNames(t, ireg.Registry) {
		names[n] = true
	}
	for _, r := range []*histograms{reg, ireg} {
		for n := range r.names {
			names[n] = true
		}
	}
	return names
}

// histograms is a Registry that also records the series names of the
// histograms and summaries registered on it, which Gather shows only once
// they have a child (a labelled histogram has none before its first
// observation): name_bucket, name_sum and name_count.
type histograms struct {
	*prometheus.Registry
	names map[string]bool
}

// Register registers c and records its series names if it is a histogram
// or a summary.
func (h *histograms) Register(c prometheus.Collector) error {
	switch c.(type) {
	case prometheus.Histogram, *prometheus.HistogramVec, prometheus.Summary, *prometheus.SummaryVec:
		descs := make(chan *prometheus.Desc, 16)
		go func() {
			c.Describe(descs)
			close(descs)
		}()
		for d := range descs {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					h.names[m[1]+s] = true
				}
			}
		}
	}
	return h.Registry.Register(c)
}

// MustRegister registers cs, panicking on an error as the Registry does.
func (h *histograms) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := h.Register(c); err != nil {
			panic(err)
		}
	}
}

// fqName finds a metric's name in a Desc's String.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// seriesNames returns the names of the series reg's collectors describe.
func seriesNames(t *testing.T, reg *prometheus.Registry) map[string]bool {
	t.Helper()
	descs := make(chan *prometheus.Desc, 1000)
	go func() {
		reg.Describe(descs)
		close(descs)
	}()
	names := map[string]bool{}
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		names[m[1]] = true
	}
	// Histograms and summaries with a series are stored as several series.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetType().String() == "HISTOGRAM" || mf.GetType().String() == "SUMMARY" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[mf.GetName()+s] = true
			}
		}
	}
	return names
}

// noPods is a sidecar.PodIPs that knows no pod.
type noPods struct{}

func (noPods) PodIP(string, string) (string, bool) { return "", false }

// TestMonitoring renders the PrometheusRule and the dashboard and checks
// them with Prometheus's own rule and PromQL parsers (hack/rulecheck), then
// checks that every metric they name is one lastcall exports.
func TestMonitoring(t *testing.T) {
	objs := render(t, "lastcall", "lastcall-system", nil, []string{"metrics.prometheusRule.enabled=true", "metrics.dashboard.enabled=true"})
	rule := find(t, objs, "PrometheusRule")
	spec, _, _ := unstructured.NestedMap(rule.Object, "spec")
	rules, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cm := into[corev1.ConfigMap](t, find(t, objs, "ConfigMap"))
	dash := cm.Data["lastcall.json"]
	if dash == "" {
		t.Fatal("the dashboard ConfigMap has no lastcall.json")
	}
	rep, err := rulecheck(t, map[string]string{"-rules": string(rules), "-dashboard": dash}, "-conventions")
	if err != nil {
		t.Fatalf("rulecheck refused the chart's rules or dashboard: %v\n%s", err, err.(*exec.ExitError).Stderr)
	}
	t.Logf("rulecheck: %d rules, %d dashboard queries, %d metrics named", rep.Rules, rep.Queries, len(rep.Metrics))
	if rep.Rules != len(alertSeverity) || rep.Queries < 14 {
		t.Errorf("rulecheck saw %d rules and %d queries; want %d rules and every panel's queries", rep.Rules, rep.Queries, len(alertSeverity))
	}
	// Each alert: its severity by impact, a for (rulecheck -conventions
	// refuses less than 1m), and its runbook, which exists in docs/runbooks.
	var names []string
	for _, a := range rep.Alerts {
		names = append(names, a.Name)
		if want, ok := alertSeverity[a.Name]; !ok || a.Labels["severity"] != want {
			t.Errorf("alert %s: severity %q, want %q", a.Name, a.Labels["severity"], want)
		}
		if got, want := a.Annotations["runbook_url"], runbookBase+a.Name+".md"; got != want {
			t.Errorf("alert %s: runbook_url %q, want %q", a.Name, got, want)
		}
		if _, err := os.Stat(filepath.Join("..", "docs", "runbooks", a.Name+".md")); err != nil {
			t.Errorf("alert %s has no runbook: %v", a.Name, err)
		}
	}
	if len(names) != len(alertSeverity) {
		t.Errorf("alerts %v, want one each of %v", names, slices.Sorted(maps.Keys(alertSeverity)))
	}
	have := registryNames(t)
	for name, where := range rep.Metrics {
		if !have[name] && !slices.Contains(external, name) {
			t.Errorf("metric %s, named by %v, is not exported by lastcall", name, where)
		}
	}
	// What the issue asks the alerts to cover.
	for _, name := range []string{"lastcall_watcher_last_success_timestamp_seconds", "lastcall_drains_total", "lastcall_evictions_total",
		"kube_daemonset_status_number_ready"} {
		if len(rep.Metrics[name]) == 0 {
			t.Errorf("no rule or panel reads %s", name)
		}
	}
	// The injector's errors and the webhook's failed deliveries have an
	// alert of their own; the injector has panels.
	for name, where := range map[string]string{
		"lastcall_injector_errors_total":   "LastcallInjectorErrors",
		"lastcall_webhook_requests_total":  "LastcallWebhookDeliveryFailed",
		"lastcall_injector_injected_total": "panel Injector: admission requests (rate)",
	} {
		if !slices.Contains(rep.Metrics[name], where) {
			t.Errorf("%s is read by %v, want %q among them", name, rep.Metrics[name], where)
		}
	}
}

// TestAlertValues: metrics.prometheusRule.severity gives every alert one
// severity, and runbookURL moves every runbook_url.
func TestAlertValues(t *testing.T) {
	rules := renderRules(t, "metrics.prometheusRule.severity=page", "metrics.prometheusRule.runbookURL=https://wiki.example/lastcall/")
	rep, err := rulecheck(t, map[string]string{"-rules": rules})
	if err != nil {
		t.Fatalf("rulecheck: %v\n%s", err, err.(*exec.ExitError).Stderr)
	}
	if len(rep.Alerts) != len(alertSeverity) {
		t.Fatalf("%d alerts, want %d", len(rep.Alerts), len(alertSeverity))
	}
	for _, a := range rep.Alerts {
		if a.Labels["severity"] != "page" || a.Annotations["runbook_url"] != "https://wiki.example/lastcall/"+a.Name+".md" {
			t.Errorf("alert %s: severity %q, runbook_url %q; want page and the wiki's", a.Name, a.Labels["severity"], a.Annotations["runbook_url"])
		}
	}
	// A severity outside the mixin's values is the user's choice, but
	// rulecheck -conventions would refuse it.
	if _, err := rulecheck(t, map[string]string{"-rules": rules}, "-conventions"); err == nil {
		t.Error("rulecheck -conventions accepted severity page")
	}
}

// TestScrapesInjector: with the injector on, the ServiceMonitor selects a
// metrics Service for its replicas as well as the agents', and the
// PodMonitor selects its pods.
func TestScrapesInjector(t *testing.T) {
	objs := render(t, "lastcall", "lastcall-system", nil, []string{"injector.enabled=true", "metrics.serviceMonitor.enabled=true",
		"metrics.podMonitor.enabled=true"})
	sm := find(t, objs, "ServiceMonitor")
	smSel, _, _ := unstructured.NestedMap(sm.Object, "spec", "selector")
	pm := find(t, objs, "PodMonitor")
	pmSel, _, _ := unstructured.NestedMap(pm.Object, "spec", "selector")
	selector := func(m map[string]any) labels.Selector {
		var ls metav1.LabelSelector
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &ls); err != nil {
			t.Fatal(err)
		}
		sel, err := metav1.LabelSelectorAsSelector(&ls)
		if err != nil {
			t.Fatal(err)
		}
		return sel
	}
	// Services the ServiceMonitor scrapes: selected, with a port named
	// metrics; each must select the pods of one component.
	scraped := map[string]bool{}
	podLabels := map[string]map[string]string{}
	for _, o := range objs {
		switch o.GetKind() {
		case "DaemonSet":
			podLabels["node-agent"] = into[appsv1.DaemonSet](t, o).Spec.Template.Labels
		case "Deployment":
			podLabels["injector"] = into[appsv1.Deployment](t, o).Spec.Template.Labels
		}
	}
	for _, o := range objs {
		if o.GetKind() != "Service" || !selector(smSel).Matches(labels.Set(o.GetLabels())) {
			continue
		}
		svc := into[corev1.Service](t, o)
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "metrics" }) {
			continue
		}
		for component, pl := range podLabels {
			if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pl)) {
				scraped[component] = true
			}
		}
	}
	for _, component := range []string{"node-agent", "injector"} {
		if !scraped[component] {
			t.Errorf("the ServiceMonitor scrapes no Service with a metrics port that selects the %s pods", component)
		}
		if !selector(pmSel).Matches(labels.Set(podLabels[component])) {
			t.Errorf("the PodMonitor does not select the %s pods", component)
		}
	}
}

// TestRulecheckRefuses shows that the checker does refuse what Prometheus
// would: a broken expression, a bad annotation template, a broken panel
// query.
func TestRulecheckRefuses(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"expression": {"-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"rate(lastcall_drains_total[5m]"}]}]}`},
		"template":   {"-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","annotations":{"d":"{{ $labels.node "}}]}]}`},
		"duration":   {"-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","for":"5 minutes"}]}]}`},
		"panel":      {"-dashboard": `{"panels":[{"title":"p","targets":[{"expr":"sum by (le (x)"}]}]}`},
		// -conventions: each alert needs for >= 1m, a mixin severity and a
		// runbook_url.
		"no for":      {"-conventions": "", "-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","labels":{"severity":"warning"},"annotations":{"runbook_url":"https://x/A.md"}}]}]}`},
		"short for":   {"-conventions": "", "-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","for":"30s","labels":{"severity":"warning"},"annotations":{"runbook_url":"https://x/A.md"}}]}]}`},
		"severity":    {"-conventions": "", "-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","for":"5m","labels":{"severity":"high"},"annotations":{"runbook_url":"https://x/A.md"}}]}]}`},
		"no runbook":  {"-conventions": "", "-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","for":"5m","labels":{"severity":"warning"}}]}]}`},
		"bad runbook": {"-conventions": "", "-rules": `{"groups":[{"name":"g","rules":[{"alert":"A","expr":"up == 0","for":"5m","labels":{"severity":"warning"},"annotations":{"runbook_url":"docs/runbooks/A.md"}}]}]}`},
	} {
		t.Run(name, func(t *testing.T) {
			var flags []string
			if _, ok := files["-conventions"]; ok {
				flags = []string{"-conventions"}
				files = maps.Clone(files)
				delete(files, "-conventions")
			}
			if _, err := rulecheck(t, files, flags...); err == nil {
				t.Errorf("accepted %v", files)
			} else {
				t.Logf("refused: %s", strings.TrimSpace(string(err.(*exec.ExitError).Stderr)))
			}
		})
	}
}

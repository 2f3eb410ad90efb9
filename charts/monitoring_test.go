package charts

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

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
}

// rulecheck runs hack/rulecheck on files given as flag → content.
func rulecheck(t *testing.T, files map[string]string) (rulecheckReport, error) {
	t.Helper()
	dir := t.TempDir()
	var args []string
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
	reg := prometheus.NewRegistry()
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
	ireg := prometheus.NewRegistry()
	injector.NewMetrics(ireg, "test")
	names := seriesNames(t, reg)
	for n := range seriesNames(t, ireg) {
		names[n] = true
	}
	return names
}

// seriesNames returns the names of the series reg's collectors describe.
func seriesNames(t *testing.T, reg *prometheus.Registry) map[string]bool {
	t.Helper()
	descs := make(chan *prometheus.Desc, 1000)
	go func() {
		reg.Describe(descs)
		close(descs)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		names[m[1]] = true
	}
	// Histograms and summaries are stored as several series.
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
	rep, err := rulecheck(t, map[string]string{"-rules": string(rules), "-dashboard": dash})
	if err != nil {
		t.Fatalf("rulecheck refused the chart's rules or dashboard: %v\n%s", err, err.(*exec.ExitError).Stderr)
	}
	t.Logf("rulecheck: %d rules, %d dashboard queries, %d metrics named", rep.Rules, rep.Queries, len(rep.Metrics))
	if rep.Rules != 5 || rep.Queries < 10 {
		t.Errorf("rulecheck saw %d rules and %d queries; want 5 rules and every panel's queries", rep.Rules, rep.Queries)
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
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := rulecheck(t, files); err == nil {
				t.Errorf("accepted %v", files)
			} else {
				t.Logf("refused: %s", strings.TrimSpace(string(err.(*exec.ExitError).Stderr)))
			}
		})
	}
}

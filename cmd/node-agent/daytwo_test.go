package main_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// podEvents returns the reasons of the Events on pod ns/name.
func (c *cluster) podEvents(t testing.TB, name string) []string {
	t.Helper()
	list, err := c.env.Client.CoreV1().Events(c.ns).List(t.Context(), metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.kind": "Pod", "involvedObject.name": name}.String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Type+"/"+e.Reason)
	}
	return out
}

// flakyHook answers 503 to its first request and 200 to the others, and
// keeps the bodies and headers.
type flakyHook struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies []string
	teams  []string
}

func newFlakyHook(t testing.TB) *flakyHook {
	h := &flakyHook{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.bodies = append(h.bodies, string(body))
		h.teams = append(h.teams, r.Header.Get("X-Team"))
		first := len(h.bodies) == 1
		h.mu.Unlock()
		if first {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *flakyHook) got() (bodies, teams []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.bodies), slices.Clone(h.teams)
}

// TestDayTwo runs the agent binary through what an SRE watches: a notice
// ignored by policy, a pod that missed its sidecar, a drain that a budget
// leaves incomplete. Each shows as Warning Events on the node and on the
// pods; the taint names the kind; the out-of-service taint follows the
// drain; the webhook, rendered from a template and read from a URL file, is
// retried after a 503; and every agent series the chart's dashboard queries
// exists afterwards.
func TestDayTwo(t *testing.T) {
	c := newClusterWith(t, 2, kubetest.KubeletOptions{FinishAtOnce: true})
	ctx := t.Context()
	rs, err := c.env.CreateReplicaSet(ctx, c.ns, "guarded", 1)
	if err != nil {
		t.Fatal(err)
	}
	missed := kubetest.NewPod(c.ns, "worker-missed-sidecar", c.node, kubetest.WithGrace(2),
		kubetest.WithLabels(map[string]string{"app": "worker", "lastcall.dev/inject": "enabled"}))
	guarded := kubetest.NewPod(c.ns, "worker-guarded", c.node, kubetest.WithGrace(2),
		kubetest.WithLabels(map[string]string{"app": "guarded"}), kubetest.WithOwner("ReplicaSet", rs.Name, rs.UID))
	if _, err := c.env.CreatePods(ctx, missed, guarded); err != nil {
		t.Fatal(err)
	}
	if err := createBudget(t, c, "guarded", 1); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	hook := newFlakyHook(t)
	urlFile, tmplFile := filepath.Join(dir, "url"), filepath.Join(dir, "body.tmpl")
	if err := os.WriteFile(urlFile, []byte(hook.srv.URL+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tmpl := `{"summary": {{ json (printf "%s: %s notice, %d pods" .Node .Kind (len .Pods)) }}, "deadline": {{ json (rfc3339 .Deadline) }}}`
	if err := os.WriteFile(tmplFile, []byte(tmpl), 0o600); err != nil {
		t.Fatal(err)
	}
	trigger := freeAddr(t)
	p := c.startAgent(t, "--cloud=sim", "--sim-listen="+trigger, "--on-rebalance=none", "--on-blocked=leave",
		"--out-of-service", "--webhook-url-file="+urlFile, "--webhook-format=template", "--webhook-template-file="+tmplFile,
		"--webhook-header=X-Team: sre")
	post := func(body string) {
		t.Helper()
		resp, err := http.Post("http://"+trigger+"/notice", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("trigger answered %d", resp.StatusCode)
		}
	}

	// The injector missed a pod: said once, on the pod.
	eventually(t, 10*time.Second, "SidecarNotInjected on the pod", func() bool {
		return slices.Contains(c.podEvents(t, missed.Name), "Warning/SidecarNotInjected")
	})
	if ev := c.podEvents(t, "worker-0"); slices.Contains(ev, "Warning/SidecarNotInjected") {
		t.Errorf("a pod that did not ask for the sidecar got %v", ev)
	}

	// A notice the policy ignores: Warning on the node and on every pod.
	post(`{"kind":"rebalance","id":"ignored-1"}`)
	eventually(t, 10*time.Second, "NoticeIgnored on the node and the pods", func() bool {
		for _, pod := range []string{"worker-0", "worker-1", missed.Name, guarded.Name} {
			if !slices.Contains(c.podEvents(t, pod), "Warning/NoticeIgnored") {
				return false
			}
		}
		return len(c.events(t, "NoticeIgnored")) == 1
	})
	if ev := c.podEvents(t, "lastcall-agent"); len(ev) != 0 {
		t.Errorf("the agent's own pod got Events %v", ev)
	}
	if c.cordoned(t) {
		t.Fatal("an ignored notice cordoned the node")
	}

	// A spot interruption whose drain a budget leaves incomplete.
	start := time.Now()
	post(`{"kind":"spot-interruption","id":"spot-1","seconds":6}`)
	eventually(t, 10*time.Second, "SpotInterruption Event on the node", func() bool { return len(c.events(t, "SpotInterruption")) == 1 })
	eventually(t, 10*time.Second, "taint lastcall.dev/draining=sim.spot-interruption:NoSchedule", func() bool {
		return slices.ContainsFunc(c.node_(t).Spec.Taints, func(tt corev1.Taint) bool {
			return tt.Key == drainer.TaintKey && tt.Value == "sim.spot-interruption" && tt.Effect == corev1.TaintEffectNoSchedule
		})
	})
	// The budget's refusal is said at once, not only when the drain ends.
	eventually(t, 10*time.Second, "EvictionRefused on the guarded pod and the node", func() bool {
		return slices.Contains(c.podEvents(t, guarded.Name), "Warning/EvictionRefused") && len(c.events(t, "EvictionRefused")) == 1
	})
	refusedAfter := time.Since(start)
	t.Logf("eviction refusal reported %v after the notice", refusedAfter.Round(time.Millisecond))
	eventually(t, 20*time.Second, "Drained, as a Warning", func() bool {
		for _, e := range c.events(t, "Drained") {
			return e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "drained=false") && strings.Contains(e.Message, "blocked=1")
		}
		return false
	})
	drainedAfter := time.Since(start)
	t.Logf("incomplete drain reported %v after the notice", drainedAfter.Round(time.Millisecond))
	if refusedAfter >= drainedAfter {
		t.Errorf("the refusal was reported %v after the notice, not before the drain ended (%v)", refusedAfter, drainedAfter)
	}
	eventually(t, 10*time.Second, "EvictionBlocked on the guarded pod", func() bool {
		return slices.Contains(c.podEvents(t, guarded.Name), "Warning/EvictionBlocked")
	})
	eventually(t, 10*time.Second, "out-of-service taint after the drain", func() bool {
		return slices.ContainsFunc(c.node_(t).Spec.Taints, func(tt corev1.Taint) bool {
			return tt.Key == drainer.OutOfServiceKey && tt.Effect == corev1.TaintEffectNoExecute
		})
	})

	// What NOTES.txt tells the user to run finds them.
	warnings, err := c.env.Client.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "source=lastcall,type=Warning"})
	if err != nil {
		t.Fatalf("the NOTES.txt field selector: %v", err)
	}
	reasons := map[string]bool{}
	for _, e := range warnings.Items {
		if e.InvolvedObject.Name == c.node || e.InvolvedObject.Namespace == c.ns {
			reasons[e.Reason] = true
		}
	}
	for _, r := range []string{"SpotInterruption", "NoticeIgnored", "Drained", "EvictionRefused", "EvictionBlocked", "SidecarNotInjected"} {
		if !reasons[r] {
			t.Errorf("source=lastcall,type=Warning lacks %s: %v", r, reasons)
		}
	}

	// The webhook: one body per notice that acts, the first try answered
	// 503 and retried.
	bodies, teams := hook.got()
	want := fmt.Sprintf(`{"summary": "%s: spot-interruption notice, 5 pods", "deadline": `, c.node) // the agent's own pod too
	if len(bodies) != 2 || bodies[0] != bodies[1] || !strings.HasPrefix(bodies[0], want) {
		t.Errorf("webhook bodies %q, want the same %s... twice (503, then 200)", bodies, want)
	}
	if !slices.Equal(teams, []string{"sre", "sre"}) {
		t.Errorf("X-Team headers %q", teams)
	}
	for name, want := range map[string]float64{
		`lastcall_webhook_requests_total{result="sent"}`:    1,
		`lastcall_webhook_requests_total{result="retried"}`: 1,
		`lastcall_drains_total{result="incomplete"}`:        1,
		`lastcall_pods_without_sidecar_total`:               1,
		`lastcall_evictions_total{outcome="blocked"}`:       1,
	} {
		if got := p.metric(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := p.metric(t, `lastcall_notice_deadline_timestamp_seconds{kind="spot-interruption"}`); got < float64(start.Unix()) {
		t.Errorf("deadline gauge %v, want the notice's deadline", got)
	}
	if got := p.metric(t, `lastcall_watcher_last_success_timestamp_seconds{source="sim"}`); got < float64(start.Add(-time.Minute).Unix()) {
		t.Errorf("watcher last success %v, want a recent time", got)
	}

	// Every agent series the dashboard queries is there after a drain.
	dash, err := os.ReadFile("../../charts/lastcall/files/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	_, exposed := p.get("/metrics")
	names := regexp.MustCompile(`\b(?:lastcall|process|go)_[a-z0-9_]+\b`).FindAllString(string(dash), -1)
	slices.Sort(names)
	names = slices.Compact(names)
	for _, name := range names {
		if strings.HasPrefix(name, "lastcall_injector_") {
			continue // the injector's, another binary
		}
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(exposed) {
			t.Errorf("the dashboard queries %s; the agent exposes no such series after a drain", name)
		}
	}
	t.Logf("the dashboard's %d metric names all exposed: %v", len(names), names)
}

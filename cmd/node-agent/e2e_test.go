package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/lastcall-dev/lastcall/agent"
	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/ec2mock"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/watcher"
)

// These tests run the built node-agent binary against a real control plane
// and real (or faithfully faked) metadata servers, and look only at what an
// operator would: the node, the pods, Events, and the metrics endpoint.

var (
	env         *kubetest.Env
	agentBin    string
	sidecarBin  string
	injectorBin string
	// binExec runs the binaries above through an emulator when set
	// (LASTCALL_EXEC, e.g. qemu-aarch64).
	binExec string
)

// TestMain builds the node-agent, sidecar and injector binaries for this
// machine, or takes those named by LASTCALL_AGENT_BIN, LASTCALL_SIDECAR_BIN
// and LASTCALL_INJECTOR_BIN (`make test-arm64`: the linux/arm64 binaries of
// `make image`, run by LASTCALL_EXEC=qemu-aarch64, checked to be for
// LASTCALL_BIN_ARCH).
func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "node-agent-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binExec = os.Getenv("LASTCALL_EXEC")
		for _, b := range []struct {
			bin      *string
			env, pkg string
		}{
			{&agentBin, "LASTCALL_AGENT_BIN", "."},
			{&sidecarBin, "LASTCALL_SIDECAR_BIN", "../sidecar"},
			{&injectorBin, "LASTCALL_INJECTOR_BIN", "../injector"},
		} {
			if *b.bin = os.Getenv(b.env); *b.bin != "" {
				if err := checkArch(*b.bin, os.Getenv("LASTCALL_BIN_ARCH")); err != nil {
					fmt.Fprintf(os.Stderr, "%s: %v\n", b.env, err)
					return 1
				}
				continue
			}
			*b.bin = filepath.Join(dir, filepath.Base(b.pkg))
			if b.pkg == "." {
				*b.bin = filepath.Join(dir, "node-agent")
			}
			// As make build builds them: static, stripped (what the
			// images hold, and what the benchmarks measure).
			build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", *b.bin, b.pkg)
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.pkg, err, out)
				return 1
			}
		}
		return kubetest.Main(m, &env)
	}()
	os.Exit(code)
}

// command runs bin with args, through binExec when set.
func command(bin string, args ...string) *exec.Cmd {
	if binExec != "" {
		return exec.Command(binExec, append([]string{bin}, args...)...)
	}
	return exec.Command(bin, args...)
}

// cluster is one node with worker pods, a DaemonSet pod and the agent's own
// pod, and a kubelet that ends each deletion after the pod's grace period.
type cluster struct {
	env        *kubetest.Env
	node, ns   string
	kubeconfig string
	user       string // the agent's user, in the apiserver's audit log
	kubelet    *kubetest.Kubelet
}

func newCluster(t testing.TB, workers int, opts ...kubetest.PodOption) *cluster {
	t.Helper()
	return newClusterWith(t, workers, kubetest.KubeletOptions{}, opts...)
}

func newClusterWith(t testing.TB, workers int, kopts kubetest.KubeletOptions, opts ...kubetest.PodOption) *cluster {
	t.Helper()
	e := kubetest.Need(t, env)
	ctx := t.Context()
	c := &cluster{env: e, node: e.UniqueName("node")}
	if _, err := e.CreateNode(ctx, c.node, map[string]string{"lastcall.dev/preemptible": "true"}); err != nil {
		t.Fatal(err)
	}
	var err error
	if c.ns, err = e.CreateNamespace(ctx, "e2e"); err != nil {
		t.Fatal(err)
	}
	c.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if c.user, err = e.WriteKubeconfig(c.kubeconfig); err != nil {
		t.Fatal(err)
	}
	ds, err := e.CreateDaemonSet(ctx, c.ns, "lastcall")
	if err != nil {
		t.Fatal(err)
	}
	pods := []*corev1.Pod{kubetest.NewPod(c.ns, "lastcall-agent", c.node, kubetest.WithOwner("DaemonSet", ds.Name, ds.UID))}
	for i := range workers {
		pods = append(pods, kubetest.NewPod(c.ns, fmt.Sprintf("worker-%d", i), c.node, append([]kubetest.PodOption{kubetest.WithGrace(2)}, opts...)...))
	}
	if _, err := e.CreatePods(ctx, pods...); err != nil {
		t.Fatal(err)
	}
	k, stop := e.StartKubelet(context.Background(), c.node, kopts)
	t.Cleanup(stop)
	c.kubelet = k
	return c
}

func (c *cluster) node_(t testing.TB) *corev1.Node {
	t.Helper()
	n, err := c.env.Client.CoreV1().Nodes().Get(t.Context(), c.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (c *cluster) cordoned(t testing.TB) bool {
	n := c.node_(t)
	_, rec := drainer.RecordOf(n)
	for _, taint := range n.Spec.Taints {
		if taint.Key == drainer.TaintKey && n.Spec.Unschedulable && rec {
			return true
		}
	}
	return false
}

func (c *cluster) workersLeft(t testing.TB) int {
	t.Helper()
	list, err := c.env.Client.CoreV1().Pods(c.ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range list.Items {
		if strings.HasPrefix(p.Name, "worker-") {
			n++
		}
	}
	return n
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("%s: not within %v", what, timeout)
	}
}

// agentProc is one run of the node-agent binary.
type agentProc struct {
	cmd    *exec.Cmd
	addr   string // metrics and health
	hub    string // the sidecars' endpoint
	out    *ec2mock.Buffer
	done   chan struct{}
	exited error
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startAgent runs the agent for the cluster's node with extra flags and
// waits until /readyz answers 200.
func (c *cluster) startAgent(t testing.TB, args ...string) *agentProc {
	t.Helper()
	p := c.launchAgent(t, args...)
	eventually(t, 20*time.Second, "agent ready", func() bool {
		select {
		case <-p.done:
			t.Fatalf("node-agent exited: %v\n%s", p.exited, p.out.String())
		default:
		}
		code, _ := p.get("/readyz")
		return code == http.StatusOK
	})
	return p
}

// get fetches path from the agent's metrics and health server.
func (p *agentProc) get(path string) (int, string) {
	resp, err := http.Get("http://" + p.addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// launchAgent runs the agent for the cluster's node with extra flags.
func (c *cluster) launchAgent(t testing.TB, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{addr: freeAddr(t), hub: freeAddr(t), out: &ec2mock.Buffer{}, done: make(chan struct{})}
	args = append([]string{
		"--node-name=" + c.node, "--pod-name=lastcall-agent", "--pod-namespace=" + c.ns,
		"--kubeconfig=" + c.kubeconfig, "--listen=" + p.addr, "--sidecar-listen=" + p.hub, "--log-format=text",
		"--reserve=500ms", "--blocked-cutoff=2s",
	}, args...)
	p.cmd = command(agentBin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.exited = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("node-agent output:\n%s", p.out.String())
		}
	})
	return p
}

func (p *agentProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *agentProc) kill9() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// metric returns the value of the sample whose line starts with name (labels
// included, as exposed), or -1.
func (p *agentProc) metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(line[len(name):]), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	return -1
}

// metricSum returns the sum of the samples of name whose labels include
// every one of labels (each `key="value"`), or -1 when none does.
func (p *agentProc) metricSum(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		set, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		have := strings.Split(set, ",")
		if !slices.ContainsFunc(labels, func(l string) bool { return !slices.Contains(have, l) }) {
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			sum, found = sum+v, true
		}
	}
	if !found {
		return -1
	}
	return sum
}

// gceMetadata is an httptest GCE metadata server for instance/preempted and
// instance/maintenance-event: Metadata-Flavor required, ETags, and
// wait_for_change requests that hang until the value changes.
type gceMetadata struct {
	srv     *httptest.Server
	mu      sync.Mutex
	values  map[string]string
	changed chan struct{} // closed and replaced on every change
	delay   time.Duration // before every answer: a slow metadata server
}

// slow makes every answer wait d.
func (g *gceMetadata) slow(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.delay = d
}

func newGCEMetadata(t testing.TB) *gceMetadata {
	return newGCEMetadataOn(t, "127.0.0.1:0")
}

// newGCEMetadataOn serves the fake on addr.
func newGCEMetadataOn(t testing.TB, addr string) *gceMetadata {
	g := &gceMetadata{values: map[string]string{
		"instance/preempted": "FALSE", "instance/maintenance-event": "NONE",
	}, changed: make(chan struct{})}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	g.srv = httptest.NewUnstartedServer(http.HandlerFunc(g.serve))
	g.srv.Listener.Close()
	g.srv.Listener = ln
	g.srv.Start()
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gceMetadata) host() string { return strings.TrimPrefix(g.srv.URL, "http://") }

func (g *gceMetadata) set(key, value string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.values[key] = value
	close(g.changed)
	g.changed = make(chan struct{})
}

func etag(v string) string { return strconv.Quote(fmt.Sprintf("%x", v)) }

func (g *gceMetadata) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "missing Metadata-Flavor", http.StatusForbidden)
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	g.mu.Lock()
	delay := g.delay
	g.mu.Unlock()
	select {
	case <-time.After(delay):
	case <-r.Context().Done():
		return
	}
	for {
		g.mu.Lock()
		v, ok := g.values[key]
		changed := g.changed
		g.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		if q.Get("wait_for_change") == "true" && q.Get("last_etag") == etag(v) {
			select {
			case <-changed:
				continue
			case <-r.Context().Done():
				return
			case <-time.After(30 * time.Second):
			}
		}
		w.Header().Set("Metadata-Flavor", "Google")
		w.Header().Set("ETag", etag(v))
		_, _ = io.WriteString(w, v)
		return
	}
}

func (c *cluster) events(t testing.TB, reason string) []corev1.Event {
	t.Helper()
	list, err := c.env.Client.CoreV1().Events(metav1.NamespaceAll).List(t.Context(), metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.kind": "Node", "involvedObject.name": c.node, "reason": reason}.String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// noticeEvents counts the Events on the node that a notice's arrival
// records, whose reason names its kind.
func (c *cluster) noticeEvents(t testing.TB) int {
	t.Helper()
	n := 0
	for _, k := range []watcher.Kind{watcher.KindPreemption, watcher.KindSpotInterruption, watcher.KindRebalance, watcher.KindMaintenance, watcher.KindTermination} {
		n += len(c.events(t, agent.EventReason(k)))
	}
	return n
}

func (c *cluster) condition(t testing.TB) (corev1.NodeCondition, bool) {
	for _, cond := range c.node_(t).Status.Conditions {
		if cond.Type == agent.ConditionType {
			return cond, true
		}
	}
	return corev1.NodeCondition{}, false
}

// assertDrained checks what a finished drain of a notice of source leaves
// behind.
func (c *cluster) assertDrained(t testing.TB, p *agentProc, deadline time.Time, source string) {
	t.Helper()
	eventually(t, time.Until(deadline), "workers gone before the deadline", func() bool { return c.workersLeft(t) == 0 })
	if !c.cordoned(t) {
		t.Error("node not cordoned and tainted")
	}
	if cond, ok := c.condition(t); !ok || cond.Status != corev1.ConditionTrue {
		t.Errorf("condition %s = %+v, %v; want True", agent.ConditionType, cond, ok)
	}
	eventually(t, 10*time.Second, "notice Event", func() bool { return c.noticeEvents(t) >= 1 })
	if _, err := c.env.Client.CoreV1().Pods(c.ns).Get(t.Context(), "lastcall-agent", metav1.GetOptions{}); err != nil {
		t.Errorf("the agent's own DaemonSet pod was touched: %v", err)
	}
	eventually(t, 10*time.Second, "drain metrics", func() bool {
		return p.metric(t, `lastcall_drains_total{result="drained"}`) == 1
	})
	// The cordon may come from another notice of the source (an AWS
	// rebalance recommendation seen before the spot notice).
	if got := p.metricSum(t, "lastcall_notice_to_cordon_seconds_count", `source="`+source+`"`); got < 1 {
		t.Errorf("lastcall_notice_to_cordon_seconds_count{source=%q} = %v, want at least 1", source, got)
	}
	if got := p.metric(t, `lastcall_evictions_total{outcome="evicted"}`); got < 1 {
		t.Errorf("lastcall_evictions_total{evicted} = %v", got)
	}
}

// webhookSink records the webhook calls it gets.
type webhookSink struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls []webhookCall
}

type webhookCall struct {
	at      time.Time
	payload agent.WebhookPayload
	err     error
}

func newWebhookSink(t testing.TB) *webhookSink {
	w := &webhookSink{}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var call webhookCall
		call.at = time.Now()
		call.err = json.NewDecoder(r.Body).Decode(&call.payload)
		w.mu.Lock()
		w.calls = append(w.calls, call)
		w.mu.Unlock()
	}))
	t.Cleanup(w.srv.Close)
	return w
}

func (w *webhookSink) got() []webhookCall {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.calls)
}

func TestGCEPreemption(t *testing.T) {
	c := newCluster(t, 5)
	gce := newGCEMetadata(t)
	hook := newWebhookSink(t)
	p := c.startAgent(t, "--cloud=gce", "--gce-metadata-host="+gce.host(), "--webhook-url="+hook.srv.URL)
	if c.cordoned(t) {
		t.Fatal("cordoned before any notice")
	}

	gce.set("instance/preempted", "TRUE")
	deadline := time.Now().Add(30 * time.Second)
	eventually(t, 10*time.Second, "workers start terminating", func() bool {
		for _, e := range c.kubelet.Events() {
			if e.What == "terminating" {
				return true
			}
		}
		return false
	})
	c.assertDrained(t, p, deadline, "gce")
	var lastGone time.Time
	for _, e := range c.kubelet.Events() {
		if e.What == "deleted" && e.Time.After(lastGone) {
			lastGone = e.Time
		}
	}
	calls := hook.got()
	if len(calls) != 1 {
		t.Fatalf("webhook called %d times, want 1", len(calls))
	}
	if call := calls[0]; call.err != nil || call.payload.Node != c.node || call.payload.Kind != "preemption" ||
		call.payload.Action != "drain" || len(call.payload.Pods) != 6 || !call.at.Before(lastGone) {
		t.Errorf("webhook call %+v (last pod gone at %v): want the node, kind, action and 6 pods, before the drain ended", call, lastGone)
	}
	if got := p.metric(t, `lastcall_watcher_notices_total{kind="preemption",source="gce",state="active"}`); got != 1 {
		t.Errorf("lastcall_watcher_notices_total = %v, want 1", got)
	}
	if left := p.metric(t, `lastcall_drain_deadline_left_seconds_sum{kind="preemption",source="gce"}`); left <= 0 {
		t.Errorf("drain of the GCE preemption ended %v s before the deadline (-1: no series with those labels)", left)
	}
}

func TestAWSSpotInterruption(t *testing.T) {
	c := newCluster(t, 5)
	// The notice appears 2 s after the mock starts, 2 minutes before the stop.
	mock := ec2mock.Start(t, ec2mock.FreePort(t), "spot", "-a", "terminate", "-d", "2")
	p := c.startAgent(t, "--cloud=aws", "--aws-imds-endpoint="+mock.URL)
	eventually(t, 15*time.Second, "cordon after the spot notice", func() bool { return c.cordoned(t) })
	c.assertDrained(t, p, time.Now().Add(2*time.Minute), "aws")
	if got := p.metric(t, `lastcall_watcher_notices_total{kind="spot-interruption",source="aws",state="active"}`); got != 1 {
		t.Errorf("spot notices = %v, want 1", got)
	}
}

func TestAWSScheduledEventCanceledUndoesCordon(t *testing.T) {
	c := newCluster(t, 2)
	port := ec2mock.FreePort(t)
	notBefore := time.Now().Add(90 * time.Second).UTC().Format(time.RFC3339)
	mock := ec2mock.Start(t, port, "events", "-o", "instance-stop", "-t", "active", "-b", notBefore)
	c.startAgent(t, "--cloud=aws", "--aws-imds-endpoint="+mock.URL, "--on-maintenance=cordon")
	eventually(t, 15*time.Second, "cordon for the scheduled event", func() bool { return c.cordoned(t) })
	if c.workersLeft(t) != 2 {
		t.Error("--on-maintenance=cordon evicted pods")
	}

	// The event is canceled: the mock comes back on the same port saying so.
	mock.Stop()
	ec2mock.Start(t, port, "events", "-o", "instance-stop", "-t", "canceled", "-b", notBefore)
	eventually(t, 20*time.Second, "uncordon after cancellation", func() bool {
		n := c.node_(t)
		_, rec := drainer.RecordOf(n)
		return !n.Spec.Unschedulable && len(n.Spec.Taints) == 0 && !rec
	})
	eventually(t, 10*time.Second, "condition cleared", func() bool {
		cond, ok := c.condition(t)
		return ok && cond.Status == corev1.ConditionFalse
	})
	eventually(t, 10*time.Second, "MaintenanceCanceled event", func() bool { return len(c.events(t, "MaintenanceCanceled")) == 1 })
}

func TestDryRunChangesNothing(t *testing.T) {
	c := newCluster(t, 3)
	trigger := freeAddr(t)
	p := c.startAgent(t, "--cloud=sim", "--sim-listen="+trigger, "--dry-run")
	resp, err := http.Post("http://"+trigger+"/notice", "application/json", strings.NewReader(`{"kind":"preemption","seconds":30,"id":"dry"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("trigger answered %d", resp.StatusCode)
	}
	eventually(t, 10*time.Second, "dry-run plan logged", func() bool {
		return strings.Contains(p.out.String(), "dry run: plan done") && strings.Contains(p.out.String(), "would_evict=3")
	})
	before := c.node_(t)
	if before.Spec.Unschedulable || len(before.Spec.Taints) != 0 || c.workersLeft(t) != 3 {
		t.Errorf("dry run changed the cluster: unschedulable=%v taints=%v workers=%d",
			before.Spec.Unschedulable, before.Spec.Taints, c.workersLeft(t))
	}
	if _, ok := c.condition(t); ok || c.noticeEvents(t) != 0 {
		t.Error("dry run set the condition or recorded an Event")
	}
}

func TestKillMidDrainAndRestart(t *testing.T) {
	// Two of the workers are behind a budget that allows no disruption: the
	// drain waits for the cut-off, and the agent is killed while it waits.
	c := newCluster(t, 3)
	ctx := t.Context()
	rs, err := c.env.CreateReplicaSet(ctx, c.ns, "guarded", 2)
	if err != nil {
		t.Fatal(err)
	}
	var guarded []*corev1.Pod
	for i := range 2 {
		guarded = append(guarded, kubetest.NewPod(c.ns, fmt.Sprintf("worker-guarded-%d", i), c.node, kubetest.WithGrace(2),
			kubetest.WithLabels(map[string]string{"app": "guarded"}), kubetest.WithOwner("ReplicaSet", rs.Name, rs.UID)))
	}
	if _, err := c.env.CreatePods(ctx, guarded...); err != nil {
		t.Fatal(err)
	}
	if err := createBudget(t, c, "guarded", 2); err != nil {
		t.Fatal(err)
	}

	noticeFile := filepath.Join(t.TempDir(), "notice.json")
	deadline := time.Now().Add(30 * time.Second)
	p := c.startAgent(t, "--cloud=sim", "--sim-file="+noticeFile, "--blocked-cutoff=10s")
	notice := fmt.Sprintf(`{"kind":"preemption","id":"kill-test","deadline":%q}`, deadline.UTC().Format(time.RFC3339Nano))
	if err := os.WriteFile(noticeFile, []byte(notice), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "unguarded workers gone", func() bool { return c.workersLeft(t) == 2 })
	if !c.cordoned(t) {
		t.Fatal("not cordoned")
	}
	p.kill9()

	p2 := c.startAgent(t, "--cloud=sim", "--sim-file="+noticeFile, "--blocked-cutoff=10s")
	c.assertDrainedAfterRestart(t, p2, deadline)
}

func (c *cluster) assertDrainedAfterRestart(t testing.TB, p *agentProc, deadline time.Time) {
	t.Helper()
	eventually(t, time.Until(deadline), "guarded workers gone before the deadline", func() bool { return c.workersLeft(t) == 0 })
	if !strings.Contains(p.out.String(), "node was cordoned by an earlier run") {
		t.Error("restarted agent did not notice the earlier run")
	}
	eventually(t, 10*time.Second, "deleted past the cut-off", func() bool {
		return p.metric(t, `lastcall_evictions_total{outcome="deleted"}`) == 2
	})
}

func TestMissingRBACIsReported(t *testing.T) {
	c := newCluster(t, 1)
	// A user with all the agent needs but evicting and deleting pods.
	limited := filepath.Join(t.TempDir(), "limited.kubeconfig")
	user, err := c.env.WriteKubeconfig(limited, "lastcall-test")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: c.env.UniqueName("partial")},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "update"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}
	if _, err := c.env.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}},
	}
	if _, err := c.env.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.kubeconfig = limited
	trigger := freeAddr(t)
	p := c.launchAgent(t, "--cloud=sim", "--sim-listen="+trigger)
	var body string
	eventually(t, 20*time.Second, "readyz names the missing permissions", func() bool {
		var code int
		code, body = p.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "RBAC")
	})
	for _, want := range []string{"create pods/eviction", "delete pods"} {
		if !strings.Contains(body, want) {
			t.Errorf("readyz %q does not name %q", body, want)
		}
	}
	if strings.Contains(body, "list pods") {
		t.Errorf("readyz %q names a permission the agent has", body)
	}
	if !strings.Contains(p.out.String(), "access check failed") {
		t.Error("the missing permissions were not logged")
	}
	if code, _ := p.get("/healthz"); code != http.StatusOK {
		t.Errorf("healthz = %d: a missing permission must not make the agent unhealthy (restarts fix nothing)", code)
	}
	// Fixed RBAC makes the same agent ready: it checks again.
	role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods", "pods/eviction"}, Verbs: []string{"create", "delete"}})
	if _, err := c.env.Client.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "ready once the role is fixed, without a restart", func() bool {
		code, _ := p.get("/readyz")
		return code == http.StatusOK
	})
	if !strings.Contains(p.out.String(), "access check passed") {
		t.Error("the recovery was not logged")
	}
}

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/lastcall-dev/lastcall/drainer"
)

// The scenarios of other tools taking the node away: each applies what the
// tool does to the Node and the pods, exactly as its documentation (or its
// source) says, and checks that the workers were told before their pods'
// evictions, that nothing was lost or acknowledged twice, and that lastcall
// and the other tool did not undo or fail each other's work.

// foreignValues are the chart values of these scenarios: a plain cordon
// counts too (kubectl drain), beside the default taints.
var foreignValues = []string{"agent.foreignDrains.cordon=true"}

// withForeign upgrades the agent to foreignValues once, on a fresh node.
func (c *cluster) withForeign(t *testing.T) {
	t.Helper()
	if slices.Contains(c.extraValues, foreignValues[0]) {
		return
	}
	c.extraValues = append(c.extraValues, foreignValues...)
	c.resetNode(t, "aws")
	c.settle(t)
}

// nodeWatch records when the node's signs appear and go, as a watch of the
// node sees them: the cordon, each taint, lastcall's cordon record.
type nodeWatch struct {
	mu     sync.Mutex
	events []event
	stop   context.CancelFunc
	done   chan struct{}
}

func (c *cluster) watchNode(t *testing.T) *nodeWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w, err := c.client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + nodeName})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	nw := &nodeWatch{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(nw.done)
		defer w.Stop()
		var last *corev1.Node
		for ev := range w.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type == watch.Bookmark {
				continue
			}
			now := time.Now()
			nw.mu.Lock()
			nw.events = append(nw.events, nodeChanges(last, n, now)...)
			nw.mu.Unlock()
			last = n
		}
	}()
	t.Cleanup(nw.close)
	return nw
}

// nodeChanges lists what changed from a to b (a nil: b is the first seen,
// which counts as no change).
func nodeChanges(a, b *corev1.Node, at time.Time) []event {
	if a == nil {
		return nil
	}
	var out []event
	add := func(what, detail string) { out = append(out, event{Pod: "node", What: what, At: at, Detail: detail}) }
	if !a.Spec.Unschedulable && b.Spec.Unschedulable {
		add("node: cordoned", "")
	}
	if a.Spec.Unschedulable && !b.Spec.Unschedulable {
		add("node: uncordoned", "")
	}
	keys := func(n *corev1.Node) map[string]corev1.Taint {
		m := map[string]corev1.Taint{}
		for _, t := range n.Spec.Taints {
			m[t.Key+":"+string(t.Effect)] = t
		}
		return m
	}
	ka, kb := keys(a), keys(b)
	for k := range kb {
		if _, ok := ka[k]; !ok {
			add("node: taint added", k)
		}
	}
	for k := range ka {
		if _, ok := kb[k]; !ok {
			add("node: taint removed", k)
		}
	}
	_, ra := a.Annotations[drainer.RecordAnnotation]
	rb, okb := b.Annotations[drainer.RecordAnnotation]
	if !ra && okb {
		add("node: lastcall's record", rb)
	}
	if ra && !okb {
		add("node: lastcall's record removed", "")
	}
	return out
}

func (nw *nodeWatch) close() {
	nw.stop()
	<-nw.done
}

func (nw *nodeWatch) snapshot() []event {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return slices.Clone(nw.events)
}

// patchNode changes the node, retrying conflicts, as a tool would.
func (c *cluster) patchNode(t *testing.T, mutate func(*corev1.Node)) {
	t.Helper()
	c.poll(t, 30*time.Second, "a node update", func(ctx context.Context) (bool, error) {
		n, err := c.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		mutate(n)
		_, err = c.client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err == nil, err
	})
}

// foreignReport prints the numbers of one source: signal seen -> workers
// told, the time they had before their pod's eviction, the messages
// finished and handed back. With toldFirst it fails unless each worker was
// told before its pod's deletion was asked for; with wantReason, unless
// the agent told it, naming the tool.
func (c *cluster) foreignReport(t *testing.T, source string, signal time.Time, tl *timeline, pods []corev1.Pod, wantReason string, toldFirst bool) {
	t.Helper()
	for _, p := range pods {
		told, ok := tl.first(p.Name, "told")
		if !ok {
			t.Errorf("%s: never told", p.Name)
			continue
		}
		del, ok := tl.first(p.Name, "api: deletion requested")
		if !ok {
			t.Errorf("%s: no deletion seen", p.Name)
			continue
		}
		term, _ := tl.first(p.Name, "kubelet: SIGTERM worker")
		t.Logf("%s: %s seen -> %s told %q in %d ms; %.3f s before its eviction, %.3f s before SIGTERM", source, signal.Format("15:04:05.000"),
			p.Name, told.Detail, told.At.Sub(signal).Milliseconds(), del.At.Sub(told.At).Seconds(), term.At.Sub(told.At).Seconds())
		// An eviction that follows the signal within a second (kubectl
		// drain evicts its first pod right after its cordon) can come
		// before lastcall has seen the signal: then the pod's preStop hook
		// tells its workers, still before their SIGTERM.
		early := del.At.Sub(signal) < time.Second
		if early && strings.HasPrefix(told.Detail, "pod-terminating ") {
			continue
		}
		if wantReason != "" && !strings.HasPrefix(told.Detail, wantReason+" ") {
			t.Errorf("%s told %q, want the reason %s", p.Name, told.Detail, wantReason)
		}
		if toldFirst && !early && !told.At.Before(del.At) {
			t.Errorf("%s told at %s, after its eviction at %s", p.Name, told.At.Format("15:04:05.000"), del.At.Format("15:04:05.000"))
		}
	}
	var acked, handed int
	for _, e := range c.ledger.since(tl.t0) {
		switch e.What {
		case "acked":
			acked++
		case "handed-back":
			handed++
		}
	}
	t.Logf("%s: messages since the signal: %d finished (acked), %d handed back", source, acked, handed)
}

// agentFailures returns the agent's counts of incomplete drains and of
// the errors it handled, by operation.
func agentFailures(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+nodeIP+":10573/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, `lastcall_drains_total{result="incomplete"}`) || strings.HasPrefix(l, "lastcall_agent_errors_total{") {
			out = append(out, l)
		}
	}
	return strings.Join(out, ", "), sc.Err()
}

// failureEvents returns the Warning Events lastcall records for evictions
// of the worker pods that failed, on those pods and on the node, since t0.
func (c *cluster) failureEvents(t *testing.T, t0 time.Time) []string {
	t.Helper()
	var out []string
	for _, ns := range []string{workNS, "default"} {
		evs, err := c.client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Namespace != workNS && !strings.Contains(e.Message, workNS+"/") {
				continue // lastcall's own injector and the like: not the other tool's pods
			}
			switch e.Reason {
			case "EvictionFailed", "EvictionRefused", "DrainIncomplete", "EvictionBlocked":
				if !e.LastTimestamp.Time.Before(t0.Add(-time.Second)) || !e.EventTime.Time.Before(t0.Add(-time.Second)) {
					out = append(out, e.Reason+" "+e.InvolvedObject.Name+": "+e.Message)
				}
			}
		}
	}
	return out
}

// NTH beside lastcall: aws-node-termination-handler in IMDS mode, tainting
// (taintNode), reading the same EC2 metadata mock as lastcall's AWS
// watcher.
const (
	nthNS   = "kube-system"
	nthName = "e2e-nth"
)

func (c *cluster) startNTH(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	tag := os.Getenv("LASTCALL_E2E_NTH_TAG")
	if tag == "" {
		t.Fatal("LASTCALL_E2E_NTH_TAG must be set (make e2e sets it)")
	}
	// Its chart's RBAC, trimmed to what IMDS mode uses.
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: nthName},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "patch", "update"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "get"}},
			{APIGroups: []string{""}, Resources: []string{"pods/eviction"}, Verbs: []string{"create"}},
			{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}
	objs := []func() error{
		func() error {
			_, err := c.client.CoreV1().ServiceAccounts(nthNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: nthName}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: nthName},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: nthName},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: nthName, Namespace: nthNS}},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range objs {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	env := map[string]string{
		"INSTANCE_METADATA_URL":             "http://127.0.0.1:" + c.ec2Port,
		"ENABLE_SPOT_INTERRUPTION_DRAINING": "true",
		// With its defaults it panicked on the mock's 404s from the
		// scheduled-events path (design notes); the scenario is a spot
		// notice.
		"ENABLE_SCHEDULED_EVENT_DRAINING": "false",
		"ENABLE_REBALANCE_MONITORING":     "false",
		"ENABLE_REBALANCE_DRAINING":       "false",
		"TAINT_NODE":                      "true",
		"DELETE_LOCAL_DATA":               "true",
		"IGNORE_DAEMON_SETS":              "true",
		"POD_TERMINATION_GRACE_PERIOD":    "-1",
		"NODE_TERMINATION_GRACE_PERIOD":   "120",
		"METADATA_TRIES":                  "3",
		"ENABLE_PROBES_SERVER":            "false",
		"ENABLE_PROMETHEUS_SERVER":        "false",
		"JSON_LOGGING":                    "true",
	}
	var envs []corev1.EnvVar
	for _, k := range slicesSorted(env) {
		envs = append(envs, corev1.EnvVar{Name: k, Value: env[k]})
	}
	envs = append(envs,
		corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		corev1.EnvVar{Name: "NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	)
	labels := map[string]string{"app": nthName}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: nthName, Namespace: nthNS},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: nthName,
					HostNetwork:        true,
					DNSPolicy:          corev1.DNSClusterFirstWithHostNet,
					PriorityClassName:  "system-node-critical",
					Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name: "aws-node-termination-handler", Image: "lastcall.dev/e2e-nth:" + tag, ImagePullPolicy: corev1.PullNever,
						Env: envs,
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot: ptr(true), AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
						},
					}},
				},
			},
		},
	}
	if _, err := c.client.AppsV1().DaemonSets(nthNS).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.poll(t, 2*time.Minute, "aws-node-termination-handler running", func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods(nthNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + nthName})
		if err != nil || len(pods.Items) != 1 {
			return false, err
		}
		p := pods.Items[0]
		return p.Status.Phase == corev1.PodRunning && ready(&p), nil
	})
}

func (c *cluster) stopNTH(t *testing.T) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	_ = c.client.AppsV1().DaemonSets(nthNS).Delete(ctx, nthName, metav1.DeleteOptions{})
	_ = c.client.RbacV1().ClusterRoleBindings().Delete(ctx, nthName, metav1.DeleteOptions{})
	_ = c.client.RbacV1().ClusterRoles().Delete(ctx, nthName, metav1.DeleteOptions{})
	_ = c.client.CoreV1().ServiceAccounts(nthNS).Delete(ctx, nthName, metav1.DeleteOptions{})
}

func slicesSorted(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// auditAction is one write the apiserver's audit log recorded.
type auditAction struct {
	At       time.Time
	User     string
	Verb     string
	Resource string // pods/eviction, pods, nodes
	Name     string
	Code     int
}

// auditActions reads the writes on worker pods and the node since t0.
func auditActions(t *testing.T, t0 time.Time) []auditAction {
	t.Helper()
	path := os.Getenv("LASTCALL_E2E_AUDIT_LOG")
	if path == "" {
		t.Fatal("LASTCALL_E2E_AUDIT_LOG must be set (make e2e sets it)")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []auditAction
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			Stage string    `json:"stage"`
			Verb  string    `json:"verb"`
			At    time.Time `json:"requestReceivedTimestamp"`
			User  struct {
				Username string `json:"username"`
			} `json:"user"`
			Ref struct {
				Resource, Subresource, Namespace, Name string
			} `json:"objectRef"`
			Status struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Stage != "ResponseComplete" || ev.At.Before(t0) {
			continue
		}
		res := ev.Ref.Resource
		if ev.Ref.Subresource != "" {
			res += "/" + ev.Ref.Subresource
		}
		if (res == "nodes" && ev.Ref.Name == nodeName) || (ev.Ref.Namespace == workNS && strings.HasPrefix(res, "pods")) {
			out = append(out, auditAction{At: ev.At, User: ev.User.Username, Verb: ev.Verb, Resource: res, Name: ev.Ref.Name, Code: ev.Status.Code})
		}
	}
	return out
}

func testNTHBeside(t *testing.T, c *cluster) {
	c.withForeign(t)
	// NTH reads the instance's metadata at start: the mock runs first,
	// with the spot notice set to appear once NTH is up and the workers
	// busy.
	notice := time.Now().Add(45 * time.Second).Truncate(time.Second)
	deadline := notice.Add(2 * time.Minute)
	// The mock's rebalance recommendation (served in spot mode too) comes
	// with the notice, not before: lastcall would cordon for it.
	c.startEC2(t, "spot", "-a", "terminate", "-t", deadline.UTC().Format(time.RFC3339),
		"--mock-trigger-time", notice.UTC().Format(time.RFC3339), "--rebalance-trigger-time", notice.UTC().Format(time.RFC3339))
	c.startNTH(t)
	defer c.stopNTH(t)
	// The workers hold their messages when the notice comes.
	time.Sleep(time.Until(notice.Add(-8 * time.Second)))
	pods, pw := c.busy(t, append([]time.Duration{long}, repeat(5*time.Second, 6)...)...)
	nw := c.watchNode(t)
	agentPod := c.agentPod(t)
	agentUser := "system:serviceaccount:" + releaseNS + ":" + agentPod.Spec.ServiceAccountName
	nthUser := "system:serviceaccount:" + nthNS + ":" + nthName
	before, _ := agentFailures(t.Context())
	if time.Now().After(notice) {
		t.Fatalf("NTH and the workers took until %s, after the notice at %s\n%s", time.Now().Format("15:04:05"), notice.Format("15:04:05"), c.state())
	}
	pw.waitGone(t, c, pods, time.Until(deadline))
	tl := c.recordStopped(t, "AWS spot notice, aws-node-termination-handler (IMDS mode, taintNode) beside lastcall", notice, pw, pods)
	tl.add(nw.snapshot()...)
	t.Logf("node, seconds from the notice:")
	for _, e := range nw.snapshot() {
		t.Logf("  %+8.3fs %s %s", e.At.Sub(notice).Seconds(), e.What, e.Detail)
	}
	for _, p := range pods {
		tl.assertOrder(t, p.Name, "told", "api: deletion requested", "kubelet: SIGTERM worker", "api: pod gone")
		assertBefore(t, tl, p.Name, "api: pod gone", deadline)
	}
	logTold(t, tl, pods, deadline)
	c.foreignReport(t, "AWS spot notice, NTH and lastcall", notice, tl, pods, "", true)

	// Who cordoned, who evicted which pods.
	n, err := c.client.CoreV1().Nodes().Get(t.Context(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec, hasRec := drainer.RecordOf(n)
	t.Logf("cordon: spec.unschedulable set by %s; taints %v; lastcall's record %+v (present %v)",
		map[bool]string{true: "lastcall", false: "aws-node-termination-handler (lastcall's record does not claim it)"}[rec.Unschedulable], n.Spec.Taints, rec, hasRec)
	if !slices.ContainsFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == "aws-node-termination-handler/spot-itn" }) {
		t.Errorf("NTH's spot-itn taint is not on the node: %v", n.Spec.Taints)
	}
	who := map[string]string{agentUser: "lastcall", nthUser: "aws-node-termination-handler"}
	for _, a := range auditActions(t, notice.Add(-time.Second)) {
		name := who[a.User]
		if name == "" {
			continue // the kubelet, the controllers
		}
		t.Logf("  %+8.3fs %-30s %-6s %-14s %-32s %d", a.At.Sub(notice).Seconds(), name, a.Verb, a.Resource, a.Name, a.Code)
	}
	after, _ := agentFailures(t.Context())
	t.Logf("lastcall's failure counters: before %s; after %s", before, after)
	if before != after {
		t.Errorf("lastcall counted failures while NTH evicted the same pods: before %s, after %s", before, after)
	}
	if failures := c.failureEvents(t, notice); len(failures) > 0 {
		t.Errorf("eviction failures recorded while NTH evicted the same pods: %v", failures)
	}

	// A restarted agent (no notice in the metadata now) undoes its own
	// cordon, if it does, and only that: NTH's taint stays, and so does
	// the cordon unless lastcall's record says lastcall set it.
	c.ec2.Stop()
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	c.startEC2(t, "spot", "-a", "terminate", "--mock-trigger-time", later, "--rebalance-trigger-time", later)
	old := c.agentPod(t)
	if err := c.client.CoreV1().Pods(releaseNS).Delete(t.Context(), old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.poll(t, 2*time.Minute, "a new agent", func(ctx context.Context) (bool, error) {
		return c.agentPod(t).UID != old.UID, nil
	})
	uncordoned := false
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	for ctx.Err() == nil && !uncordoned {
		if n, err := c.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil {
			_, has := drainer.RecordOf(n)
			uncordoned = !has
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	cancel()
	n, err = c.client.CoreV1().Nodes().Get(t.Context(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted agent, no notice: lastcall's record removed %v; unschedulable %v; taints %v", uncordoned, n.Spec.Unschedulable, n.Spec.Taints)
	if !slices.ContainsFunc(n.Spec.Taints, func(x corev1.Taint) bool { return x.Key == "aws-node-termination-handler/spot-itn" }) {
		t.Errorf("lastcall removed NTH's taint: %v", n.Spec.Taints)
	}
	if !n.Spec.Unschedulable && !rec.Unschedulable {
		t.Error("lastcall uncordoned the node NTH cordoned")
	}

	// A new machine: NTH gone, the node cleared of what it left.
	c.stopNTH(t)
	c.patchNode(t, func(n *corev1.Node) {
		n.Spec.Unschedulable = false
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(x corev1.Taint) bool {
			return strings.HasPrefix(x.Key, "aws-node-termination-handler/")
		})
		for k := range n.Labels {
			if strings.HasPrefix(k, "aws-node-termination-handler/") {
				delete(n.Labels, k)
			}
		}
	})
	c.resetNode(t, "aws")
	c.settle(t)
}

package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// These tests are the notice lifecycle's defects, each replayed with the
// built agent against the real control plane.

// post sends a notice to the sim source's trigger.
func post(t *testing.T, trigger, notice string) {
	t.Helper()
	resp, err := http.Post("http://"+trigger+"/notice", "application/json", strings.NewReader(notice))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("notice %s: %d", notice, resp.StatusCode)
	}
}

// A notice whose deadline has already passed (an ASG Terminated state
// without a notice window, an Azure event already Started, a notice first
// seen after a restart) evicts every worker at once, with the minimum
// grace, and the drain is reported for what it is.
func TestLateNoticeEvictsEverything(t *testing.T) {
	c := newCluster(t, 4, kubetest.WithGrace(30))
	trigger := freeAddr(t)
	p := c.startAgent(t, "--cloud=sim", "--sim-listen="+trigger)
	past := time.Now().Add(-5 * time.Second).UTC().Format(time.RFC3339Nano)
	post(t, trigger, fmt.Sprintf(`{"kind":"termination","id":"late","deadline":%q}`, past))
	eventually(t, 15*time.Second, "every worker gone", func() bool { return c.workersLeft(t) == 0 })
	for _, e := range c.kubelet.Events() {
		if e.What == "terminating" && strings.Contains(e.Pod, "/worker-") && e.Grace != 1 {
			t.Errorf("%s got grace %d, want the minimum 1", e.Pod, e.Grace)
		}
	}
	eventually(t, 10*time.Second, "drain reported", func() bool { return p.metric(t, `lastcall_drains_total{result="drained"}`) == 1 })
	if got := p.metric(t, `lastcall_evictions_total{outcome="evicted"}`); got != 4 {
		t.Errorf("evicted %v, want 4", got)
	}
}

// gceRecord writes a cordon record as an earlier run would have left it,
// at time at.
func (c *cluster) leaveRecord(t *testing.T, source string, at time.Time) {
	t.Helper()
	rec, err := json.Marshal(drainer.Record{Unschedulable: true, Taint: true, Source: source, Time: at})
	if err != nil {
		t.Fatal(err)
	}
	patch, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{drainer.RecordAnnotation: string(rec)}},
		"spec": map[string]any{"unschedulable": true, "taints": []corev1.Taint{
			{Key: drainer.TaintKey, Value: source, Effect: corev1.TaintEffectNoSchedule},
		}},
	})
	if _, err := c.env.Client.CoreV1().Nodes().Patch(t.Context(), c.node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if !c.cordoned(t) {
		t.Fatal("record not in place")
	}
}

// A cordon left by an earlier run whose notice is gone when the agent comes
// back (a GCE maintenance event back to NONE while it was down) is undone
// once the metadata has been read. Before, it stayed for good.
func TestStaleCordonUndoneAfterRestart(t *testing.T) {
	c := newCluster(t, 2)
	gce := newGCEMetadata(t)
	gce.set("instance/maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE")
	p := c.startAgent(t, "--cloud=gce", "--gce-metadata-host="+gce.host(), "--gce-maintenance-notice=1h")
	eventually(t, 10*time.Second, "cordoned for maintenance", func() bool { return c.cordoned(t) })
	eventually(t, 10*time.Second, "condition set", func() bool {
		cond, ok := c.condition(t)
		return ok && cond.Status == corev1.ConditionTrue
	})
	p.kill9()
	gce.set("instance/maintenance-event", "NONE")

	p2 := c.startAgent(t, "--cloud=gce", "--gce-metadata-host="+gce.host())
	eventually(t, 10*time.Second, "cordon undone", func() bool { return !c.cordoned(t) && !c.node_(t).Spec.Unschedulable })
	eventually(t, 10*time.Second, "condition cleared", func() bool {
		cond, ok := c.condition(t)
		return ok && cond.Status == corev1.ConditionFalse
	})
	if c.workersLeft(t) != 2 {
		t.Errorf("%d workers left, want both: nothing was to be drained", c.workersLeft(t))
	}
	if !strings.Contains(p2.out.String(), "node was cordoned by an earlier run") {
		t.Error("restarted agent did not notice the earlier run")
	}
}

// A stale record (hours old) does not poison the next GCE notice's
// deadline: the preemption seen at start gets detection + 30 s, not a
// deadline hours in the past.
func TestStaleRecordDoesNotPoisonDeadline(t *testing.T) {
	c := newCluster(t, 1)
	c.leaveRecord(t, "gce", time.Now().Add(-3*time.Hour))
	gce := newGCEMetadata(t)
	gce.set("instance/preempted", "TRUE")
	start := time.Now()
	c.startAgent(t, "--cloud=gce", "--gce-metadata-host="+gce.host())
	eventually(t, 10*time.Second, "condition set", func() bool {
		cond, ok := c.condition(t)
		return ok && cond.Status == corev1.ConditionTrue
	})
	cond, _ := c.condition(t)
	_, at, ok := strings.Cut(cond.Message, "goes away at ")
	if !ok {
		t.Fatalf("condition message %q names no deadline", cond.Message)
	}
	deadline, err := time.Parse(time.RFC3339, at)
	if err != nil {
		t.Fatal(err)
	}
	if deadline.Before(start.Add(25*time.Second)) || deadline.After(time.Now().Add(31*time.Second)) {
		t.Errorf("deadline %v is %v after the agent started, want about 30 s", deadline, deadline.Sub(start))
	}
}

// An agent restart in the middle of a drain does not send the sidecars back
// to running: the restarted agent tells them nothing until it knows the
// node's state, then draining again; a worker that reported done before
// the restart is released by its report, not held to its latest eviction
// moment. Before, every sidecar was told running and workers resumed
// pulling inside the notice window.
func TestRestartMidDrainKeepsSidecarsDraining(t *testing.T) {
	c := newCluster(t, 2, kubetest.WithGrace(5))
	c.waitRunning(t, 3)
	gce := newGCEMetadata(t)
	hub := freeAddr(t)
	p := c.startAgent(t, "--cloud=gce", "--gce-metadata-host="+gce.host(), "--gce-preemption-notice=60s", "--sidecar-listen="+hub)
	sidecars := []*sidecarProc{c.startSidecar(t, hub, "worker-0"), c.startSidecar(t, hub, "worker-1")}
	eventually(t, 15*time.Second, "two sidecars subscribed", func() bool { return p.metric(t, "lastcall_sidecars_connected") == 2 })
	gce.set("instance/preempted", "TRUE")
	for i, sp := range sidecars {
		eventually(t, 5*time.Second, fmt.Sprintf("worker-%d sees draining", i), func() bool { return sp.phase() == "draining" })
	}

	// Watch what the workers see from now on.
	var mu sync.Mutex
	seen := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			for _, sp := range sidecars {
				ph := sp.phase()
				mu.Lock()
				seen[ph]++
				mu.Unlock()
			}
		}
	})

	sidecars[0].done_(t)
	eventually(t, 10*time.Second, "worker-0 evicted once done", func() bool { return c.terminating(t, "worker-0") })
	p.kill9()
	time.Sleep(time.Second) // the sidecars find the agent gone
	// The metadata server is slow to answer the restarted agent: for 3 s it
	// cannot know the node is still draining.
	gce.slow(3 * time.Second)
	p2 := c.startAgent(t, "--cloud=gce", "--gce-metadata-host="+gce.host(), "--gce-preemption-notice=60s", "--sidecar-listen="+hub)
	eventually(t, 10*time.Second, "worker-1's sidecar back with the restarted agent", func() bool {
		return p2.metric(t, "lastcall_sidecars_connected") >= 1
	})
	sidecars[1].done_(t)
	// Its latest eviction moment is 60 s - 0.5 s reserve - 5 s grace away:
	// released by the report, it goes now.
	eventually(t, 10*time.Second, "worker-1 evicted once done, after the restart", func() bool { return c.terminating(t, "worker-1") })
	close(stop)
	wg.Wait()
	if seen["running"] > 0 || seen["draining"] == 0 {
		t.Fatalf("workers saw %v across the restart, want draining only", seen)
	}
}

// A pod that lands on the node during a drain (it tolerates the cordon, or
// its replacement is bound back) is evicted too. Before, only the pods
// listed at the start of the drain were.
func TestPodLandingDuringDrainIsEvicted(t *testing.T) {
	c := newCluster(t, 1, kubetest.WithGrace(5))
	trigger := freeAddr(t)
	c.startAgent(t, "--cloud=sim", "--sim-listen="+trigger)
	post(t, trigger, `{"kind":"preemption","seconds":40,"id":"landing"}`)
	eventually(t, 10*time.Second, "worker-0 evicted", func() bool { return c.terminating(t, "worker-0") })
	if _, err := c.env.CreatePods(t.Context(), kubetest.NewPod(c.ns, "worker-late", c.node, kubetest.WithGrace(2))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the pod that landed mid-drain is evicted", func() bool { return c.terminating(t, "worker-late") })
	eventually(t, 20*time.Second, "all workers gone", func() bool { return c.workersLeft(t) == 0 })
}

// A metadata service that does not answer at boot no longer makes the
// agent exit (a CrashLoopBackOff): it stays alive and not ready, probes
// again with backoff, and works once the service answers.
func TestCloudDetectionRetries(t *testing.T) {
	c := newCluster(t, 1)
	gceAddr, closed := freeAddr(t), freeAddr(t)
	p := c.launchAgent(t, "--cloud=auto", "--gce-metadata-host="+gceAddr,
		"--aws-imds-endpoint=http://"+closed, "--azure-imds-endpoint=http://"+closed)
	eventually(t, 10*time.Second, "health served while probing", func() bool {
		code, _ := p.get("/healthz")
		return code == http.StatusOK
	})
	time.Sleep(3 * time.Second) // longer than one detection (2 s)
	select {
	case <-p.done:
		t.Fatalf("agent exited while the metadata service was down: %v", p.exited)
	default:
	}
	if code, body := p.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d %q while no cloud answers, want 503", code, body)
	}

	gce := newGCEMetadataOn(t, gceAddr)
	gce.set("instance/id", "1234")
	eventually(t, 30*time.Second, "ready once the metadata service answers", func() bool {
		code, _ := p.get("/readyz")
		return code == http.StatusOK
	})
	gce.set("instance/preempted", "TRUE")
	eventually(t, 10*time.Second, "cordoned on the preemption", func() bool { return c.cordoned(t) })
}

// An admission policy that would refuse the cordon (RBAC allows it, so the
// SelfSubjectAccessReviews pass) makes the agent not ready at start, through
// the cordon's server-side dry run, instead of failing in a preemption.
func TestRefusedCordonIsNotReady(t *testing.T) {
	c := newCluster(t, 1)
	name := c.env.UniqueName("refuse-cordon")
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"nodes"}},
				},
			}}},
			MatchConditions: []admissionregistrationv1.MatchCondition{{Name: "agent", Expression: fmt.Sprintf("request.userInfo.username == %q", c.user)}},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "!object.spec.?unschedulable.orValue(false)",
				Message:    "cordons are frozen by the platform team",
			}},
		},
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
	ar := c.env.Client.AdmissionregistrationV1()
	if _, err := ar.ValidatingAdmissionPolicies().Create(t.Context(), policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ar.ValidatingAdmissionPolicies().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	if _, err := ar.ValidatingAdmissionPolicyBindings().Create(t.Context(), binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = ar.ValidatingAdmissionPolicyBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	time.Sleep(2 * time.Second) // the apiserver loads policies asynchronously

	trigger := freeAddr(t)
	p := c.launchAgent(t, "--cloud=sim", "--sim-listen="+trigger)
	eventually(t, 20*time.Second, "not ready, naming the policy (on loopback)", func() bool {
		code, body := p.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "cordons are frozen")
	})
	if c.cordoned(t) || c.node_(t).Spec.Unschedulable {
		t.Error("the dry run changed the node")
	}
}

func ptr[T any](v T) *T { return &v }

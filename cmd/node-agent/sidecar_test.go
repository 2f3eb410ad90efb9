package main_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastcall-dev/lastcall/internal/ec2mock"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// sidecarProc is one run of the sidecar binary for a pod.
type sidecarProc struct {
	cmd  *exec.Cmd
	api  string // the workers' API, on the pod's IP
	out  *ec2mock.Buffer
	done chan struct{}
}

// startSidecar runs the real sidecar for pod name, as in the pod: its
// workers' API on the pod's IP, and the agent called from that IP.
func (c *cluster) startSidecar(t *testing.T, agentHub, name string) *sidecarProc {
	t.Helper()
	pod, err := c.env.Client.CoreV1().Pods(c.ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip := pod.Status.PodIP
	sp := &sidecarProc{api: ip + ":10575", out: &ec2mock.Buffer{}, done: make(chan struct{})}
	sp.cmd = command(sidecarBin, "--pod-name="+name, "--pod-namespace="+c.ns, "--pod-ip="+ip,
		"--agent=http://"+agentHub, "--listen="+sp.api, "--dir="+filepath.Join(t.TempDir(), name),
		"--poll-wait=5s", "--log-format=text")
	sp.cmd.Stdout, sp.cmd.Stderr = sp.out, sp.out
	if err := sp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = sp.cmd.Wait(); close(sp.done) }()
	t.Cleanup(func() {
		_ = sp.cmd.Process.Kill()
		<-sp.done
		if t.Failed() {
			t.Logf("sidecar %s output:\n%s", name, sp.out.String())
		}
	})
	return sp
}

// phase asks the sidecar what a worker of the pod would see.
func (sp *sidecarProc) phase() string {
	resp, err := http.Get("http://" + sp.api + "/v1/state")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var st struct {
		Phase string `json:"phase"`
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return ""
	}
	return st.Phase
}

// agentConnected reports whether the sidecar says its last poll of the
// agent was answered.
func (sp *sidecarProc) agentConnected() bool {
	resp, err := http.Get("http://" + sp.api + "/v1/state")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var st struct {
		AgentConnected bool `json:"agent_connected"`
	}
	return json.NewDecoder(resp.Body).Decode(&st) == nil && st.AgentConnected
}

func (sp *sidecarProc) done_(t *testing.T) {
	t.Helper()
	resp, err := http.Post("http://"+sp.api+"/v1/done", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("done: %d", resp.StatusCode)
	}
}

func (c *cluster) terminating(t *testing.T, name string) bool {
	t.Helper()
	p, err := c.env.Client.CoreV1().Pods(c.ns).Get(t.Context(), name, metav1.GetOptions{})
	return err != nil || p.DeletionTimestamp != nil
}

// TestSidecarsToldAndDoneFirst runs the agent with three worker pods, each
// with a real sidecar process: the notice reaches every sidecar, no worker
// pod is evicted while its workers are busy, and a pod whose workers report
// done is evicted at once, before the others.
func TestSidecarsToldAndDoneFirst(t *testing.T) {
	c := newCluster(t, 3, kubetest.WithGrace(5))
	c.waitRunning(t, 4)
	trigger := freeAddr(t)
	p := c.startAgent(t, "--cloud=sim", "--sim-listen="+trigger)
	var sidecars []*sidecarProc
	for i := range 3 {
		sidecars = append(sidecars, c.startSidecar(t, p.hub, fmt.Sprintf("worker-%d", i)))
	}
	eventually(t, 15*time.Second, "three sidecars subscribed", func() bool { return p.metric(t, "lastcall_sidecars_connected") == 3 })
	for i, sp := range sidecars {
		if ph := sp.phase(); ph != "running" {
			t.Fatalf("worker-%d sees %q before the notice, want running", i, ph)
		}
	}

	resp, err := http.Post("http://"+trigger+"/notice", "application/json", strings.NewReader(`{"kind":"preemption","seconds":60,"id":"sidecars"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for i, sp := range sidecars {
		eventually(t, 5*time.Second, fmt.Sprintf("worker-%d sees draining", i), func() bool { return sp.phase() == "draining" })
	}
	eventually(t, 5*time.Second, "sidecars-told metric", func() bool {
		return p.metric(t, `lastcall_notice_to_sidecars_told_seconds_count{kind="preemption",source="sim"}`) == 1
	})
	eventually(t, 5*time.Second, "cordoned", func() bool { return c.cordoned(t) })
	for i := range 3 {
		if c.terminating(t, fmt.Sprintf("worker-%d", i)) {
			t.Fatalf("worker-%d evicted while its workers were busy", i)
		}
	}

	sidecars[1].done_(t)
	eventually(t, 10*time.Second, "worker-1 evicted once done", func() bool { return c.terminating(t, "worker-1") })
	if c.terminating(t, "worker-0") || c.terminating(t, "worker-2") {
		t.Fatal("busy workers evicted along with the done one")
	}
	sidecars[0].done_(t)
	sidecars[2].done_(t)
	eventually(t, 20*time.Second, "all workers gone", func() bool { return c.workersLeft(t) == 0 })
	eventually(t, 5*time.Second, "drain reported", func() bool { return p.metric(t, `lastcall_drains_total{result="drained"}`) == 1 })
}

// waitRunning waits until the kubelet has n pods running, with their IPs.
func (c *cluster) waitRunning(t *testing.T, n int) {
	t.Helper()
	eventually(t, 10*time.Second, "pods running with IPs", func() bool {
		got := 0
		for _, e := range c.kubelet.Events() {
			if e.What == "running" {
				got++
			}
		}
		return got == n
	})
}

package sidecar_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/pod"
	"github.com/lastcall-dev/lastcall/watcher"
)

func testNotice(deadline time.Time) watcher.Notice {
	return watcher.Notice{
		Source: watcher.SourceGCE, Kind: watcher.KindPreemption, State: watcher.StateActive,
		ID: "gce-preempt-1", Detected: time.Now(), Deadline: deadline,
	}
}

// waitConnected waits until the hub counts n subscribed sidecars.
func waitConnected(ctx context.Context, t testing.TB, hub *sidecar.Hub, n int) {
	t.Helper()
	for hub.Connected() != n {
		select {
		case <-ctx.Done():
			t.Fatalf("hub has %d sidecars connected, want %d", hub.Connected(), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestDrain110 runs 110 sidecars and workers on one simulated node and
// drains it: every sidecar is told, every worker sees the drain over HTTP,
// the flag file and SIGTSTP, says done, and the agent hears of it.
func TestDrain110(t *testing.T) {
	needBinaries(t)
	// Starting 220 processes built with -race takes most of two minutes
	// when make test runs every package at once on two cores.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	const n = 110
	ips, dl, reg := newPodIPs(), newDoneLog(), prometheus.NewRegistry()
	hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: dl.onDone, Registerer: reg})
	pods := make([]*podProcs, n)
	for i := range pods {
		ref := sidecar.PodRef{Namespace: "work", Name: fmt.Sprintf("worker-%03d", i)}
		ip := fmt.Sprintf("127.0.1.%d", i+1)
		ips.set(ref, ip)
		pods[i] = startPod(ctx, t, podSpec{ref: ref, ip: ip, hub: hs.url(), signal: true, want: "http,file,signal", done: true})
	}
	waitConnected(ctx, t, hs.hub, n)
	for _, p := range pods {
		if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
			t.Fatal(err)
		}
	}
	if got := gauge(t, reg, "lastcall_sidecars_connected"); got != n {
		t.Errorf("lastcall_sidecars_connected = %v, want %d", got, n)
	}

	deadline := time.Now().Add(30 * time.Second).Truncate(time.Second)
	told, err := hs.hub.Draining(ctx, testNotice(deadline))
	if err != nil || told != n {
		t.Fatalf("Draining: told %d, %v; want %d", told, err, n)
	}

	for _, p := range pods {
		for _, want := range []func(string) bool{is("http draining preemption"), is("file"), hasPrefix("signal "), is("done")} {
			if _, _, err := p.worker.waitLine(ctx, 0, want); err != nil {
				t.Fatal(err)
			}
		}
		var st sidecar.State
		b, err := os.ReadFile(filepath.Join(p.dir, pod.StateFile))
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err != nil || st.Phase != sidecar.PhaseDraining || st.Reason != "preemption" || !st.Deadline.Equal(deadline) {
			t.Errorf("%s: state.json = %+v, %v; want draining for preemption to %s", p.ref, st, err, deadline)
		}
	}
	seen := map[sidecar.PodRef]bool{}
	for len(seen) < n {
		select {
		case ref := <-dl.ch:
			if seen[ref] {
				t.Errorf("OnDone called twice for %s", ref)
			}
			seen[ref] = true
		case <-ctx.Done():
			t.Fatalf("OnDone called for %d pods, want %d", len(seen), n)
		}
	}
	for _, p := range pods {
		if !hs.hub.Done(p.ref.Namespace, p.ref.Name) {
			t.Errorf("hub.Done(%s) = false", p.ref)
		}
	}
	if got := gauge(t, reg, "lastcall_sidecars_done"); got != n {
		t.Errorf("lastcall_sidecars_done = %v, want %d", got, n)
	}
}

// clientFrom returns an HTTP client whose connections come from ip.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// TestHubRefusesOtherPods calls the Hub over loopback from one pod's IP,
// naming itself, another pod, and a pod the node does not have.
func TestHubRefusesOtherPods(t *testing.T) {
	ips, dl, reg := newPodIPs(), newDoneLog(), prometheus.NewRegistry()
	a := sidecar.PodRef{Namespace: "work", Name: "a"}
	b := sidecar.PodRef{Namespace: "work", Name: "b"}
	ips.set(a, "127.0.2.1")
	ips.set(b, "127.0.2.2")
	hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: dl.onDone, Registerer: reg})
	hc := clientFrom("127.0.2.1")

	tests := []struct {
		name, method, path, body string
		wantCode                 int
		wantMsg                  string
	}{
		{"own state", "GET", "/v1/pods/work/a/state", "", 200, `"phase":"running"`},
		{"own report", "PUT", "/v1/pods/work/a/report", `{"done":false,"inflight":2}`, 204, ""},
		{"other pod's state", "GET", "/v1/pods/work/b/state", "", 403, "accepted only from the pod they name"},
		{"other pod's done", "PUT", "/v1/pods/work/b/report", `{"done":true}`, 403, "accepted only from the pod they name"},
		{"unknown pod", "PUT", "/v1/pods/work/c/report", `{"done":true}`, 403, "accepted only from the pod they name"},
		{"bad report", "PUT", "/v1/pods/work/a/report", `{"done":`, 400, "report"},
		{"bad generation", "GET", "/v1/pods/work/a/state?generation=x", "", 400, "generation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tt.method, hs.url()+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode || !strings.Contains(string(body), tt.wantMsg) {
				t.Errorf("%s %s = %d %q; want %d containing %q", tt.method, tt.path, resp.StatusCode, body, tt.wantCode, tt.wantMsg)
			}
			// A refusal tells the caller nothing of the node's pods.
			if resp.StatusCode == http.StatusForbidden && (strings.Contains(string(body), "127.0.2") || strings.Contains(string(body), "work/")) {
				t.Errorf("refusal reveals pods or IPs: %q", body)
			}
		})
	}
	if hs.hub.Done("work", "b") || len(dl.ch) != 0 {
		t.Error("a refused done report was recorded")
	}
	if n, ok := hs.hub.InFlight("work", "a"); !ok || n != 2 {
		t.Errorf("InFlight(work/a) = %d, %v; want 2", n, ok)
	}
	if got := gauge(t, reg, "lastcall_sidecar_requests_refused_total"); got != 3 {
		t.Errorf("refused = %v, want 3", got)
	}

	t.Run("sidecar with another pod's name", func(t *testing.T) {
		needBinaries(t)
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		// The sidecar calls itself work/b but dials from a's IP.
		p := startPod(ctx, t, podSpec{ref: b, ip: "127.0.2.1", hub: hs.url(), noWorker: true})
		if _, _, err := p.sidecar.waitLine(ctx, 0, func(l string) bool {
			return strings.Contains(l, "agent unreachable") && strings.Contains(l, "403 Forbidden")
		}); err != nil {
			t.Fatal(err)
		}
		st, err := p.client(t).State(ctx)
		if err != nil || st.Phase != sidecar.PhaseUnknown || st.AgentConnected {
			t.Errorf("state = %+v, %v; want unknown, not connected", st, err)
		}
	})
}

// TestAgentRestart stops the Hub and brings a new one up on the same port:
// the sidecars show unknown (not draining) meanwhile, keep the last
// generation, reconnect, send their reports again, and hear the next drain.
// A drain survives the next outage.
func TestAgentRestart(t *testing.T) {
	needBinaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ips := newPodIPs()
	hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips})
	var pods []*podProcs
	for i := range 3 {
		ref := sidecar.PodRef{Namespace: "work", Name: fmt.Sprintf("r-%d", i)}
		ip := fmt.Sprintf("127.0.3.%d", i+1)
		ips.set(ref, ip)
		pods = append(pods, startPod(ctx, t, podSpec{ref: ref, ip: ip, hub: hs.url(), done: false}))
	}
	for _, p := range pods {
		if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pods[0].client(t).InFlight(ctx, 5); err != nil {
		t.Fatal(err)
	}
	gen := hs.hub.State().Generation

	hs.stop()
	for _, p := range pods {
		st, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseUnknown))
		if err != nil {
			t.Fatal(err)
		}
		if st.AgentConnected || st.AgentGeneration != gen {
			t.Errorf("%s while the agent is away: %+v; want not connected, agent generation %d", p.ref, st, gen)
		}
	}

	hs2 := startHub(t, hs.addr, sidecar.HubOptions{Pods: ips})
	for _, p := range pods {
		if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
			t.Fatal(err)
		}
	}
	for {
		if n, ok := hs2.hub.InFlight("work", "r-0"); ok && n == 5 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the in-flight report did not reach the restarted hub")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if hs2.hub.State().Generation <= gen {
		t.Errorf("restarted hub's generation %d not above %d", hs2.hub.State().Generation, gen)
	}
	told, err := hs2.hub.Draining(ctx, testNotice(time.Now().Add(time.Minute)))
	if err != nil || told != len(pods) {
		t.Fatalf("Draining after restart: told %d, %v; want %d", told, err, len(pods))
	}
	hs2.stop()
	for _, p := range pods {
		st, err := p.waitState(ctx, t, func(s sidecar.State) bool { return !s.AgentConnected })
		if err != nil {
			t.Fatal(err)
		}
		if st.Phase != sidecar.PhaseDraining {
			t.Errorf("%s lost the drain when the agent went away: %+v", p.ref, st)
		}
	}
}

// TestSidecarRestart kills a sidecar and starts it again: before a drain it
// rejoins the hub; during one, it carries on draining, and its worker, which
// kept polling the same address, sees the drain.
func TestSidecarRestart(t *testing.T) {
	needBinaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ips := newPodIPs()
	hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, Linger: 100 * time.Millisecond})
	var pods []*podProcs
	for i := range 2 {
		ref := sidecar.PodRef{Namespace: "work", Name: fmt.Sprintf("s-%d", i)}
		ip := fmt.Sprintf("127.0.4.%d", i+1)
		ips.set(ref, ip)
		pods = append(pods, startPod(ctx, t, podSpec{ref: ref, ip: ip, hub: hs.url(), done: false}))
	}
	waitConnected(ctx, t, hs.hub, 2)

	p := pods[0]
	p.sidecar.kill()
	waitConnected(ctx, t, hs.hub, 1)
	p.startSidecar(ctx, t)
	waitConnected(ctx, t, hs.hub, 2)
	if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
		t.Fatal(err)
	}

	told, err := hs.hub.Draining(ctx, testNotice(time.Now().Add(time.Minute)))
	if err != nil || told != 2 {
		t.Fatalf("Draining: told %d, %v; want 2", told, err)
	}
	if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseDraining)); err != nil {
		t.Fatal(err)
	}
	p.sidecar.kill()
	hs.stop() // the agent is gone too: the sidecar must remember the drain itself
	p.startSidecar(ctx, t)
	st, err := p.client(t).State(ctx)
	if err != nil || st.Phase != sidecar.PhaseDraining || st.Reason != "preemption" {
		t.Errorf("restarted sidecar mid-drain: %+v, %v; want draining for preemption", st, err)
	}
	if _, _, err := p.worker.waitLine(ctx, 0, is("http draining preemption")); err != nil {
		t.Fatal(err)
	}
}

// TestPodTerminating deletes a pod as the kubelet would: the preStop hook
// (the binary's prestop subcommand) or SIGTERM to the sidecar drains with
// reason pod-terminating, and the worker sees the drain before its own
// SIGTERM.
func TestPodTerminating(t *testing.T) {
	needBinaries(t)
	tests := []struct {
		name string
		ip   string
		stop func(ctx context.Context, t *testing.T, p *podProcs)
	}{
		{"prestop hook", "127.0.5.1", func(ctx context.Context, t *testing.T, p *podProcs) {
			// The kubelet runs the worker's preStop hook, then sends it SIGTERM.
			hook := exec.CommandContext(ctx, filepath.Join(p.dir, "sidecar"), "prestop", "--addr", p.addr)
			out, err := hook.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "done=true") {
				t.Errorf("prestop hook: %v: %s", err, out)
			}
			p.worker.signal(syscall.SIGTERM)
			// Then the native sidecar gets SIGTERM, and exits at once.
			p.sidecar.signal(syscall.SIGTERM)
			if err := p.sidecar.wait(ctx); err != nil {
				t.Errorf("sidecar exit: %v", err)
			}
		}},
		{"sigterm to the sidecar", "127.0.5.2", func(ctx context.Context, t *testing.T, p *podProcs) {
			p.sidecar.signal(syscall.SIGTERM)
			// The sidecar drains, the worker says done, the sidecar exits.
			if err := p.sidecar.wait(ctx); err != nil {
				t.Errorf("sidecar exit: %v", err)
			}
			p.worker.signal(syscall.SIGTERM)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			ips, dl := newPodIPs(), newDoneLog()
			ref := sidecar.PodRef{Namespace: "work", Name: "term"}
			ips.set(ref, tt.ip)
			hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: dl.onDone})
			p := startPod(ctx, t, podSpec{ref: ref, ip: tt.ip, hub: hs.url(), want: "http", done: true})
			if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
				t.Fatal(err)
			}

			tt.stop(ctx, t, p)

			_, drainAt, err := p.worker.waitLine(ctx, 0, is("http draining pod-terminating"))
			if err != nil {
				t.Fatal(err)
			}
			_, doneAt, err := p.worker.waitLine(ctx, 0, is("done"))
			if err != nil {
				t.Fatal(err)
			}
			_, termAt, err := p.worker.waitLine(ctx, 0, hasPrefix("sigterm "))
			if err != nil {
				t.Fatal(err)
			}
			if !(drainAt < doneAt && doneAt < termAt) {
				t.Errorf("worker saw %q; want the drain, then done, then SIGTERM", p.worker.output())
			}
			if l := p.worker.output()[termAt]; l != "sigterm draining" {
				t.Errorf("worker at SIGTERM: %q, want draining", l)
			}
			select {
			case got := <-dl.ch:
				if got != ref {
					t.Errorf("OnDone(%s), want %s", got, ref)
				}
			case <-ctx.Done():
				t.Error("the hub never heard the pod was done")
			}
		})
	}
}

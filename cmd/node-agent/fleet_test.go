package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/fleet"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
)

var (
	fleetNodes   = flag.Int("fleet.nodes", 50, "simulated nodes, one agent each")
	fleetPreempt = flag.Float64("fleet.preempt", 0.3, "fraction of the nodes preempted at once, half GCE-style (30 s), half AWS-style (2 min)")
	fleetIdle    = flag.Duration("fleet.idle", time.Minute, "time at rest over which the agents' requests are counted")
	fleetReport  = flag.String("fleet.report", "", "write the markdown report to this file")
	fleetDir     = flag.String("fleet.dir", "", "keep the control plane's and the agents' logs here (default: a temporary directory)")
	fleetQPS     = flag.Int("fleet.controller-qps", 300, "kube-controller-manager's and kube-scheduler's client QPS")
	fleetSpread  = flag.Duration("fleet.start-spread", 30*time.Second, "start the agents evenly over this time, as a DaemonSet's pods come up; 0: all at once")
	fleetNice    = flag.Int("fleet.nice", 5, "run the agents' process at this nice value, above the control plane's: on a real fleet they do not share cores; 0 to share equally")
	fleetBase    = flag.Bool("fleet.baseline", false, "the agents are not told: the benchmark itself cordons and drains the preempted nodes with the drainer package, as a cluster admin (exempt from flow control, no client-side limit, one connection): what this control plane can do at best")
	fleetAPF     = flag.Bool("fleet.flowcontrol", true, "install the chart's priority levels and flow schemas (flowControl.create, the chart's default); false: the agents' requests fall in workload-low")
	fleetAWSPoll = flag.Duration("fleet.aws-poll", 2*time.Second, "the AWS agents' --aws-poll-interval (the chart's default is 250 ms): 500 agents at 5 requests a second each are 2,500 requests a second in this one process, which then starves")
)

// fleetIP is the loopback address of node i's metadata server and agent.
func fleetIP(i int) string { return fmt.Sprintf("127.1.%d.%d", i/250, i%250+1) }

// BenchmarkFleet runs a spot fleet on this machine (package
// internal/fleet): -fleet.nodes KWOK nodes with about 20 pods each, one
// real agent per node (this command's run, each with its own apiserver
// client, connection and watch, in this process), and preempts
// -fleet.preempt of them at once. It reports notice-to-cordon and
// notice-to-empty per kind, the pods left at a deadline, and the
// apiserver's load; `make fleet` writes the report. One iteration whatever
// b.N is.
//
//	go test -run '^$' -bench Fleet -benchtime 1x ./cmd/node-agent -fleet.nodes=1000
func BenchmarkFleet(b *testing.B) {
	if testing.Short() {
		b.Skip("needs the control plane and KWOK; skipped with -short")
	}
	for b.Loop() {
		runFleet(b)
	}
}

func runFleet(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	began := time.Now()
	dir := *fleetDir
	if dir == "" {
		dir = b.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	// say logs progress to the benchmark's log and, as it happens, to
	// Dir/progress.log: a 1,000-node run takes about 12 minutes.
	progress, err := os.Create(filepath.Join(dir, "progress.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer progress.Close()
	say := func(format string, args ...any) {
		b.Logf(format, args...)
		fmt.Fprintf(progress, "%s "+format+"\n", append([]any{time.Now().Format(time.TimeOnly)}, args...)...)
	}
	kwok := os.Getenv("LASTCALL_KWOK")
	if kwok == "" {
		kwok = "../../.tools/kwok"
	}
	n := *fleetNodes
	victims := int(math.Ceil(*fleetPreempt * float64(n)))
	if n < 2 || victims < 1 || victims >= n {
		b.Fatalf("-fleet.nodes=%d with -fleet.preempt=%v leaves no node preempted or none left", n, *fleetPreempt)
	}
	c, err := fleet.StartCluster(ctx, fleet.ClusterOptions{Kwok: kwok, Dir: dir, ControllerQPS: *fleetQPS})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := c.Stop(); err != nil {
			b.Error(err)
		}
	}()
	// The control plane and KWOK (the kubelets) would have machines of
	// their own, and the agents theirs: on this one, this process (the
	// agents, their metadata servers, the observer) yields to them.
	if err := fleet.Yield(*fleetNice); err != nil {
		b.Fatal(err)
	}
	if err := applyChart(ctx, c.Client, *fleetAPF); err != nil {
		b.Fatal(err)
	}
	obs := fleet.NewObserver(c.Client)
	if err := obs.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer obs.Stop()
	w := fleet.Workload{Nodes: n}
	if err := fleet.CreateNodes(ctx, c.Client, n); err != nil {
		b.Fatal(err)
	}
	if err := w.Create(ctx, c.Client); err != nil {
		b.Fatal(err)
	}
	want := w.Pods()
	for last := time.Now(); obs.Running() < want; time.Sleep(time.Second) {
		if time.Since(last) > 15*time.Second {
			say("%d of %d pods running", obs.Running(), want)
			last = time.Now()
		}
		if err := c.Err(); err != nil {
			b.Fatal(err)
		}
		if time.Since(began) > 30*time.Minute {
			b.Fatalf("only %d of %d pods running after %v", obs.Running(), want, time.Since(began))
		}
	}
	say("%d nodes, %d pods running after %v", n, want, time.Since(began).Round(time.Second))
	noAgents, err := fleet.ScrapeAPIServer(ctx, c.Client)
	if err != nil {
		b.Fatal(err)
	}

	// One metadata server and one agent per node.
	logf, err := os.Create(filepath.Join(dir, "agents.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	logger := slog.New(slog.NewJSONHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mds := make([]*fleet.Metadata, n)
	args := make([][]string, n)
	for i := range n {
		cloud := fleet.GCE
		if i%2 == 1 {
			cloud = fleet.AWS
		}
		if mds[i], err = fleet.ServeMetadata(cloud, fleetIP(i)+":8080"); err != nil {
			b.Fatal(err)
		}
		defer mds[i].Close()
		kubeconfig, err := c.AgentKubeconfig(fleet.NodeName(i))
		if err != nil {
			b.Fatal(err)
		}
		args[i] = []string{"--node-name", fleet.NodeName(i), "--kubeconfig", kubeconfig, "--pod-namespace", "lastcall",
			"--listen", fleetIP(i) + ":10573", "--sidecar-listen", ""}
		if cloud == fleet.GCE {
			args[i] = append(args[i], "--cloud", "gce", "--gce-metadata-host", mds[i].Addr())
		} else {
			args[i] = append(args[i], "--cloud", "aws", "--aws-imds-endpoint", "http://"+mds[i].Addr(), "--aws-poll-interval", fleetAWSPoll.String())
		}
	}
	agentsCtx, stopAgents := context.WithCancel(ctx)
	var agents sync.WaitGroup
	defer func() { stopAgents(); agents.Wait() }()
	started := time.Now()
	for i := range n {
		o, err := parseFlags(args[i], func(string) string { return "" }, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(time.Until(started.Add(*fleetSpread * time.Duration(i) / time.Duration(n))))
		agents.Go(func() {
			if err := run(agentsCtx, o, logger); err != nil {
				b.Errorf("agent of %s: %v", o.node, err)
			}
		})
	}
	// Readiness is the access check passing; an agent that is not ready
	// still handles notices, so the run goes on and says how many were not.
	notReady := waitReady(ctx, n, 10*time.Minute)
	ready := time.Now()
	say("%d agents started over %v, %d of them ready after %v", n, *fleetSpread, n-notReady, ready.Sub(started).Round(time.Millisecond))

	// At rest, once every access check (started up to 10 s after its
	// agent) is done.
	time.Sleep(15 * time.Second)
	rest, err := fleet.ScrapeAPIServer(ctx, c.Client)
	if err != nil {
		b.Fatal(err)
	}
	idleCPU := sampleCPU(b)
	idleFrom := time.Now()
	time.Sleep(*fleetIdle)
	idleTo := time.Now()
	idleCPUEnd := sampleCPU(b)

	// The preemption: victims spread over the fleet, alternately GCE and
	// AWS.
	var picked []int
	for i := 0; i < n && len(picked) < victims; i++ {
		if i%20 < 6 {
			picked = append(picked, i)
		}
	}
	for i := 0; i < n && len(picked) < victims; i++ {
		if i%20 >= 6 {
			picked = append(picked, i)
		}
	}
	before, err := fleet.ScrapeAPIServer(ctx, c.Client)
	if err != nil {
		b.Fatal(err)
	}
	var (
		baseline sync.WaitGroup
		baseMu   sync.Mutex // guards baseReps
		baseReps []drainer.Report
	)
	base := baselineDrainer{d: drainer.New(clientset.New(c.Client), drainer.Options{Pods: obs})}
	cpu := sampleCPU(b)
	first := time.Now()
	var last time.Time
	for _, i := range picked {
		notice := time.Now()
		cloud, deadline := fleet.GCE, notice.Add(30*time.Second)
		if i%2 == 1 {
			cloud, deadline = fleet.AWS, notice.Add(2*time.Minute).Truncate(time.Second)
		}
		obs.Preempted(fleet.NodeName(i), cloud, notice, deadline)
		if *fleetBase {
			baseline.Go(func() {
				rep, err := base.Drain(ctx, fleet.NodeName(i), cloud, deadline)
				if err != nil {
					b.Error(err)
				}
				baseMu.Lock()
				defer baseMu.Unlock()
				baseReps = append(baseReps, rep)
			})
		} else {
			mds[i].Preempt(deadline)
		}
		if deadline.After(last) {
			last = deadline
		}
	}
	say("preempted %d of %d nodes in %v", len(picked), n, time.Since(first).Round(time.Microsecond))
	// Where the cores go, every 10 s, into the log.
	for prev := cpu; time.Now().Before(last.Add(10 * time.Second)); {
		time.Sleep(min(10*time.Second, time.Until(last.Add(10*time.Second))))
		now := sampleCPU(b)
		say("+%v cpu cores: %s", time.Since(first).Round(time.Second), strings.Join(now.Cores(prev), ", "))
		prev = now
	}
	after, err := fleet.ScrapeAPIServer(ctx, c.Client)
	if err != nil {
		b.Fatal(err)
	}
	end := time.Now()
	cpuEnd := sampleCPU(b)

	r := &fleet.Report{
		Nodes: n, Preempted: len(picked), Pods: want, Setup: ready.Sub(began),
		Records: obs.Records(), Window: end.Sub(first), Before: before, After: after,
		NoAgents: noAgents, Rest: rest, StartSpread: *fleetSpread, NotReady: notReady, IdleWindow: idleTo.Sub(idleFrom), StartTook: ready.Sub(started),
		Evictions: map[string]float64{}, Drains: map[string]float64{},
		FlowControl: *fleetAPF,
		IdleCPU:     idleCPU, IdleCPUEnd: idleCPUEnd, CPU: cpu, CPUEnd: cpuEnd,
		Agent: "node-agent's run, one instance per node in one process, each with its own client certificate, TLS connection, informer and watch, metrics server and metadata server",
	}
	baseline.Wait()
	for _, rep := range baseReps {
		for _, p := range rep.Pods {
			r.Evictions[string(p.Outcome)]++
		}
		r.Drains[map[bool]string{true: "drained", false: "incomplete"}[rep.Drained]]++
	}
	if *fleetBase {
		r.Agent = "none told: the benchmark drained the preempted nodes itself (-fleet.baseline), with the drainer package and one cluster-admin client, exempt from flow control; " + r.Agent
		picked = nil // no agent's metrics to read
	}
	for _, i := range picked {
		m, err := fleet.ScrapeAgent(ctx, fleetIP(i)+":10573")
		if err != nil {
			b.Error(err)
			continue
		}
		for k, v := range m.Sum("lastcall_evictions_total", "outcome", nil) {
			r.Evictions[k] += v
		}
		for k, v := range m.Sum("lastcall_drains_total", "result", nil) {
			r.Drains[k] += v
		}
	}
	if r.Start, err = auditBetween(c.AuditLog, started, ready); err != nil {
		b.Fatal(err)
	}
	if r.Idle, err = auditBetween(c.AuditLog, idleFrom, idleTo); err != nil {
		b.Fatal(err)
	}
	if r.Agents, err = auditBetween(c.AuditLog, first, end); err != nil {
		b.Fatal(err)
	}
	report := r.Markdown()
	b.Log("\n" + report)
	if *fleetReport != "" {
		if err := os.WriteFile(*fleetReport, []byte(report), 0o644); err != nil {
			b.Error(err)
		}
	}
	// lastcall's two promises per node: cordoned, and empty by the
	// deadline. The report above says by how much a run missed them.
	notEmpty := 0
	for _, rec := range r.Records {
		if rec.Cordoned.IsZero() {
			b.Errorf("%s (%s) never seen cordoned", rec.Node, rec.Cloud)
		}
		if len(rec.LeftAtDeadline) > 0 {
			notEmpty++
			b.Errorf("%s (%s) not empty at its deadline: %v", rec.Node, rec.Cloud, rec.LeftAtDeadline)
		}
	}
	b.ReportMetric(float64(notEmpty), "nodes-not-empty")
}

// baselineDrainer drains a node as an agent's drainer would, cordon
// first, from the benchmark's own admin client.
type baselineDrainer struct{ d *drainer.Drainer }

func (bd baselineDrainer) Drain(ctx context.Context, node string, cloud fleet.Cloud, deadline time.Time) (drainer.Report, error) {
	if _, err := bd.d.Cordon(ctx, node, string(cloud), "preemption"); err != nil {
		return drainer.Report{Node: node}, err
	}
	return bd.d.Drain(ctx, node, deadline, drainer.Policy{})
}

// sampleCPU samples where the run's CPU time went (fleet.SampleCPU).
func sampleCPU(b *testing.B) fleet.CPU {
	b.Helper()
	s, err := fleet.SampleCPU()
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// auditBetween returns the agents' requests received in [from, to).
func auditBetween(path string, from, to time.Time) ([]kubetest.AuditEvent, error) {
	evs, err := kubetest.ReadAuditLog(path, fleet.AgentUser, from)
	if err != nil {
		return nil, err
	}
	out := evs[:0]
	for _, e := range evs {
		if e.Received.Before(to) {
			out = append(out, e)
		}
	}
	return out, nil
}

// waitReady waits until every agent's /readyz answers 200, or timeout;
// it returns how many did not.
func waitReady(ctx context.Context, n int, timeout time.Duration) int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	pending := make([]int, n)
	for i := range pending {
		pending[i] = i
	}
	for {
		var mu sync.Mutex
		var still []int
		g := errgroup.Group{}
		g.SetLimit(64)
		for _, i := range pending {
			g.Go(func() error {
				resp, err := client.Get("http://" + fleetIP(i) + ":10573/readyz")
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					resp.Body.Close()
				}
				if !ok {
					mu.Lock()
					still = append(still, i)
					mu.Unlock()
				}
				return nil
			})
		}
		_ = g.Wait()
		pending = still
		if len(pending) == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return len(pending)
		case <-time.After(time.Second):
		}
	}
}

// applyChart creates what the chart installs for the agents at the cluster
// level, rendered by helm: the ClusterRole and ClusterRoleBinding and, with
// flowControl, the priority level and flow schema.
func applyChart(ctx context.Context, client kubernetes.Interface, flowControl bool) error {
	helm := os.Getenv("LASTCALL_HELM")
	if helm == "" {
		helm = "../../.tools/helm"
	}
	args := []string{"template", "lastcall", "../../charts/lastcall", "--namespace", "lastcall",
		"--show-only", "templates/clusterrole.yaml", "--show-only", "templates/clusterrolebinding.yaml"}
	if flowControl {
		args = append(args, "--show-only", "templates/flowcontrol.yaml", "--set", "flowControl.create=true")
	} else {
		args = append(args, "--set", "flowControl.create=false")
	}
	out, err := exec.CommandContext(ctx, helm, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return fmt.Errorf("helm template (make fleet builds helm): %w", err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			continue // an empty document
		}
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			_, err = client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			for _, s := range o.Subjects {
				if "system:serviceaccount:"+s.Namespace+":"+s.Name != fleet.AgentUser {
					return fmt.Errorf("the chart binds %s/%s, the agents run as %s", s.Namespace, s.Name, fleet.AgentUser)
				}
			}
			_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *flowcontrolv1.PriorityLevelConfiguration:
			_, err = client.FlowcontrolV1().PriorityLevelConfigurations().Create(ctx, o, metav1.CreateOptions{})
		case *flowcontrolv1.FlowSchema:
			_, err = client.FlowcontrolV1().FlowSchemas().Create(ctx, o, metav1.CreateOptions{})
		default:
			return fmt.Errorf("the chart rendered a %T where the fleet expects RBAC or flow control", obj)
		}
		if err != nil {
			return err
		}
	}
}

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/ec2mock"
	"github.com/lastcall-dev/lastcall/kubeclient/clientset"
)

const (
	release   = "lastcall"
	releaseNS = "lastcall-system"
	workNS    = "e2e-work"
	// nodeName and nodeIP are those of hack/cluster.sh.
	nodeName = "lastcall-e2e"
	nodeIP   = "10.213.0.1"
	// replicas is the worker Deployment's size; grace its pods'
	// terminationGracePeriodSeconds.
	replicas = 2
	grace    = 20
	// long is the work of the message a worker still holds when a GCE
	// preemption (30 s) comes: it cannot finish, and is handed back; within
	// an AWS spot notice (2 min) it finishes.
	long = 40 * time.Second
)

// cluster is the test's view of the one-node cluster and what runs beside
// it on this machine: the GCE metadata fake, the EC2 metadata mock, the
// NATS JetStream server the workers pull from.
type cluster struct {
	client     kubernetes.Interface
	kubeconfig string
	helm       string
	tag        string
	registry   string // the registry on loopback with the images and the chart
	kubeletLog string
	gce        *gceFake
	ec2Port    string
	ec2        *ec2mock.Mock
	natsURL    string
	js         jetstream.JetStream
	ledger     *ledger
	published  int
	agentRSS   []string // the output's lines about the agent's memory
	// extraValues are more chart values (key=value) of every helm run.
	extraValues []string
	// root is the whole test's T, for what outlives a step.
	root *testing.T
}

func TestRealNode(t *testing.T) {
	c := setup(t)
	for _, step := range []struct {
		name string
		fn   func(*testing.T, *cluster)
	}{
		{"helm-install", testInstall},
		{"sidecar-injected", testInjected},
		{"gce-preemption", testGCEPreemption},
		{"aws-spot-interruption", testAWSSpot},
		{"scale-down", testScaleDown},
		{"agent-killed-mid-drain", testAgentKilled},
		{"nth-beside-lastcall", testNTHBeside},
		{"kubectl-drain", testKubectlDrain},
		{"karpenter-taint", testKarpenter},
		{"cluster-autoscaler-taint", testClusterAutoscaler},
	} {
		if !t.Run(step.name, func(t *testing.T) { step.fn(t, c) }) {
			t.Fatalf("%s failed; the later steps depend on it", step.name)
		}
	}
	for _, l := range c.agentRSS {
		t.Log(l)
	}
}

func setup(t *testing.T) *cluster {
	kubeconfig := os.Getenv("LASTCALL_E2E_KUBECONFIG")
	if kubeconfig == "" || testing.Short() {
		t.Skip("end-to-end test on a real node: run `make e2e` (sets LASTCALL_E2E_KUBECONFIG)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = -1, -1
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		root:       t,
		client:     client,
		kubeconfig: kubeconfig,
		helm:       os.Getenv("LASTCALL_HELM"),
		tag:        os.Getenv("LASTCALL_E2E_IMAGE_TAG"),
		registry:   os.Getenv("LASTCALL_E2E_REGISTRY"),
		kubeletLog: os.Getenv("LASTCALL_E2E_KUBELET_LOG"),
		gce:        startGCEFake(t),
		ec2Port:    ec2mock.FreePort(t),
	}
	if c.helm == "" || c.tag == "" || c.kubeletLog == "" || c.registry == "" {
		t.Fatal("LASTCALL_HELM, LASTCALL_E2E_IMAGE_TAG, LASTCALL_E2E_KUBELET_LOG and LASTCALL_E2E_REGISTRY must be set (make e2e sets them)")
	}

	// NATS on the node's address (the cluster's bridge): the pods reach it
	// there.
	ns, err := server.NewServer(&server.Options{Host: nodeIP, Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	c.natsURL = ns.ClientURL()
	nc, err := nats.Connect(c.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c.ledger = subscribeLedger(t, nc, "e2e.ledger")
	if c.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := c.js.CreateStream(ctx, jetstream.StreamConfig{Name: "JOBS", Subjects: []string{"jobs"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.js.CreateConsumer(ctx, "JOBS", jetstream.ConsumerConfig{
		Durable: "workers", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

// helmRun runs helm against the cluster.
func (c *cluster) helmRun(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), c.helm, append(args, "--kubeconfig", c.kubeconfig)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// helmValues are the chart values of the test: the injector (on by
// default) on this one node, the agent pointed at the metadata fakes on the node's loopback (it
// runs with hostNetwork). The images are the chart's defaults, pulled from
// the registry on loopback (containerd's mirror of ghcr.io).
func (c *cluster) helmValues(cloud string) []string {
	var out []string
	for _, v := range []string{
		"injector.replicas=1",
		"injector.avoidSpotNodes=false",
		"agent.cloud=" + cloud,
		"agent.metadata.gceHost=" + c.gce.addr,
		"agent.metadata.awsEndpoint=http://127.0.0.1:" + c.ec2Port,
		"agent.metadata.awsPollInterval=500ms",
		"agent.logFormat=text",
	} {
		out = append(out, "--set", v)
	}
	for _, v := range c.extraValues {
		out = append(out, "--set", v)
	}
	return out
}

func testInstall(t *testing.T, c *cluster) {
	start := time.Now()
	c.runInstallDocs(t)
	t.Logf("the install docs' commands, with helm install --wait: %.1fs (agent DaemonSet and injector ready, images pulled from %s)",
		time.Since(start).Seconds(), c.registry)
	agent := c.agentPod(t)
	mem := c.waitMemory(t, releaseNS, agent.Name, "node-agent")
	rss, err := processRSS("node-agent")
	if err != nil {
		t.Fatal(err)
	}
	c.agentRSS = append(c.agentRSS, "agent at rest: kubelet /stats/summary rssBytes "+mib(mem.RSS)+", workingSetBytes "+mib(mem.WorkingSet)+
		"; process VmRSS "+mib(rss))
}

func testInjected(t *testing.T, c *cluster) {
	ctx := t.Context()
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: workNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitInjection(t)
	if _, err := c.client.AppsV1().Deployments(workNS).Create(ctx, c.workerDeployment(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := c.waitWorkers(t, replicas)
	for _, p := range pods {
		ic := p.Spec.InitContainers
		if len(ic) == 0 || ic[0].Name != "lastcall" || ic[0].RestartPolicy == nil || *ic[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Fatalf("pod %s: no native sidecar injected: init containers %+v", p.Name, ic)
		}
		if want := "ghcr.io/lastcall-dev/sidecar:" + c.tag; ic[0].Image != want {
			t.Errorf("pod %s: sidecar image %s, want %s", p.Name, ic[0].Image, want)
		}
		w := p.Spec.Containers[0]
		if w.Lifecycle == nil || w.Lifecycle.PreStop == nil || w.Lifecycle.PreStop.Exec == nil ||
			!slices.Equal(w.Lifecycle.PreStop.Exec.Command, []string{"/lastcall/sidecar", "prestop"}) {
			t.Errorf("pod %s: worker preStop %+v", p.Name, w.Lifecycle)
		}
	}
	t.Logf("%d worker pods with the native sidecar, injected through the Service-routed webhook; %d sidecars subscribed to the agent", len(pods), replicas)
}

func (c *cluster) workerDeployment() *appsv1.Deployment {
	labels := map[string]string{"app": "e2e-worker", "lastcall.dev/inject": "enabled"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "workers", Namespace: workNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(replicas)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "e2e-worker"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr(int64(grace)),
					Containers: []corev1.Container{{
						Name:            "worker",
						Image:           "lastcall.dev/e2e-worker:" + c.tag,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"-nats", c.natsURL},
						Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot: ptr(true), AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// agentPod returns the running agent pod.
func (c *cluster) agentPod(t *testing.T) corev1.Pod {
	t.Helper()
	var found corev1.Pod
	c.poll(t, 2*time.Minute, "a ready agent pod", func(ctx context.Context) (bool, error) {
		pods, err := c.client.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node-agent"})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && ready(&p) {
				found = p
				return true, nil
			}
		}
		return false, nil
	})
	return found
}

func ready(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitWorkers waits until n worker pods are ready, with their sidecars
// subscribed to the agent and their workers started, and returns them.
// waitInjection waits until a worker pod created now gets its sidecar: a
// server-side dry run of one comes back injected. helm install --wait
// returns once the injector is ready, but the apiserver reaches it through
// its Service, whose route the node's proxy programs a moment later; a pod
// created in between starts without the sidecar (the webhook's
// failurePolicy is Ignore), as docs/troubleshooting.md says.
func (c *cluster) waitInjection(t *testing.T) {
	t.Helper()
	tmpl := c.workerDeployment().Spec.Template
	probe := &corev1.Pod{ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
	probe.Name, probe.Namespace = "injection-probe", workNS
	start := time.Now()
	var last string
	c.poll(t, time.Minute, "a dry-run worker pod injected with the sidecar", func(ctx context.Context) (bool, error) {
		got, err := c.client.CoreV1().Pods(workNS).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		for _, ic := range got.Spec.InitContainers {
			if ic.Name == "lastcall" {
				return true, nil
			}
		}
		last = "created without the sidecar"
		return false, nil
	})
	t.Logf("injection works %v after the step began (last miss: %q)", time.Since(start).Round(time.Millisecond), last)
}

func (c *cluster) waitWorkers(t *testing.T, n int) []corev1.Pod {
	t.Helper()
	var out []corev1.Pod
	c.poll(t, 3*time.Minute, fmt.Sprintf("%d ready worker pods with their sidecars subscribed", n), func(ctx context.Context) (bool, error) {
		pods, err := c.workerPods(ctx)
		if err != nil {
			return false, err
		}
		out = out[:0]
		for _, p := range pods {
			if p.DeletionTimestamp == nil && ready(&p) {
				out = append(out, p)
			}
		}
		if len(out) != n || len(pods) != n {
			return false, nil
		}
		connected, err := agentMetric(ctx, "lastcall_sidecars_connected")
		return err == nil && connected == float64(n), nil
	})
	return out
}

func (c *cluster) workerPods(ctx context.Context) ([]corev1.Pod, error) {
	pods, err := c.client.CoreV1().Pods(workNS).List(ctx, metav1.ListOptions{LabelSelector: "app=e2e-worker"})
	if err != nil {
		return nil, err
	}
	return pods.Items, nil
}

// agentMetric reads one unlabelled metric from the agent's /metrics on the
// node.
func agentMetric(ctx context.Context, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+nodeIP+":10573/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// poll calls cond every 200 ms until it returns true, failing the test
// after timeout with the last error.
func (c *cluster) poll(t *testing.T, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error: %v)\n%s", what, ctx.Err(), last, c.state())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitMemory returns the kubelet's measure of a container's memory once it
// has one.
func (c *cluster) waitMemory(t *testing.T, namespace, pod, container string) containerMemory {
	t.Helper()
	var mem containerMemory
	c.poll(t, time.Minute, "the kubelet's stats of "+pod, func(ctx context.Context) (bool, error) {
		m, err := podMemory(ctx, c.client, nodeName, namespace, pod)
		mem = m[container]
		return err == nil && mem.RSS > 0, err
	})
	return mem
}

// publish adds messages whose work takes each of costs, and returns when
// the server has them.
func (c *cluster) publish(t *testing.T, costs ...time.Duration) {
	t.Helper()
	for _, cost := range costs {
		msg := nats.NewMsg("jobs")
		msg.Header.Set("Cost", cost.String())
		msg.Data = []byte(strconv.Itoa(c.published + 1))
		if _, err := c.js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
		c.published++
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

// waitBusy waits until each of pods has taken a message since t0.
func (c *cluster) waitBusy(t *testing.T, pods []corev1.Pod, t0 time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	err := c.ledger.waitFor(ctx, t0, func(es []event) bool {
		for _, p := range pods {
			if !slices.ContainsFunc(es, func(e event) bool { return e.Pod == p.Name && e.What == "got" }) {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("workers not busy: %v\n%s", err, c.state())
	}
}

// podWatch records when each worker pod's deletion was asked for and when
// it was gone, as the apiserver told a watch.
type podWatch struct {
	mu     sync.Mutex
	events []event
	gone   map[string]bool
	stop   context.CancelFunc
	done   chan struct{}
}

func (c *cluster) watchPods(t *testing.T) *podWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w, err := c.client.CoreV1().Pods(workNS).Watch(ctx, metav1.ListOptions{LabelSelector: "app=e2e-worker"})
	if err != nil {
		t.Fatal(err)
	}
	pw := &podWatch{gone: map[string]bool{}, stop: cancel, done: make(chan struct{})}
	deleting := map[string]bool{}
	go func() {
		defer close(pw.done)
		defer w.Stop()
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			now := time.Now()
			pw.mu.Lock()
			if p.DeletionTimestamp != nil && !deleting[p.Name] {
				deleting[p.Name] = true
				pw.events = append(pw.events, event{Pod: p.Name, What: "api: deletion requested", At: now,
					Detail: "grace " + strconv.FormatInt(ptrOr(p.DeletionGracePeriodSeconds), 10) + "s"})
			}
			if ev.Type == watch.Deleted {
				pw.gone[p.Name] = true
				pw.events = append(pw.events, event{Pod: p.Name, What: "api: pod gone", At: now})
			}
			pw.mu.Unlock()
		}
	}()
	t.Cleanup(pw.close)
	return pw
}

func ptrOr(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}

func (pw *podWatch) close() {
	pw.stop()
	<-pw.done
}

// waitGone waits until each of pods is gone.
func (pw *podWatch) waitGone(t *testing.T, c *cluster, pods []corev1.Pod, timeout time.Duration) {
	t.Helper()
	c.poll(t, timeout, "the worker pods to be gone", func(context.Context) (bool, error) {
		pw.mu.Lock()
		defer pw.mu.Unlock()
		for _, p := range pods {
			if !pw.gone[p.Name] {
				return false, nil
			}
		}
		return true, nil
	})
}

func (pw *podWatch) snapshot() []event {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	return slices.Clone(pw.events)
}

// record builds the scenario's timeline from the notice (or scale-down) at
// t0: the workers' ledger, the apiserver watch, the kubelet's log.
func (c *cluster) record(t *testing.T, title string, t0 time.Time, pw *podWatch, pods []corev1.Pod) *timeline {
	t.Helper()
	tl := &timeline{t0: t0}
	tl.add(event{Pod: "-", What: title, At: t0})
	names := map[string]bool{}
	for _, p := range pods {
		names[p.Name] = true
	}
	for _, e := range c.ledger.since(t0) {
		if names[e.Pod] && e.What != "got" {
			tl.add(e)
		}
	}
	for _, e := range pw.snapshot() {
		if names[e.Pod] {
			tl.add(e)
		}
	}
	kes, err := kubeletEvents(c.kubeletLog, workNS, t0.Add(-time.Second))
	if err != nil {
		t.Fatalf("kubelet log: %v", err)
	}
	for _, e := range kes {
		if names[e.Pod] {
			tl.add(e)
		}
	}
	t.Logf("timeline (%s), seconds from t0 %s:\n%s", title, t0.Format("15:04:05.000"), tl)
	return tl
}

// resetNode makes the node a fresh one again after a notice, as a new
// machine would be: no notice, uncordoned, a new agent (with cloud).
func (c *cluster) resetNode(t *testing.T, cloud string) {
	t.Helper()
	ctx := t.Context()
	c.gce.set("instance/preempted", "FALSE")
	if c.ec2 != nil {
		c.ec2.Stop()
		c.ec2 = nil
	}
	if cloud == "aws" {
		// A new machine's metadata, with no notice (none for a day), as a
		// real node always has: the agent reads it and knows none holds.
		// It runs until a step replaces it or the whole test ends.
		c.startEC2(c.root, "spot", "--mock-delay-sec", "86400", "--rebalance-delay-sec", "86400")
	}
	// A new agent, as a new machine would have; with a changed cloud the
	// upgrade rolls the DaemonSet.
	old := c.agentPod(t)
	c.helmRun(t, append([]string{"upgrade", release, "oci://" + c.registry + "/lastcall-dev/charts/lastcall", "--plain-http",
		"-n", releaseNS}, c.helmValues(cloud)...)...)
	if err := c.client.CoreV1().Pods(releaseNS).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	c.poll(t, 2*time.Minute, "a new agent", func(ctx context.Context) (bool, error) {
		a := c.agentPod(t)
		return a.UID != old.UID, nil
	})
	// The new agent finds no notice; the cordon is undone here whether or
	// not the agent undid its own.
	if _, err := drainer.New(clientset.New(c.client), drainer.Options{}).Uncordon(ctx, nodeName); err != nil {
		t.Fatal(err)
	}
	// Worker pods created while the injector was evicted went without
	// the sidecar (failurePolicy Ignore): replace them.
	c.poll(t, 2*time.Minute, "the injector", func(ctx context.Context) (bool, error) {
		d, err := c.client.AppsV1().Deployments(releaseNS).Get(ctx, release+"-injector", metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas >= 1, err
	})
	pods, err := c.workerPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if len(p.Spec.InitContainers) == 0 {
			t.Logf("pod %s was created while the injector was down, without the sidecar: replacing it", p.Name)
			if err := c.client.CoreV1().Pods(workNS).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// settle brings the workers back, lets them process every message
// published so far, and checks the ledger: every message acknowledged
// exactly once, none lost.
func (c *cluster) settle(t *testing.T) {
	t.Helper()
	c.waitWorkers(t, replicas)
	c.waitProcessed(t)
}

// waitProcessed waits until the stream holds nothing unacknowledged and
// every published message was acknowledged, then checks the ledger.
func (c *cluster) waitProcessed(t *testing.T) {
	t.Helper()
	c.poll(t, 3*time.Minute, "every message processed", func(ctx context.Context) (bool, error) {
		cons, err := c.js.Consumer(ctx, "JOBS", "workers")
		if err != nil {
			return false, err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return false, err
		}
		return info.NumPending == 0 && info.NumAckPending == 0 && c.ledger.check(c.published).acked == c.published, nil
	})
	r := c.ledger.check(c.published)
	t.Logf("ledger: %s", r)
	for _, p := range r.problems {
		t.Error(p)
	}
}

// startEC2 runs the EC2 metadata mock with args on the agent's metadata
// port, in place of the one running, until t ends.
func (c *cluster) startEC2(t *testing.T, args ...string) {
	t.Helper()
	if c.ec2 != nil {
		c.ec2.Stop()
	}
	c.ec2 = ec2mock.Start(t, c.ec2Port, args...)
}

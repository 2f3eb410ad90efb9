package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// Options describe a simulated cluster.
type Options struct {
	// Env is the running control plane. Required.
	Env *kubetest.Env
	// AgentBin and SidecarBin are the built node-agent and sidecar
	// binaries (see Build). Required.
	AgentBin, SidecarBin string
	// Dir holds kubeconfigs, sidecar state and the stream's store; it must
	// exist. Required.
	Dir string
	// Nodes is the number of nodes (default 3).
	Nodes int
	// PodsPerNode is the number of worker pods per node (default 2).
	PodsPerNode int
	// WorkersPerPod is the number of workers in each pod (default 2).
	WorkersPerPod int
	// IPBase is the second octet of the pod IPs: node i's pods get
	// 127.IPBase.(i+1).x (default 50).
	IPBase int
	// Margin is kept back from the deadline when a draining worker decides
	// whether the rest of its task still fits (default 500ms).
	Margin time.Duration
	// AckWait is how long the server waits for the acknowledgement of a
	// delivered message before it redelivers it (default 5s; JetStream's
	// own default is 30s). Workers report progress on long messages every
	// 500ms, so only a dead worker's messages wait it out.
	AckWait time.Duration
	// OnEvent, when set, is called with every Event as it happens, from
	// several goroutines.
	OnEvent func(Event)
	// Logger receives the cluster's own log; default discards.
	Logger *slog.Logger
}

// Event is one step of a preemption, for the timeline.
type Event struct {
	// Time is when it was seen.
	Time time.Time
	// Node is the node it concerns.
	Node string
	// Pod is the pod it concerns, if any.
	Pod string
	// What happened: "notice", "cordoned", "told", "stopped pulling", "idle",
	// "finished", "handed back", "done", "resumed", "evicted", "gone", "died".
	What string
	// Detail says more (a message id, a deadline).
	Detail string
}

// Cluster is a running simulated cluster. Close it.
type Cluster struct {
	opts   Options
	log    *slog.Logger
	env    *kubetest.Env
	ns     string
	nodes  []*Node
	byName map[string]*Node
	ledger *Ledger
	ids    []string

	nats *server.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	cons jetstream.Consumer

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // workers and watchers
}

// Node is one simulated node.
type Node struct {
	// Name is the Node's name.
	Name string
	// User is the agent's user name in the apiserver's audit log.
	User string
	// Trigger is the agent's POST /notice address.
	Trigger string
	// Metrics is the agent's /metrics address.
	Metrics string
	// Hub is the agent's sidecar endpoint.
	Hub string
	// Started is when the agent was ready.
	Started time.Time

	agent       *proc
	pgid        int // the process group of the agent and the sidecars
	pods        []*Pod
	stopKubelet func()
	ctx         context.Context // ends when the node dies
	die         context.CancelFunc

	// life is held shared by a worker's step that must happen entirely
	// before the node dies or not at all, and exclusively by the kill.
	life sync.RWMutex
	dead bool // guarded by life

	mu       sync.Mutex // guards the fields below
	notice   time.Time
	deadline time.Time
}

// Pod is one worker pod: a sidecar process and its workers.
type Pod struct {
	// Name is the pod's name.
	Name string
	// IP is the pod's IP, where its sidecar serves the workers.
	IP string
	// API is the sidecar's workers' API address.
	API     string
	sidecar *proc
	nc      *nats.Conn // the workers' own connection, closed when the node dies
	cons    jetstream.Consumer
	busy    sync.Map // message id → *held, while a worker holds it
}

// Phase is how far a worker has got with a message it holds.
type Phase string

// The phases of a held message.
const (
	// PhaseWorking is before its result is saved.
	PhaseWorking Phase = "working"
	// PhaseCommitted is after its result is saved and before its
	// acknowledgement is sent.
	PhaseCommitted Phase = "committed"
	// PhaseAcking is once its acknowledgement is being sent, until the
	// server's confirmation is back: the server may or may not have it.
	PhaseAcking Phase = "acking"
)

// held is a message a worker holds.
type held struct {
	id    string
	cost  time.Duration
	phase atomic.Value // Phase
}

// Held is a message a worker held when its node died.
type Held struct {
	// ID is the message's id.
	ID string
	// Node and Pod are the worker's.
	Node, Pod string
	// Phase is how far the worker had got.
	Phase Phase
}

// Job is the work a message asks for.
type Job struct {
	// Cost is the work before the result is saved.
	Cost time.Duration
	// Tail is the work after the result is saved and before the message
	// is acknowledged (say, cleaning up).
	Tail time.Duration
}

func jobOf(msg jetstream.Msg) Job {
	var j Job
	j.Cost, _ = time.ParseDuration(msg.Headers().Get("Cost"))
	j.Tail, _ = time.ParseDuration(msg.Headers().Get("Tail"))
	return j
}

// proc is one child process.
type proc struct {
	cmd  *exec.Cmd
	out  *buffer
	done chan struct{}
}

type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startProc starts a process in process group pgid, or in a new group of
// its own if pgid is 0.
func startProc(pgid int, name string, args ...string) (*proc, error) {
	p := &proc{cmd: exec.Command(name, args...), out: &buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: pgid}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", filepath.Base(name), err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// kill ends the process at once, like a machine switched off.
func (p *proc) kill() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Build compiles the node-agent and sidecar binaries into dir and returns
// their paths.
func Build(ctx context.Context, dir string) (agentBin, sidecarBin string, err error) {
	agentBin, sidecarBin = filepath.Join(dir, "node-agent"), filepath.Join(dir, "sidecar")
	for bin, pkg := range map[string]string{agentBin: "github.com/lastcall-dev/lastcall/cmd/node-agent", sidecarBin: "github.com/lastcall-dev/lastcall/cmd/sidecar"} {
		out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			return "", "", fmt.Errorf("build %s: %w\n%s", pkg, err, out)
		}
	}
	return agentBin, sidecarBin, nil
}

func freeAddr(host string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("free port on %s: %w", host, err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Start builds the cluster: the stream (empty), the nodes with their
// agents, and the worker pods with their sidecars and workers, which start
// pulling at once. Publish the work with Publish.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Env == nil || opts.AgentBin == "" || opts.SidecarBin == "" || opts.Dir == "" {
		return nil, errors.New("demo: Env, AgentBin, SidecarBin and Dir are required")
	}
	if opts.Nodes <= 0 {
		opts.Nodes = 3
	}
	if opts.PodsPerNode <= 0 {
		opts.PodsPerNode = 2
	}
	if opts.WorkersPerPod <= 0 {
		opts.WorkersPerPod = 2
	}
	if opts.IPBase <= 0 || opts.IPBase > 254 {
		opts.IPBase = 50
	}
	if opts.Margin <= 0 {
		opts.Margin = 500 * time.Millisecond
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{opts: opts, log: opts.Logger, env: opts.Env, byName: map[string]*Node{}, ledger: newLedger()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := c.startStream(ctx); err != nil {
		return nil, err
	}
	if c.ns, err = c.env.CreateNamespace(ctx, "demo"); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	ds, err := c.env.CreateDaemonSet(ctx, c.ns, "lastcall")
	if err != nil {
		return nil, fmt.Errorf("create daemonset: %w", err)
	}
	for i := range opts.Nodes {
		if _, err := c.startNode(ctx, i, ds.Name, ds.UID); err != nil {
			return nil, err
		}
	}
	c.wg.Go(func() { c.watchNodes() })
	c.wg.Go(func() { c.watchPods() })
	return c, nil
}

func (c *Cluster) startStream(ctx context.Context) error {
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(c.opts.Dir, "nats"), NoLog: true, NoSigs: true,
	})
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	c.nats = ns
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats server not ready within 10s")
	}
	if c.nc, err = nats.Connect(ns.ClientURL()); err != nil {
		return fmt.Errorf("nats connect: %w", err)
	}
	if c.js, err = jetstream.New(c.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	stream, err := c.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "JOBS", Subjects: []string{"jobs.>"}, Retention: jetstream.WorkQueuePolicy,
	})
	if err != nil {
		return fmt.Errorf("create stream: %w", err)
	}
	c.cons, err = stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "workers", AckPolicy: jetstream.AckExplicitPolicy, AckWait: c.opts.AckWait,
	})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	return nil
}

func (c *Cluster) startNode(ctx context.Context, i int, dsName string, dsUID types.UID) (*Node, error) {
	n := &Node{Name: fmt.Sprintf("%s-node-%d", c.ns, i+1)}
	n.ctx, n.die = context.WithCancel(c.ctx)
	c.nodes = append(c.nodes, n) // so that Close cleans up after a failed start
	c.byName[n.Name] = n
	if _, err := c.env.CreateNode(ctx, n.Name, map[string]string{"lastcall.dev/preemptible": "true"}); err != nil {
		return nil, fmt.Errorf("create node: %w", err)
	}
	kubeconfig := filepath.Join(c.opts.Dir, n.Name+".kubeconfig")
	var err error
	if n.User, err = c.env.WriteKubeconfig(kubeconfig); err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	owner := kubetest.WithOwner("DaemonSet", dsName, dsUID)
	pods := []*corev1.Pod{kubetest.NewPod(c.ns, "lastcall-"+n.Name, n.Name, owner)}
	for j := range c.opts.PodsPerNode {
		name := fmt.Sprintf("worker-%d-%d", i+1, j+1)
		pods = append(pods, kubetest.NewPod(c.ns, name, n.Name, kubetest.WithGrace(10)))
		n.pods = append(n.pods, &Pod{Name: name})
	}
	if _, err := c.env.CreatePods(ctx, pods...); err != nil {
		return nil, fmt.Errorf("create pods: %w", err)
	}
	first := netip.AddrFrom4([4]byte{127, byte(c.opts.IPBase), byte(i + 1), 1})
	_, n.stopKubelet = c.env.StartKubelet(c.ctx, n.Name, kubetest.KubeletOptions{FirstIP: first, FinishAtOnce: true})

	// The pods' IPs, once the kubelet has started them.
	for _, p := range n.pods {
		if p.IP, err = c.podIP(ctx, p.Name); err != nil {
			return nil, err
		}
	}

	if n.Trigger, err = freeAddr("127.0.0.1"); err != nil {
		return nil, err
	}
	if n.Metrics, err = freeAddr("127.0.0.1"); err != nil {
		return nil, err
	}
	if n.Hub, err = freeAddr("127.0.0.1"); err != nil {
		return nil, err
	}
	n.agent, err = startProc(0, c.opts.AgentBin,
		"--node-name="+n.Name, "--pod-name=lastcall-"+n.Name, "--pod-namespace="+c.ns,
		"--kubeconfig="+kubeconfig, "--cloud=sim", "--sim-listen="+n.Trigger,
		"--listen="+n.Metrics, "--sidecar-listen="+n.Hub, "--log-format=text", "--reserve=500ms")
	if err != nil {
		return nil, err
	}
	n.pgid = n.agent.cmd.Process.Pid
	if err := waitFor(ctx, 30*time.Second, func() bool {
		code, _ := get("http://" + n.Metrics + "/readyz")
		return code == http.StatusOK
	}); err != nil {
		return nil, fmt.Errorf("agent of %s not ready: %w\n%s", n.Name, err, n.agent.out.String())
	}
	n.Started = time.Now()

	for _, p := range n.pods {
		if p.API, err = freeAddr(p.IP); err != nil {
			return nil, err
		}
		p.sidecar, err = startProc(n.pgid, c.opts.SidecarBin, "--pod-name="+p.Name, "--pod-namespace="+c.ns, "--pod-ip="+p.IP,
			"--agent=http://"+n.Hub, "--listen="+p.API, "--dir="+filepath.Join(c.opts.Dir, p.Name),
			"--poll-wait=5s", "--log-format=text")
		if err != nil {
			return nil, err
		}
	}
	want := float64(len(n.pods))
	if err := waitFor(ctx, 30*time.Second, func() bool { return n.metric("lastcall_sidecars_connected") == want }); err != nil {
		return nil, fmt.Errorf("sidecars of %s not connected: %w", n.Name, err)
	}
	for _, p := range n.pods {
		sc, err := newSidecarClient(p.API)
		if err != nil {
			return nil, err
		}
		if p.nc, err = nats.Connect(c.nats.ClientURL(), nats.Name(p.Name), nats.NoReconnect()); err != nil {
			return nil, fmt.Errorf("nats connect %s: %w", p.Name, err)
		}
		js, err := jetstream.New(p.nc)
		if err != nil {
			return nil, fmt.Errorf("jetstream %s: %w", p.Name, err)
		}
		if p.cons, err = js.Consumer(ctx, "JOBS", "workers"); err != nil {
			return nil, fmt.Errorf("consumer %s: %w", p.Name, err)
		}
		c.wg.Go(func() { c.runPod(n, p, sc) })
	}
	c.log.InfoContext(ctx, "node ready", "node", n.Name, "pods", len(n.pods))
	return n, nil
}

func (c *Cluster) podIP(ctx context.Context, name string) (string, error) {
	var ip string
	err := waitFor(ctx, 30*time.Second, func() bool {
		p, err := c.env.Client.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		ip = p.Status.PodIP
		return ip != "" && p.Status.Phase == corev1.PodRunning
	})
	if err != nil {
		return "", fmt.Errorf("pod %s running: %w", name, err)
	}
	return ip, nil
}

// waitFor polls cond every 20ms until it holds, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric returns the agent's sample whose line starts with name (labels
// included, as exposed), or -1.
func (n *Node) metric(name string) float64 {
	_, body := get("http://" + n.Metrics + "/metrics")
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
				return v
			}
		}
	}
	return -1
}

// Nodes returns the nodes, in order.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Namespace is where the cluster's pods live.
func (c *Cluster) Namespace() string { return c.ns }

// Messages returns the ids of the messages published so far, in order.
func (c *Cluster) Messages() []string { return slices.Clone(c.ids) }

// Ledger says what the workers did.
func (c *Cluster) Ledger() *Ledger { return c.ledger }

// Publish puts count messages on the stream; cost gives each message's
// work time (by index). It returns when the server has stored them all.
func (c *Cluster) Publish(ctx context.Context, count int, cost func(i int) time.Duration) error {
	return c.PublishJobs(ctx, count, func(i int) Job { return Job{Cost: cost(i)} })
}

// PublishJobs puts count messages on the stream; job gives each message's
// work (by index). It returns when the server has stored them all.
func (c *Cluster) PublishJobs(ctx context.Context, count int, job func(i int) Job) error {
	for i := range count {
		id := strconv.Itoa(len(c.ids))
		j := job(i)
		m := nats.NewMsg("jobs.work")
		m.Data = []byte(id)
		m.Header.Set("Cost", j.Cost.String())
		if j.Tail > 0 {
			m.Header.Set("Tail", j.Tail.String())
		}
		if _, err := c.js.PublishMsg(ctx, m); err != nil {
			return fmt.Errorf("publish %s: %w", id, err)
		}
		c.ids = append(c.ids, id)
	}
	return nil
}

// WaitProcessed blocks until every published message is acknowledged, as
// far as the workers know (a confirmed acknowledgement, or one sent by a
// worker that died before the confirmation), and the server has none left
// to deliver or awaiting acknowledgement; or until ctx ends.
func (c *Cluster) WaitProcessed(ctx context.Context) error {
	if err := c.ledger.waitSettled(ctx, c.ids); err != nil {
		return fmt.Errorf("%d of %d messages acknowledged: %w", c.ledger.Committed(), len(c.ids), err)
	}
	var pending uint64
	var ackPending int
	err := waitFor(ctx, time.Hour, func() bool {
		var err error
		pending, ackPending, err = c.Pending(ctx)
		return err == nil && pending == 0 && ackPending == 0
	})
	if err != nil {
		return fmt.Errorf("consumer: %d pending, %d awaiting ack: %w", pending, ackPending, err)
	}
	return nil
}

// Summary says what became of the published messages.
func (c *Cluster) Summary() Summary {
	deadlines := map[string]time.Time{}
	for _, n := range c.nodes {
		_, deadlines[n.Name] = n.Notice()
	}
	return c.ledger.Summarize(c.ids, deadlines)
}

// Pending returns the messages the consumer has not had acknowledged.
func (c *Cluster) Pending(ctx context.Context) (pending uint64, ackPending int, err error) {
	info, err := c.cons.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("consumer info: %w", err)
	}
	return info.NumPending, info.NumAckPending, nil
}

// Busy says whether a worker of the node holds a message that costs at
// least min.
func (n *Node) Busy(min time.Duration) bool {
	for _, p := range n.pods {
		found := false
		p.busy.Range(func(_, v any) bool {
			found = v.(*held).cost >= min
			return !found
		})
		if found {
			return true
		}
	}
	return false
}

// Held returns the messages the node's workers hold now, as they change.
func (n *Node) Held() []Held {
	var hs []Held
	for _, p := range n.pods {
		p.busy.Range(func(_, v any) bool {
			h := v.(*held)
			hs = append(hs, Held{ID: h.id, Node: n.Name, Pod: p.Name, Phase: h.phase.Load().(Phase)})
			return true
		})
	}
	return hs
}

// alive runs f, a step of one of the node's workers, unless the node is
// dead, and says whether it ran. The step happens entirely before the
// node dies or not at all, as the writes of a killed process do.
func (n *Node) alive(f func()) bool {
	n.life.RLock()
	defer n.life.RUnlock()
	if n.dead {
		return false
	}
	f()
	return true
}

// Notice returns when the node got its notice and its deadline; zero if
// none.
func (n *Node) Notice() (notice, deadline time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.notice, n.deadline
}

// Preempt sends the node's agent a notice of kind ("preemption",
// "spot-interruption") from source ("gce", "aws") with the given time
// left, and arranges for the node to die at the deadline: its agent and
// sidecars are killed and its workers drop whatever they hold.
func (c *Cluster) Preempt(ctx context.Context, n *Node, source, kind string, left time.Duration) error {
	body := fmt.Sprintf(`{"kind":%q,"source":%q,"seconds":%g,"id":"%s-%s"}`, kind, source, left.Seconds(), source, n.Name)
	now := time.Now()
	n.mu.Lock()
	n.notice, n.deadline = now, now.Add(left)
	n.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.Trigger+"/notice", strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("notice request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("notice %s: %w", n.Name, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("notice %s: %s", n.Name, resp.Status)
	}
	c.emit(Event{Time: now, Node: n.Name, What: "notice", Detail: fmt.Sprintf("%s %s, %v left", source, kind, left)})
	c.wg.Go(func() {
		t := time.NewTimer(time.Until(n.deadline))
		defer t.Stop()
		select {
		case <-t.C:
			c.kill(n)
			c.emit(Event{Time: time.Now(), Node: n.Name, What: "died", Detail: "deadline"})
		case <-c.ctx.Done():
		}
	})
	return nil
}

// Kill ends the nodes at once, with no notice, like machines switched
// off: on each, the agent and the sidecars are killed together (SIGKILL to
// their process group), and the workers stop where they are, their
// connection to the server closed, so nothing more of theirs reaches it or
// the ledger. It returns what the workers held at that moment: the server
// redelivers those messages once their AckWait has passed, unless an
// acknowledgement already sent (PhaseAcking) reached it.
func (c *Cluster) Kill(nodes ...*Node) []Held {
	var all []Held
	for _, n := range nodes {
		all = append(all, c.kill(n)...)
	}
	now := time.Now()
	for _, n := range nodes {
		c.emit(Event{Time: now, Node: n.Name, What: "died", Detail: "killed without notice"})
	}
	return all
}

// kill ends the node, if alive, and returns what its workers held: each
// is dropped in the ledger.
func (c *Cluster) kill(n *Node) []Held {
	n.life.Lock()
	if n.dead {
		n.life.Unlock()
		return nil
	}
	n.dead = true
	if n.pgid != 0 {
		_ = syscall.Kill(-n.pgid, syscall.SIGKILL)
	}
	n.die()
	var hs []Held
	for _, p := range n.pods {
		if p.nc != nil {
			p.nc.Close()
		}
		p.busy.Range(func(_, v any) bool {
			h := v.(*held)
			phase := h.phase.Load().(Phase)
			hs = append(hs, Held{ID: h.id, Node: n.Name, Pod: p.Name, Phase: phase})
			c.ledger.drop(h.id, phase == PhaseAcking)
			return true
		})
	}
	n.life.Unlock()
	n.agent.kill()
	for _, p := range n.pods {
		p.sidecar.kill()
	}
	return hs
}

// AgentLog returns the output of the node's agent so far.
func (n *Node) AgentLog() string { return n.agent.out.String() }

func (c *Cluster) emit(e Event) {
	if c.opts.OnEvent != nil {
		c.opts.OnEvent(e)
	}
}

// Close kills every process, stops the workers, kubelets and the stream.
// The control plane is the caller's.
func (c *Cluster) Close() {
	c.cancel()
	for _, n := range c.nodes {
		c.kill(n)
	}
	c.wg.Wait()
	for _, n := range c.nodes {
		if n.stopKubelet != nil {
			n.stopKubelet()
		}
	}
	if c.nc != nil {
		c.nc.Close()
	}
	if c.nats != nil {
		c.nats.Shutdown()
		c.nats.WaitForShutdown()
	}
}

// WorkersLeft returns how many of the node's worker pods still exist.
func (c *Cluster) WorkersLeft(ctx context.Context, n *Node) (int, error) {
	list, err := c.env.Client.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("list pods: %w", err)
	}
	left := 0
	for _, p := range list.Items {
		if p.Spec.NodeName == n.Name && strings.HasPrefix(p.Name, "worker-") {
			left++
		}
	}
	return left, nil
}

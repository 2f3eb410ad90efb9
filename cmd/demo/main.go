// Command demo runs a whole preemption on this machine, with no cloud and
// no cluster: a real control plane, a NATS JetStream work queue, three
// simulated nodes each with the real node-agent, and worker pods made of
// the real sidecar and workers pulling from the stream. It preempts one
// node GCE-style (30 s) and another AWS-style (2 min), prints what happened
// when, in milliseconds since each notice, and what became of every
// message. It exits 1 if a message was lost.
//
//	make demo
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/lastcall-dev/lastcall/internal/demo"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout)
	stop()
	os.Exit(code)
}

type options struct {
	nodes, messages int
	gce, aws        time.Duration
	long            time.Duration
}

func run(ctx context.Context, args []string, w io.Writer) int {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.IntVar(&o.nodes, "nodes", 3, "simulated nodes (at least 3)")
	fs.IntVar(&o.messages, "messages", 300, "short messages on the stream (50-250 ms of work each)")
	fs.DurationVar(&o.gce, "gce", 30*time.Second, "time left on the GCE-style preemption")
	fs.DurationVar(&o.aws, "aws", 2*time.Minute, "time left on the AWS-style spot interruption")
	fs.DurationVar(&o.long, "long", 40*time.Second, "work in each of the three long messages")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.nodes < 3 {
		fmt.Fprintln(w, "demo: --nodes must be at least 3")
		return 2
	}
	p := &printer{w: w, start: time.Now()}
	lost, err := demoRun(ctx, o, p)
	if err != nil {
		p.say("demo failed: %v", err)
		return 1
	}
	if lost > 0 {
		return 1
	}
	return 0
}

// printer writes progress lines with the time since the demo started.
type printer struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (p *printer) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%5.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

func (p *printer) raw(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

// timeline collects events and prints each as it arrives, relative to
// its node's notice.
type timeline struct {
	p      *printer
	mu     sync.Mutex
	events []demo.Event
	notice map[string]time.Time
	short  map[string]string // node → short label
}

func (t *timeline) add(e demo.Event) {
	t.mu.Lock()
	if e.What == "notice" {
		t.notice[e.Node] = e.Time
	}
	n, ok := t.notice[e.Node]
	t.events = append(t.events, e)
	label := t.short[e.Node]
	t.mu.Unlock()
	if !ok {
		return // not a preempted node: nothing to show
	}
	t.p.say("%-7s +%6d ms  %-10s %-15s %s", label, e.Time.Sub(n).Milliseconds(), e.Pod, e.What, e.Detail)
}

func (t *timeline) print() {
	t.mu.Lock()
	defer t.mu.Unlock()
	nodes := make([]string, 0, len(t.notice))
	for n := range t.notice {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	for _, node := range nodes {
		t.p.raw("\n%s (%s), ms since its notice:\n", t.short[node], node)
		evs := slices.Clone(t.events)
		slices.SortStableFunc(evs, func(a, b demo.Event) int { return a.Time.Compare(b.Time) })
		for _, e := range evs {
			if e.Node != node {
				continue
			}
			t.p.raw("  %+7d ms  %-10s %-15s %s\n", e.Time.Sub(t.notice[node]).Milliseconds(), e.Pod, e.What, e.Detail)
		}
	}
}

func demoRun(ctx context.Context, o options, p *printer) (lost int, err error) {
	assets, err := kubetest.AssetsDir()
	if err != nil {
		return 0, fmt.Errorf("find control-plane binaries: %w", err)
	}
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		return 0, fmt.Errorf("no control-plane binaries in %s: run `make testbin` first (builds etcd, kube-apiserver and kube-controller-manager once, about 9 min on 2 cores), or `make demo`, which does", assets)
	}
	dir, err := os.MkdirTemp("", "lastcall-demo-")
	if err != nil {
		return 0, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	p.say("building node-agent and sidecar")
	agentBin, sidecarBin, err := demo.Build(ctx, dir)
	if err != nil {
		return 0, err
	}
	p.say("starting etcd, kube-apiserver and kube-controller-manager (%s)", assets)
	env, err := kubetest.Start(ctx)
	if err != nil {
		return 0, fmt.Errorf("start control plane: %w", err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			p.say("stop control plane: %v", err)
		}
	}()

	tl := &timeline{p: p, notice: map[string]time.Time{}, short: map[string]string{}}
	p.say("starting NATS JetStream and %d nodes, each with its node-agent, 2 worker pods (sidecar + 2 workers) and a fake kubelet", o.nodes)
	c, err := demo.Start(ctx, demo.Options{
		Env: env, AgentBin: agentBin, SidecarBin: sidecarBin, Dir: dir, Nodes: o.nodes,
		OnEvent: tl.add, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	nodes := c.Nodes()
	for i, n := range nodes {
		tl.mu.Lock()
		tl.short[n.Name] = fmt.Sprintf("node-%d", i+1)
		tl.mu.Unlock()
		p.say("node-%d up: agent metrics http://%s/metrics, trigger http://%s/notice", i+1, n.Metrics, n.Trigger)
	}

	const longCount = 3
	total := o.messages + longCount
	p.say("publishing %d messages: %d long ones (%v of work each) and %d short ones (50-250 ms)", total, longCount, o.long, o.messages)
	if err := c.Publish(ctx, total, func(i int) time.Duration {
		// Workers pull in the order they asked: the first messages go four
		// by four to the nodes in turn; one long message each.
		if i%4 == 0 && i/4 < longCount {
			return o.long
		}
		return time.Duration(50+(i*37)%201) * time.Millisecond
	}); err != nil {
		return 0, err
	}

	// Let the work get going, then preempt a node holding a long message
	// GCE-style (it cannot finish it in 30 s: handed back) and another
	// AWS-style (2 min: finished).
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	gce, aws := pickVictims(nodes, o.long/2)
	p.say("processed %d of %d so far", c.Ledger().Committed(), total)
	p.raw("\n")
	if err := c.Preempt(ctx, gce, "gce", "preemption", o.gce); err != nil {
		return 0, err
	}
	if err := c.Preempt(ctx, aws, "aws", "spot-interruption", o.aws); err != nil {
		return 0, err
	}

	// Progress until every message is acknowledged.
	wctx, cancel := context.WithTimeout(ctx, o.long*2+time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.WaitProcessed(wctx) }()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-tick.C:
			p.say("processed %d of %d", c.Ledger().Committed(), total)
		}
	}
	if err != nil {
		p.say("not all messages processed: %v", err)
	}
	// The preempted nodes' pods are gone once their workers are done.
	_ = waitGone(wctx, c, []*demo.Node{gce, aws})

	tl.print()
	s := c.Summary()
	p.raw("\nsummary:\n")
	p.raw("  messages:     %d\n", s.Messages)
	p.raw("  processed:    %d (acknowledged exactly once: %d)\n", s.Processed, s.Processed-len(s.Duplicates))
	p.raw("  handed back:  %d (by draining workers, before their deadline)\n", s.HandedBack)
	p.raw("  redelivered:  %d (deliveries after the first)\n", s.Redelivered)
	p.raw("  late acks:    %d (after their node's deadline)\n", len(s.Late))
	p.raw("  duplicates:   %d\n", len(s.Duplicates))
	p.raw("  lost:         %d\n", len(s.Lost))
	for i, n := range nodes {
		evs, err := env.AuditEvents(n.User, n.Started)
		if err == nil {
			p.raw("  node-%d agent: %d apiserver requests since it was ready\n", i+1, len(evs))
		}
	}
	lost = len(s.Lost) + len(s.Duplicates) + len(s.Late)
	if err != nil && lost == 0 {
		return 0, err
	}
	return lost, nil
}

// pickVictims chooses the GCE victim among nodes holding a long message if
// any, and the AWS victim among the others, preferring one that holds a
// long message too.
func pickVictims(nodes []*demo.Node, long time.Duration) (gce, aws *demo.Node) {
	rest := slices.Clone(nodes)
	pick := func() *demo.Node {
		i := slices.IndexFunc(rest, func(n *demo.Node) bool { return n.Busy(long) })
		if i < 0 {
			i = 0
		}
		n := rest[i]
		rest = slices.Delete(rest, i, i+1)
		return n
	}
	gce = pick()
	aws = pick()
	return gce, aws
}

func waitGone(ctx context.Context, c *demo.Cluster, nodes []*demo.Node) error {
	for {
		left := 0
		for _, n := range nodes {
			k, err := c.WorkersLeft(ctx, n)
			if err != nil {
				return err
			}
			left += k
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d preempted pods still there: %w", left, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

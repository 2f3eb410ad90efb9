package chaos_test

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/internal/demo"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

var (
	nodesFlag    = flag.Int("chaos.nodes", 4, "simulated nodes")
	scaleFlag    = flag.Float64("chaos.scale", 0.1, "notice windows as a fraction of the real ones (GCE 30 s, AWS 2 min)")
	messagesFlag = flag.Int("chaos.messages", 400, "short messages on the stream")
	fractionFlag = flag.Float64("chaos.preempt", 0.3, "fraction of the nodes preempted at once (rounded up)")
	killFlag     = flag.Int("chaos.kill", 1, "nodes killed at once without notice (TestAbruptKill)")
	ackWaitFlag  = flag.Duration("chaos.ackwait", 5*time.Second, "the consumer's AckWait: how long the server waits for an acknowledgement before it redelivers")
)

var (
	env                  *kubetest.Env
	agentBin, sidecarBin string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // the test needs the control plane: skipped
	}
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "lastcall-chaos-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if agentBin, sidecarBin, err = demo.Build(context.Background(), dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return kubetest.Main(m, &env)
	}())
}

// TestPreemptManyAtOnce preempts 30 % of the nodes at once, alternately
// GCE-style and AWS-style with scaled-down windows, while their workers
// consume the stream; the other nodes' workers finish it. Every message is
// acknowledged exactly once, none after its node's deadline, none is lost,
// the preempted nodes are empty before their deadline, and the agents make
// a bounded number of apiserver requests.
func TestPreemptManyAtOnce(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	n := *nodesFlag
	victims := int(math.Ceil(*fractionFlag * float64(n)))
	if n < 2 || victims < 1 || victims >= n {
		t.Fatalf("-chaos.nodes=%d with -chaos.preempt=%v leaves no node preempted or none to finish", n, *fractionFlag)
	}
	gceLeft := time.Duration(*scaleFlag * float64(30*time.Second))
	awsLeft := time.Duration(*scaleFlag * float64(2*time.Minute))
	const podsPerNode = 2

	var evMu sync.Mutex
	var events []demo.Event
	c, err := demo.Start(ctx, demo.Options{
		Env: e, AgentBin: agentBin, SidecarBin: sidecarBin, Dir: t.TempDir(),
		Nodes: n, PodsPerNode: podsPerNode, WorkersPerPod: 2, IPBase: 60, Margin: 300 * time.Millisecond, AckWait: *ackWaitFlag,
		OnEvent: func(ev demo.Event) { evMu.Lock(); events = append(events, ev); evMu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("%d nodes up in %v", n, time.Since(began).Round(time.Millisecond))

	// Short messages, and one long one per node (workers pull in the order
	// they asked, the first messages go four by four to the nodes in turn)
	// that cannot be finished inside the GCE window but can inside the AWS
	// one: a GCE-preempted node hands it back, an AWS-preempted one
	// finishes it.
	long := gceLeft + time.Second
	total := *messagesFlag + n
	if err := c.Publish(ctx, total, func(i int) time.Duration {
		if i%4 == 0 && i/4 < n {
			return long
		}
		return time.Duration(10+(i*13)%51) * time.Millisecond
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Ledger().WaitCommitted(ctx, *messagesFlag/4); err != nil {
		t.Fatal(err)
	}

	nodes := c.Nodes()
	preempted := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, victims)
	for i := range victims {
		node := nodes[i]
		source, kind, left := "gce", "preemption", gceLeft
		if i%2 == 1 {
			source, kind, left = "aws", "spot-interruption", awsLeft
		}
		wg.Go(func() { errs <- c.Preempt(ctx, node, source, kind, left) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("preempted %d of %d nodes at once (GCE %v, AWS %v) after %d of %d messages", victims, n, gceLeft, awsLeft, c.Ledger().Committed(), total)

	if err := c.WaitProcessed(ctx); err != nil {
		t.Fatal(err)
	}
	for _, node := range nodes[:victims] {
		_, deadline := node.Notice()
		for {
			left, err := c.WorkersLeft(ctx, node)
			if err != nil {
				t.Fatal(err)
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d worker pods left at its deadline", node.Name, left)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	s := c.Summary()
	if len(s.Lost) > 0 {
		t.Errorf("lost %d messages: %v", len(s.Lost), s.Lost)
	}
	if len(s.Duplicates) > 0 {
		t.Errorf("%d messages acknowledged more than once: %v", len(s.Duplicates), s.Duplicates)
	}
	if len(s.Late) > 0 {
		t.Errorf("%d acknowledgements after their node's deadline: %v", len(s.Late), s.Late)
	}
	if len(s.HalfDone) > 0 {
		t.Errorf("%d messages left half-done: %v", len(s.HalfDone), s.HalfDone)
	}
	if pending, ackPending, err := c.Pending(ctx); err != nil {
		t.Fatal(err)
	} else if pending != 0 || ackPending != 0 {
		t.Errorf("consumer: %d pending, %d awaiting ack; want none", pending, ackPending)
	}

	// The apiserver is not flooded: since it was ready, a preempted node's
	// agent reads and patches its node, records an Event, and evicts its
	// pods; since the preemption, the others only hold their pod watch.
	// Not counted: each agent's one-time access check (access reviews and
	// dry runs), which starts up to 10 s after the agent and so may fall
	// after the preemption.
	for i, node := range nodes {
		since, limit := preempted, 10
		if i < victims {
			since, limit = node.Started, 20+3*podsPerNode
		}
		all, err := e.AuditEvents(node.User, since)
		if err != nil {
			t.Fatal(err)
		}
		var evs []kubetest.AuditEvent
		for _, ev := range all {
			if !strings.Contains(ev.RequestURI, "/selfsubjectaccessreviews") && !strings.Contains(ev.RequestURI, "dryRun=All") {
				evs = append(evs, ev)
			}
		}
		if len(evs) > limit {
			verbs := map[string]int{}
			for _, ev := range evs {
				verbs[ev.Verb+" "+ev.RequestURI]++
			}
			t.Errorf("%s (preempted: %v): %d apiserver requests, want at most %d: %v", node.Name, i < victims, len(evs), limit, verbs)
		}
		t.Logf("%s: %d apiserver requests", node.Name, len(evs))
	}
	t.Logf("%d messages: handed back %d, redelivered %d, dropped by dying nodes %d; %v in all",
		s.Messages, s.HandedBack, s.Redelivered, s.Dropped, time.Since(began).Round(time.Millisecond))
	if t.Failed() {
		evMu.Lock()
		for _, ev := range events {
			t.Logf("%s %s %s %s %s", ev.Time.Format("15:04:05.000"), ev.Node, ev.Pod, ev.What, ev.Detail)
		}
		evMu.Unlock()
		for _, node := range nodes[:victims] {
			t.Logf("%s agent log:\n%s", node.Name, node.AgentLog())
		}
	}
}

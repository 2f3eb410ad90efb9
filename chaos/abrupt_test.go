package chaos_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/internal/demo"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// TestAbruptKill kills nodes with no notice at all (-chaos.kill of them):
// each one's agent, sidecars and workers die at once, while the workers
// hold long messages, some still being worked on and some whose result is
// already saved but not yet acknowledged. The server redelivers each held
// message once its AckWait (-chaos.ackwait) has passed, and a worker on a
// surviving node does it and acknowledges it. Every message ends with one
// result kept and one confirmed acknowledgement; the only repeated results
// are those of messages a dead worker had saved, which the idempotent
// results store ignores; nothing of the dead nodes reaches the ledger
// after the kill.
func TestAbruptKill(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute+2*(*ackWaitFlag))
	defer cancel()
	began := time.Now()
	n, victims := *nodesFlag, *killFlag
	if victims < 1 || victims >= n {
		t.Fatalf("-chaos.nodes=%d with -chaos.kill=%d leaves no node killed or none to finish", n, victims)
	}
	const podsPerNode, workersPerPod = 2, 2
	workers := n * podsPerNode * workersPerPod

	var evMu sync.Mutex
	var events []demo.Event
	c, err := demo.Start(ctx, demo.Options{
		Env: e, AgentBin: agentBin, SidecarBin: sidecarBin, Dir: t.TempDir(),
		Nodes: n, PodsPerNode: podsPerNode, WorkersPerPod: workersPerPod, IPBase: 80, AckWait: *ackWaitFlag,
		OnEvent: func(ev demo.Event) { evMu.Lock(); events = append(events, ev); evMu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("%d nodes up in %v, %d workers, AckWait %v", n, time.Since(began).Round(time.Millisecond), workers, *ackWaitFlag)
	nodes := c.Nodes()
	dead, survivors := nodes[:victims], nodes[victims:]

	// One long message per worker: `long` of work, its result saved, then
	// `long` more before the acknowledgement. Published one by one, gap
	// apart, so that the workers start them at different times, all within
	// `long`: once the first result is saved, the other workers are still
	// working on theirs, and nobody acknowledges anything for a while.
	const long = 3 * time.Second
	gap := long / time.Duration(2*workers)
	for range workers {
		if err := c.PublishJobs(ctx, 1, func(int) demo.Job { return demo.Job{Cost: long, Tail: long} }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(gap)
	}
	// Short work for afterwards.
	shorts := *messagesFlag / 2
	if err := c.Publish(ctx, shorts, func(i int) time.Duration { return time.Duration(10+(i*13)%51) * time.Millisecond }); err != nil {
		t.Fatal(err)
	}

	// Kill once every doomed node holds a message, and between them at
	// least as many messages whose result is saved as messages still being
	// worked on, and at least one of those.
	var seen []demo.Held
	ready := func() bool {
		seen = seen[:0]
		for _, node := range dead {
			hs := node.Held()
			if len(hs) == 0 {
				return false
			}
			seen = append(seen, hs...)
		}
		working := countPhase(seen, demo.PhaseWorking)
		return working > 0 && countPhase(seen, demo.PhaseCommitted) >= working
	}
	for !ready() {
		select {
		case <-ctx.Done():
			t.Fatalf("the nodes to kill never held both a saved and an unsaved message: %v", seen)
		case <-time.After(5 * time.Millisecond):
		}
	}
	held := c.Kill(dead...)
	killed := time.Now()
	byPhase := map[demo.Phase]int{}
	for _, h := range held {
		byPhase[h.Phase]++
	}
	t.Logf("killed %d of %d nodes without notice; their workers held %d messages: %d being worked on, %d with the result saved, %d with the acknowledgement on its way",
		victims, n, len(held), byPhase[demo.PhaseWorking], byPhase[demo.PhaseCommitted], byPhase[demo.PhaseAcking])
	if byPhase[demo.PhaseWorking] == 0 || byPhase[demo.PhaseCommitted] == 0 {
		t.Fatalf("at the kill, want messages both being worked on and with their result saved: %v", held)
	}
	for _, node := range dead {
		if resp, err := http.Get("http://" + node.Metrics + "/readyz"); err == nil {
			resp.Body.Close()
			t.Errorf("%s: its agent still answers after the kill: %s", node.Name, resp.Status)
		}
	}

	if err := c.WaitProcessed(ctx); err != nil {
		t.Fatal(err)
	}
	s := c.Summary()

	isDead := func(node string) bool {
		return slices.ContainsFunc(dead, func(d *demo.Node) bool { return d.Name == node })
	}
	heldIDs := map[string]demo.Phase{}
	redelivered, ackedElsewhere, ackLanded := 0, 0, 0
	for _, h := range held {
		heldIDs[h.ID] = h.Phase
		tr := c.Ledger().Trace(h.ID)
		i := slices.IndexFunc(tr.Deliveries, func(d demo.Delivery) bool { return d.N > 1 && !isDead(d.Node) })
		if i < 0 {
			if h.Phase == demo.PhaseAcking && len(tr.Commits) == 0 {
				ackLanded++ // the dead worker's acknowledgement reached the server
				continue
			}
			t.Errorf("message %s (%s on %s at the kill) not redelivered to a surviving node: %+v", h.ID, h.Phase, h.Node, tr)
			continue
		}
		redelivered++
		if again := tr.Deliveries[i]; !again.At.After(killed) {
			t.Errorf("message %s redelivered to %s at %v, before the kill at %v", h.ID, again.Pod, again.At, killed)
		}
		if len(tr.Commits) != 1 || isDead(tr.Commits[0].Node) || !tr.Commits[0].At.After(tr.Deliveries[i].At) {
			t.Errorf("message %s: want one acknowledgement, by a surviving node after the redelivery; got %+v", h.ID, tr)
		} else {
			ackedElsewhere++
		}
		// The result: saved by the dead worker and repeated (ignored) by
		// the survivor, or saved by the survivor only.
		wantResults := 1
		if h.Phase != demo.PhaseWorking {
			wantResults = 2
		}
		if len(tr.Results) != wantResults || isDead(tr.Results[0].Node) != (wantResults == 2) || isDead(tr.Results[len(tr.Results)-1].Node) {
			t.Errorf("message %s (%s at the kill): want %d result writes, the last by a surviving node; got %+v", h.ID, h.Phase, wantResults, tr.Results)
		}
	}
	// A repeated result is only ever a message a dead worker had saved.
	for _, id := range s.Repeats {
		if p, ok := heldIDs[id]; !ok || p == demo.PhaseWorking {
			t.Errorf("message %s: result written more than once, not after a death with its result saved: %+v", id, c.Ledger().Trace(id))
		}
	}
	// Nothing of the dead nodes after the kill.
	for _, id := range c.Messages() {
		tr := c.Ledger().Trace(id)
		for _, d := range tr.Deliveries {
			if isDead(d.Node) && d.At.After(killed) {
				t.Errorf("message %s delivered to dead %s after the kill", id, d.Pod)
			}
		}
		for _, r := range tr.Results {
			if isDead(r.Node) && r.At.After(killed) {
				t.Errorf("message %s result saved by dead %s after the kill", id, r.Pod)
			}
		}
		for _, cm := range tr.Commits {
			if isDead(cm.Node) && cm.At.After(killed) {
				t.Errorf("message %s acknowledged by dead %s after the kill", id, cm.Pod)
			}
		}
	}
	if len(s.Lost) > 0 {
		t.Errorf("lost %d messages: %v", len(s.Lost), s.Lost)
	}
	if len(s.Duplicates) > 0 {
		t.Errorf("%d messages acknowledged more than once: %v", len(s.Duplicates), s.Duplicates)
	}
	if len(s.HalfDone) > 0 {
		t.Errorf("%d messages left half-done: %v", len(s.HalfDone), s.HalfDone)
	}
	if s.Processed != s.Messages {
		t.Errorf("%d of %d messages acknowledged", s.Processed, s.Messages)
	}
	for _, node := range survivors {
		if node.Held() != nil {
			t.Errorf("%s still holds %v", node.Name, node.Held())
		}
	}

	t.Logf("held by the dead workers at the kill: %d", len(held))
	t.Logf("  redelivered to a surviving node:    %d", redelivered)
	t.Logf("  acknowledged there, exactly once:   %d", ackedElsewhere)
	t.Logf("  acknowledged by the dead worker:    %d (acknowledgement on its way at the kill, not redelivered)", ackLanded)
	t.Logf("  results repeated, kept once:        %d", len(s.Repeats))
	t.Logf("all %d messages: acknowledged %d, lost %d, duplicates %d, redeliveries %d, unconfirmed acks %d; %v in all",
		s.Messages, s.Processed, len(s.Lost), len(s.Duplicates), s.Redelivered, len(s.Unconfirmed), time.Since(began).Round(time.Millisecond))
	if t.Failed() {
		evMu.Lock()
		for _, ev := range events {
			t.Logf("%s %s %s %s %s", ev.Time.Format("15:04:05.000"), ev.Node, ev.Pod, ev.What, ev.Detail)
		}
		evMu.Unlock()
	}
}

func countPhase(hs []demo.Held, p demo.Phase) int {
	n := 0
	for _, h := range hs {
		if h.Phase == p {
			n++
		}
	}
	return n
}

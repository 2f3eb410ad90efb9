package sidecar_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/sidecartest/jstest"
)

// ledger records what workers did with each message, in order.
type ledger struct {
	mu      sync.Mutex
	seq     int
	started map[string]int // id → starts
	deliv   map[string]int // id → highest delivery count seen
	commits map[string][]string
	handed  map[string]int // id → times handed back
	doneAt  map[string]int // worker group → seq when it said done
	lastSeq map[string]int // worker group → seq of its last commit
	changed chan struct{}
	// longStarted is closed when a long message first starts.
	longStarted chan struct{}
	longOnce    sync.Once
}

func newLedger() *ledger {
	return &ledger{
		started: map[string]int{}, deliv: map[string]int{}, commits: map[string][]string{}, handed: map[string]int{},
		doneAt: map[string]int{}, lastSeq: map[string]int{},
		changed: make(chan struct{}), longStarted: make(chan struct{}),
	}
}

func (l *ledger) note() {
	l.seq++
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *ledger) start(id string, long bool, delivered int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started[id]++
	l.deliv[id] = max(l.deliv[id], delivered)
	l.note()
	if long {
		l.longOnce.Do(func() { close(l.longStarted) })
	}
}

func (l *ledger) commit(id, group string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.commits[id] = append(l.commits[id], group)
	l.note()
	l.lastSeq[group] = l.seq
}

func (l *ledger) handBack(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.handed[id]++
	l.note()
}

func (l *ledger) groupDone(group string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.note()
	l.doneAt[group] = l.seq
}

// waitFor waits until ok holds for the ledger (called with l.mu held).
func (l *ledger) waitFor(ctx context.Context, ok func() bool) error {
	for {
		l.mu.Lock()
		if ok() {
			l.mu.Unlock()
			return nil
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// jsWorker pulls one message at a time while drain is not done, and works
// on it in steps, telling the server it is still at work; once draining, it
// finishes a message only if the rest of the work fits before the deadline,
// and hands it back (Nak) otherwise, as it does one that arrives after the
// drain started.
func jsWorker(ctx, drain context.Context, cons jetstream.Consumer, led *ledger, group string) {
	for drain.Err() == nil {
		// A short pull, not cancelled by the drain: a pull cancelled while
		// the server answers it strands the message until its ack wait.
		msg, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
		if err != nil {
			continue
		}
		id := string(msg.Data())
		cost, _ := time.ParseDuration(msg.Headers().Get("Cost"))
		delivered := 0
		if md, err := msg.Metadata(); err == nil {
			delivered = int(md.NumDelivered)
		}
		led.start(id, cost > time.Second, delivered)
		if drain.Err() != nil { // it came after the drain started
			led.handBack(id)
			_ = msg.Nak()
			continue
		}
		handled := false
		for left := cost; left > 0 && !handled; left -= 10 * time.Millisecond {
			if st, ok := sidecar.DrainingState(drain); ok && time.Until(st.Deadline) < left {
				led.handBack(id)
				_ = msg.Nak()
				handled = true
				break
			}
			time.Sleep(min(left, 10*time.Millisecond))
			if (cost-left)%(250*time.Millisecond) == 0 {
				_ = msg.InProgress() // long work: keep the message from being redelivered
			}
		}
		if handled {
			continue
		}
		led.commit(id, group)
		if err := msg.DoubleAck(ctx); err != nil && ctx.Err() == nil {
			panic(fmt.Sprintf("ack %s: %v", id, err)) // the test's server does not lose acks
		}
	}
}

// jetStreamJobs starts an embedded JetStream server with a work queue of
// total messages, every 25th of which cannot finish inside a drain window,
// and returns its durable pull consumer.
func jetStreamJobs(ctx context.Context, t *testing.T, total int) jetstream.Consumer {
	t.Helper()
	srv := jstest.Start(ctx, t, jetstream.ConsumerConfig{AckWait: time.Second})
	js := srv.JS
	for i := range total {
		m := nats.NewMsg("jobs.resize")
		m.Data = []byte(strconv.Itoa(i))
		cost := 20 * time.Millisecond
		if i%25 == 3 {
			cost = 1500 * time.Millisecond // cannot finish inside the drain window
		}
		m.Header.Set("Cost", cost.String())
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	return srv.Consumer
}

// jsPod is one pod on node A: a real sidecar and two workers, which say
// done once they have stopped. SIGTERM, as the kubelet sends it, cancels
// the workers' context.
type jsPod struct {
	p       *podProcs
	sigterm context.CancelFunc
	stopped chan struct{} // closed when the workers have returned
}

func startJSPods(ctx context.Context, t *testing.T, hs *hubServer, ips *podIPs, cons jetstream.Consumer, led *ledger, extraArgs ...string) []*jsPod {
	t.Helper()
	var pods []*jsPod
	for i := range 2 {
		ref := sidecar.PodRef{Namespace: "work", Name: fmt.Sprintf("js-%d", i)}
		ip := fmt.Sprintf("127.0.6.%d", i+1)
		ips.set(ref, ip)
		p := startPod(ctx, t, podSpec{ref: ref, ip: ip, hub: hs.url(), noWorker: true, extraArgs: extraArgs})
		if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
			t.Fatal(err)
		}
		c := p.client(t)
		wctx, sigterm := context.WithCancel(ctx)
		jp := &jsPod{p: p, sigterm: sigterm, stopped: make(chan struct{})}
		group := ref.String()
		go func() {
			defer close(jp.stopped)
			drain := c.Draining(wctx)
			var pod sync.WaitGroup
			for range 2 {
				pod.Go(func() { jsWorker(ctx, drain, cons, led, group) })
			}
			pod.Wait()
			if drain.Err() != nil && wctx.Err() == nil {
				led.groupDone(group)
				if err := c.Done(ctx); err != nil {
					panic(err)
				}
			}
		}()
		t.Cleanup(func() { sigterm(); <-jp.stopped })
		pods = append(pods, jp)
	}
	return pods
}

// jsTotal is the number of messages in the JetStream tests' work queue.
const jsTotal = 100

// jsNode is node A of the JetStream tests: the work queue, a Hub, and two
// pods whose workers keep a ledger.
type jsNode struct {
	cons jetstream.Consumer
	hs   *hubServer
	dl   *doneLog
	led  *ledger
	pods []*jsPod
}

// startJSNode starts node A; its sidecars get extraArgs.
func startJSNode(ctx context.Context, t *testing.T, extraArgs ...string) *jsNode {
	t.Helper()
	a := &jsNode{cons: jetStreamJobs(ctx, t, jsTotal), dl: newDoneLog(), led: newLedger()}
	ips := newPodIPs()
	a.hs = startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: a.dl.onDone})
	a.pods = startJSPods(ctx, t, a.hs, ips, a.cons, a.led, extraArgs...)
	return a
}

// waitDone waits until the hub heard both pods are done.
func (a *jsNode) waitDone(ctx context.Context, t *testing.T) {
	t.Helper()
	for range 2 {
		select {
		case <-a.dl.ch:
		case <-ctx.Done():
			t.Fatal("the hub never heard node A's pods were done")
		}
	}
}

// waitMidWork waits until messages are committed and a long one is under
// way.
func waitMidWork(ctx context.Context, t *testing.T, led *ledger) {
	t.Helper()
	select {
	case <-led.longStarted:
	case <-ctx.Done():
		t.Fatal("no long message started")
	}
	if err := led.waitFor(ctx, func() bool { return len(led.commits) >= 20 }); err != nil {
		t.Fatal(err)
	}
}

// takeOver runs four workers on node B until every message is committed,
// then checks the ledger and the consumer and reports the counts: every
// message committed exactly once, none lost, none left half-done, none
// redelivered because its ack wait ran out, and node A's pods committed
// nothing after saying done.
func takeOver(ctx context.Context, t *testing.T, name string, cons jetstream.Consumer, led *ledger, total int) {
	t.Helper()
	bctx, bcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { jsWorker(ctx, bctx, cons, led, "node-b") })
	}
	err := led.waitFor(ctx, func() bool { return len(led.commits) == total })
	bcancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("committed %d of %d messages: %v", len(led.commits), total, err)
	}

	led.mu.Lock()
	defer led.mu.Unlock()
	handedBack, redelivered, expired, once := 0, 0, 0, 0
	for i := range total {
		id := strconv.Itoa(i)
		if c := led.commits[id]; len(c) != 1 {
			t.Errorf("message %s committed %d times (%v), want once", id, len(c), c)
		} else {
			once++
		}
		if s, c, h := led.started[id], len(led.commits[id]), led.handed[id]; s != c+h {
			t.Errorf("message %s started %d times, committed %d, handed back %d: left half-done", id, s, c, h)
		}
		handedBack += led.handed[id]
		redelivered += max(led.deliv[id]-1, 0)
		// A delivery the worker did not hand back ran out its ack wait.
		expired += max(led.deliv[id]-1-led.handed[id], 0)
	}
	if handedBack == 0 {
		t.Error("no message was handed back; the drain did not interrupt a long one")
	}
	if expired != 0 {
		t.Errorf("%d redeliveries after an ack wait ran out", expired)
	}
	for _, g := range []string{"work/js-0", "work/js-1"} {
		if led.lastSeq[g] > led.doneAt[g] {
			t.Errorf("%s committed a message after saying done", g)
		}
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		t.Errorf("consumer: %d pending, %d awaiting ack; want none", info.NumPending, info.NumAckPending)
	}
	t.Logf("JetStream (%s): %d messages, acked exactly once %d, handed back %d, redelivered %d, lost %d, waited out an ack wait %d",
		name, total, once, handedBack, redelivered, total-len(led.commits), expired)
}

// TestJetStreamDrain consumes a JetStream work queue with workers in two
// pods whose sidecars follow a Hub; a notice arrives while a long message is
// being worked on. The workers stop pulling, finish what fits, hand back the
// rest, and say done; workers on another node then take over. Every message
// is committed exactly once: none lost, none left half-done.
func TestJetStreamDrain(t *testing.T) {
	needBinaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	a := startJSNode(ctx, t)
	waitMidWork(ctx, t, a.led)
	if told, err := a.hs.hub.Draining(ctx, testNotice(time.Now().Add(300*time.Millisecond))); err != nil || told != 2 {
		t.Fatalf("Draining: told %d, %v", told, err)
	}
	a.waitDone(ctx, t)
	takeOver(ctx, t, "node notice", a.cons, a.led, jsTotal)
}

// TestJetStreamScaleDown deletes the two pods with no notice, as a
// scale-down does: the kubelet runs each worker's preStop hook (the sidecar
// binary's prestop), which drains the pod with reason pod-terminating and
// returns once its workers have finished or handed back what they held and
// said done; only then does the worker get SIGTERM. Workers on another node
// take over; every message is committed exactly once.
func TestJetStreamScaleDown(t *testing.T) {
	needBinaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// A short grace: the long messages cannot finish in it.
	a := startJSNode(ctx, t, "--prestop-timeout", "1s")
	waitMidWork(ctx, t, a.led)
	var wg sync.WaitGroup
	for _, jp := range a.pods {
		wg.Go(func() {
			out, err := jp.p.sc.Prestop(ctx)
			select {
			case <-jp.stopped:
			default:
				t.Errorf("%s: the preStop hook returned before the workers stopped: %s", jp.p.ref, out)
			}
			if err != nil || !strings.Contains(out, "reason=pod-terminating done=true") {
				t.Errorf("%s: preStop hook: %v: %s", jp.p.ref, err, out)
			}
			jp.sigterm() // the kubelet's SIGTERM, after the hook
			<-jp.stopped
		})
	}
	wg.Wait()
	a.waitDone(ctx, t)
	takeOver(ctx, t, "scale-down", a.cons, a.led, jsTotal)
}

package sidecar_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lastcall-dev/lastcall/sidecar"
)

// ledger records what workers did with each message, in order.
type ledger struct {
	mu      sync.Mutex
	seq     int
	started map[string]int // id → starts
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
		started: map[string]int{}, commits: map[string][]string{}, handed: map[string]int{},
		doneAt: map[string]int{}, lastSeq: map[string]int{},
		changed: make(chan struct{}), longStarted: make(chan struct{}),
	}
}

func (l *ledger) note() {
	l.seq++
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *ledger) start(id string, long bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started[id]++
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
// on it in steps, telling the server it is still at work; once draining, it finishes a message only if the rest of
// the work fits before the deadline, and hands it back (Nak) otherwise.
func jsWorker(ctx, drain context.Context, cons jetstream.Consumer, led *ledger, group string) {
	for drain.Err() == nil {
		msg, err := cons.Next(jetstream.FetchContext(drain))
		if err != nil {
			continue
		}
		id := string(msg.Data())
		cost, _ := time.ParseDuration(msg.Headers().Get("Cost"))
		led.start(id, cost > time.Second)
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

// TestJetStreamDrain consumes a JetStream work queue with workers in two
// pods whose sidecars follow a Hub; a notice arrives while a long message is
// being worked on. The workers stop pulling, finish what fits, hand back the
// rest, and say done; workers on another node then take over. Every message
// is committed exactly once: none lost, none left half-done.
func TestJetStreamDrain(t *testing.T) {
	needBinaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "JOBS", Subjects: []string{"jobs.>"}, Retention: jetstream.WorkQueuePolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "workers", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	const total = 100
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

	// Node A: a Hub and two pods, each a real sidecar and two workers.
	ips, dl := newPodIPs(), newDoneLog()
	hs := startHub(t, "127.0.0.1:0", sidecar.HubOptions{Pods: ips, OnDone: dl.onDone})
	led := newLedger()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range 2 {
		ref := sidecar.PodRef{Namespace: "work", Name: fmt.Sprintf("js-%d", i)}
		ip := fmt.Sprintf("127.0.6.%d", i+1)
		ips.set(ref, ip)
		p := startPod(ctx, t, podSpec{ref: ref, ip: ip, hub: hs.url(), noWorker: true})
		if _, err := p.waitState(ctx, t, phaseIs(sidecar.PhaseRunning)); err != nil {
			t.Fatal(err)
		}
		c := p.client(t)
		group := ref.String()
		wg.Go(func() {
			drain := c.Draining(ctx)
			var pod sync.WaitGroup
			for range 2 {
				pod.Go(func() { jsWorker(ctx, drain, cons, led, group) })
			}
			pod.Wait()
			if drain.Err() != nil && ctx.Err() == nil {
				led.groupDone(group)
				if err := c.Done(ctx); err != nil {
					panic(err)
				}
			}
		})
	}

	// The notice arrives mid-work: messages committed and a long one under
	// way.
	select {
	case <-led.longStarted:
	case <-ctx.Done():
		t.Fatal("no long message started")
	}
	if err := led.waitFor(ctx, func() bool { return len(led.commits) >= 20 }); err != nil {
		t.Fatal(err)
	}
	if told, err := hs.hub.Draining(ctx, testNotice(time.Now().Add(300*time.Millisecond))); err != nil || told != 2 {
		t.Fatalf("Draining: told %d, %v", told, err)
	}
	for range 2 {
		select {
		case <-dl.ch:
		case <-ctx.Done():
			t.Fatal("node A's pods never said done")
		}
	}

	// Node B takes over what is left, the handed-back messages included.
	bctx, bcancel := context.WithCancel(ctx)
	for range 4 {
		wg.Go(func() { jsWorker(ctx, bctx, cons, led, "node-b") })
	}
	err = led.waitFor(ctx, func() bool { return len(led.commits) == total })
	bcancel()
	if err != nil {
		t.Fatalf("committed %d of %d messages: %v", len(led.commits), total, err)
	}
	wg.Wait()

	led.mu.Lock()
	defer led.mu.Unlock()
	handedBack := 0
	for i := range total {
		id := strconv.Itoa(i)
		if c := led.commits[id]; len(c) != 1 {
			t.Errorf("message %s committed %d times (%v), want once", id, len(c), c)
		}
		if s, c, h := led.started[id], len(led.commits[id]), led.handed[id]; s != c+h {
			t.Errorf("message %s started %d times, committed %d, handed back %d: left half-done", id, s, c, h)
		}
		handedBack += led.handed[id]
	}
	if handedBack == 0 {
		t.Error("no message was handed back; the drain did not interrupt a long one")
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
	t.Logf("handed back %d, redelivered %d", handedBack, info.NumRedelivered)
}

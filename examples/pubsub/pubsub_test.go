package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lastcall-dev/lastcall/sidecar/sidecartest"
	"github.com/lastcall-dev/lastcall/watcher"
)

// sidecarBin is the sidecar binary TestMain builds; empty under -short.
var sidecarBin string

func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m, &sidecarBin)) }

const ackDeadline = 10 * time.Second // the fake's minimum

// fakePubSub is the official fake with one topic and one subscription.
type fakePubSub struct {
	srv    *pstest.Server
	client *pubsub.Client
	sub    string
}

func newFakePubSub(t *testing.T) *fakePubSub {
	t.Helper()
	srv := pstest.NewServer()
	t.Cleanup(func() { _ = srv.Close() })
	client, err := pubsub.NewClient(t.Context(), "p", option.WithEndpoint(srv.Addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	f := &fakePubSub{srv: srv, client: client, sub: "projects/p/subscriptions/jobs"}
	if _, err := client.TopicAdminClient.CreateTopic(t.Context(), &pb.Topic{Name: "projects/p/topics/jobs"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SubscriptionAdminClient.CreateSubscription(t.Context(), &pb.Subscription{
		Name: f.sub, Topic: "projects/p/topics/jobs", AckDeadlineSeconds: int32(ackDeadline / time.Second),
	}); err != nil {
		t.Fatal(err)
	}
	return f
}

// publish publishes n messages; cost(i) is the work message i takes.
func (f *fakePubSub) publish(t *testing.T, n int, cost func(int) time.Duration) {
	t.Helper()
	pub := f.client.Publisher("jobs")
	defer pub.Stop()
	var results []*pubsub.PublishResult
	for i := range n {
		results = append(results, pub.Publish(t.Context(), &pubsub.Message{
			Data: []byte(strconv.Itoa(i)), Attributes: map[string]string{"cost": cost(i).String()},
		}))
	}
	for _, r := range results {
		if _, err := r.Get(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}

// tally is what the fake saw happen to the messages.
type tally struct {
	messages, acked, ackedOnce, lost, deliveries, redelivered, nacks, expired int
}

func (f *fakePubSub) tally() tally {
	var c tally
	for _, m := range f.srv.Messages() {
		c.messages++
		c.deliveries += m.Deliveries
		c.redelivered += max(m.Deliveries-1, 0)
		if m.Acks > 0 {
			c.acked++
		}
		if m.Acks == 1 {
			c.ackedOnce++
		}
		if m.Acks == 0 {
			c.lost++
		}
		nacks := 0
		for _, ma := range m.Modacks {
			if ma.AckDeadline == 0 {
				nacks++
			}
		}
		c.nacks += nacks
		// Every delivery ends in an ack, a nack or the ack deadline.
		c.expired += m.Deliveries - m.Acks - nacks
	}
	return c
}

func (f *fakePubSub) waitAcked(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	for f.tally().acked < n {
		select {
		case <-ctx.Done():
			t.Fatalf("acked %d of %d: %+v", f.tally().acked, n, f.tally())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func startNode(ctx context.Context, t *testing.T, name, ip string) *sidecartest.Node {
	t.Helper()
	if sidecarBin == "" {
		t.Skip("runs the sidecar binary: not under -short")
	}
	return sidecartest.StartNode(ctx, t, sidecarBin, name, ip)
}

func newWorker(t *testing.T, f *fakePubSub, n *sidecartest.Node) *Worker {
	t.Helper()
	return &Worker{
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pod", n.Ref.Name), Sidecar: n.Sidecar.Client(t),
		Subscriber: f.client.SubscriptionAdminClient, Subscription: f.sub,
		MaxOutstanding: 4, Slots: 2, Margin: 200 * time.Millisecond,
		Process: simulate, Export: func(context.Context, *pb.PubsubMessage) error { return nil },
	}
}

// TestPubSubDrain runs the worker against the official Pub/Sub fake with a
// real sidecar, as on a GKE preemptible node: a notice arrives while it
// holds messages, started and not (flow control). It stops pulling, nacks
// what it has not started and what cannot finish before the deadline at
// once, finishes the rest, says done; a worker on another node takes over.
// Every message is acked exactly once and none waits out its ack deadline.
func TestPubSubDrain(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	a := startNode(ctx, t, "pubsub-a", "127.0.11.1")
	f := newFakePubSub(t)
	const total = 40
	f.publish(t, total, func(i int) time.Duration {
		if i%8 == 5 {
			return 2 * time.Second // cannot finish inside the drain window
		}
		return 30 * time.Millisecond
	})

	wa := newWorker(t, f, a)
	var longSince atomic.Int64 // when the long message under way started; 0: none
	wa.Process = func(ctx, drain context.Context, margin time.Duration, m *pb.PubsubMessage) error {
		if m.Attributes["cost"] != "2s" {
			return simulate(ctx, drain, margin, m)
		}
		longSince.Store(time.Now().UnixNano())
		defer longSince.Store(0)
		return simulate(ctx, drain, margin, m)
	}
	errA := make(chan error, 1)
	go func() { errA <- wa.Run(ctx) }()

	// The notice comes mid-work: some acked, a long message just started
	// (so that it cannot finish before the deadline).
	f.waitAcked(ctx, t, 8)
	sidecartest.WaitFor(ctx, t, "a long message starting", func() bool {
		since := longSince.Load()
		return since != 0 && time.Since(time.Unix(0, since)) < 500*time.Millisecond
	})
	drainAt := time.Now()
	took := a.Drain(ctx, t, sidecartest.Notice(watcher.SourceGCE, watcher.KindPreemption, time.Now().Add(time.Second)), errA)
	ackedByA := f.tally().acked
	t.Logf("worker A: done %s after the notice; acked %d, nacked %d unstarted (flow control) and %d unfinished",
		took.Round(time.Millisecond), wa.Acked.Load(), wa.NackedUnstarted.Load(), wa.NackedUnfinished.Load())
	if wa.NackedUnfinished.Load() == 0 {
		t.Error("no message was handed back unfinished; the drain did not interrupt a long one")
	}

	// Node B takes over, the handed-back messages included.
	b := startNode(ctx, t, "pubsub-b", "127.0.11.2")
	wb := newWorker(t, f, b)
	bctx, bcancel := context.WithCancel(ctx)
	errB := make(chan error, 1)
	go func() { errB <- wb.Run(bctx) }()
	f.waitAcked(ctx, t, total)
	bcancel()
	if err := <-errB; err != nil {
		t.Fatalf("worker B: %v", err)
	}
	elapsed := time.Since(drainAt)

	c := f.tally()
	t.Logf("Pub/Sub: %d messages, acked exactly once %d (A %d, B %d), handed back (nacked) %d, redelivered %d, lost %d, waited out an ack deadline %d; notice to all acked %s",
		c.messages, c.ackedOnce, ackedByA, c.acked-ackedByA, c.nacks, c.redelivered, c.lost, c.expired, elapsed.Round(time.Millisecond))
	if c.messages != total || c.ackedOnce != total || c.lost != 0 {
		t.Errorf("%+v: want %d messages each acked exactly once", c, total)
	}
	if c.expired != 0 {
		t.Errorf("%d deliveries waited out their ack deadline", c.expired)
	}
	if c.nacks != c.redelivered {
		t.Errorf("%d nacks but %d redeliveries", c.nacks, c.redelivered)
	}
	if want := wa.NackedUnstarted.Load() + wa.NackedUnfinished.Load() + wb.NackedUnstarted.Load() + wb.NackedUnfinished.Load(); int64(c.nacks) != want {
		t.Errorf("the fake saw %d nacks, the workers sent %d", c.nacks, want)
	}
}

// TestPubSubExportBackoff fails the export downstream for a while: the
// worker hands the messages back and backs off exponentially instead of
// spinning, and acks every message exactly once when the downstream is
// back.
func TestPubSubExportBackoff(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	a := startNode(ctx, t, "pubsub-backoff", "127.0.11.3")
	f := newFakePubSub(t)
	const total = 20
	f.publish(t, total, func(int) time.Duration { return 5 * time.Millisecond })

	const outage = 2 * time.Second
	var mu sync.Mutex
	var attempts, failed int
	start := time.Now()
	w := newWorker(t, f, a)
	w.Backoff = &Backoff{Base: 50 * time.Millisecond, Max: 500 * time.Millisecond, Window: time.Minute}
	w.Export = func(context.Context, *pb.PubsubMessage) error {
		mu.Lock()
		defer mu.Unlock()
		attempts++
		if time.Since(start) < outage {
			failed++
			return errors.New("downstream unavailable")
		}
		return nil
	}
	wctx, wcancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- w.Run(wctx) }()
	f.waitAcked(ctx, t, total)
	wcancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	c := f.tally()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("export down for %s: %d failed exports (a worker retrying at once would make thousands), %d attempts in all; %+v",
		outage, failed, attempts, c)
	// Pulls of at most 4 messages, each followed by a pause that doubles
	// with every failure up to 500ms: at most 8 pulls fit in 2s.
	if failed == 0 || failed > 4*8 {
		t.Errorf("%d failed exports during a %s outage; want a few, paced by the backoff", failed, outage)
	}
	if c.ackedOnce != total || c.lost != 0 || c.expired != 0 {
		t.Errorf("%+v: want every message acked once, none waiting out its deadline", c)
	}
	if fmt.Sprint(w.ExportFailures.Load()) != strconv.Itoa(failed) {
		t.Errorf("worker counted %d export failures, the downstream %d", w.ExportFailures.Load(), failed)
	}
}

// TestPubSubServeCalledOffDrain: a notice drains the node, the worker says
// done, then the notice is canceled and the drain called off. Serve (what
// main runs) must go back to pulling in the same process: messages
// published after the drain was called off are acked, and Serve returns
// only when its context ends (SIGTERM).
func TestPubSubServeCalledOffDrain(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	a := startNode(ctx, t, "pubsub-resume", "127.0.11.4")
	f := newFakePubSub(t)
	quick := func(int) time.Duration { return 5 * time.Millisecond }
	f.publish(t, 5, quick)
	w := newWorker(t, f, a)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(wctx) }()
	f.waitAcked(ctx, t, 5)

	notice := sidecartest.Notice(watcher.SourceGCE, watcher.KindMaintenance, time.Now().Add(time.Minute))
	if told, err := a.Hub.Hub.Draining(ctx, notice); err != nil || told != 1 {
		t.Fatalf("Draining: told %d, %v", told, err)
	}
	select {
	case <-a.Done:
	case <-ctx.Done():
		t.Fatal("the hub never heard the worker was done")
	}
	if told, err := a.Hub.Hub.Resumed(ctx, notice); err != nil || told != 1 {
		t.Fatalf("Resumed: told %d, %v", told, err)
	}
	f.publish(t, 5, quick)
	f.waitAcked(ctx, t, 10)
	select {
	case err := <-errc:
		t.Fatalf("Serve returned before its context ended: %v", err)
	default:
	}
	wcancel()
	if err := <-errc; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if c := f.tally(); c.ackedOnce != 10 || c.lost != 0 {
		t.Errorf("%+v: want 10 messages each acked exactly once", c)
	}
}

// Command pubsub is a Google Cloud Pub/Sub worker that follows lastcall's
// sidecar. It pulls with unary Pull, never more messages than it can hold
// (MaxOutstanding), and works on Slots of them at once. When its pod drains
// it stops pulling at once, nacks the messages it holds but has not
// started, finishes those whose work fits before the deadline and nacks the
// others the moment that is clear, then tells the sidecar it is done: every
// message it held is acked or nacked, so Pub/Sub redelivers the rest to a
// worker on another node at once instead of after the ack deadline.
//
// Why unary Pull and not Subscriber.Receive: Receive's streaming pull lets
// the service push more messages than the handlers take (server-side flow
// control is best effort, and the pstest fake has none); those left in the
// stream when it closes are neither acked nor nacked and wait out their ack
// deadline. With Pull the worker holds exactly what it asked for.
//
// It does not extend leases: set the subscription's ack deadline above the
// longest work (Musiio's steps take under 10 s).
//
// When exporting a result downstream fails, the message is nacked and the
// worker pulls nothing for a delay that doubles with every failure in the
// last minute (Backoff): an outage costs a few calls, not a spinning CPU.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"cloud.google.com/go/pubsub/v2"
	vkit "cloud.google.com/go/pubsub/v2/apiv1"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"github.com/lastcall-dev/lastcall/sidecar/worker"
)

func main() {
	project := flag.String("project", os.Getenv("GOOGLE_CLOUD_PROJECT"), "Google Cloud project")
	subID := flag.String("subscription", "jobs", "subscription to pull from")
	addr := flag.String("sidecar", worker.DefaultAddr, "the lastcall sidecar")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log, *project, *subID, *addr); err != nil {
		log.Error("worker stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, project, subID, addr string) error {
	sc, err := worker.NewClient(addr)
	if err != nil {
		return err
	}
	client, err := pubsub.NewClient(ctx, project)
	if err != nil {
		return err
	}
	defer client.Close()
	w := &Worker{
		Log: log, Sidecar: sc, Subscriber: client.SubscriptionAdminClient,
		Subscription: "projects/" + project + "/subscriptions/" + subID,
		Process:      simulate, Export: func(context.Context, *pb.PubsubMessage) error { return nil },
	}
	return w.Serve(ctx)
}

// Worker pulls from one subscription and follows the sidecar.
type Worker struct {
	Log          *slog.Logger
	Sidecar      *worker.Client
	Subscriber   *vkit.SubscriptionAdminClient
	Subscription string // projects/P/subscriptions/S
	// MaxOutstanding bounds the messages held, started or not. Default 4.
	MaxOutstanding int
	// Slots is how many messages are worked on at once. Default 2.
	Slots int
	// Margin is kept before the drain's deadline for handing back.
	// Default 2s.
	Margin time.Duration
	// DrainGrace is how long a Pull under way when the drain starts may
	// still run. Default 1s.
	DrainGrace time.Duration
	// Process does the work. drain is the context from Client.Draining:
	// once it is done, Process should return ErrWontFit as soon as the rest
	// of the work cannot finish Margin before the deadline. ctx ends at that
	// point anyway.
	Process func(ctx, drain context.Context, margin time.Duration, m *pb.PubsubMessage) error
	// Export sends the result downstream; when it fails the message is
	// handed back and the worker backs off.
	Export func(ctx context.Context, m *pb.PubsubMessage) error
	// Backoff paces pulling after export failures. Default: 50ms doubling
	// to 30s over the failures of the last minute.
	Backoff *Backoff

	// Counts, for logs and tests.
	Acked, NackedUnstarted, NackedUnfinished, ExportFailures atomic.Int64
}

// ErrWontFit is what Process returns when the rest of the work cannot
// finish before the drain's deadline.
var ErrWontFit = errors.New("the work does not fit before the deadline")

// Run pulls and works until the pod drains and everything held is acked or
// nacked, then tells the sidecar it is done; or until ctx ends (SIGTERM),
// after handing back what it holds.
func (w *Worker) Run(ctx context.Context) error {
	w.defaults()
	return w.round(ctx, w.Sidecar.Draining(ctx))
}

// Serve is Run again and again until ctx ends (SIGTERM): after a drain,
// once done is reported, it waits until the drain is called off (the
// notice was canceled) and then goes back to work, without exiting. A
// worker process that exited would be restarted by the kubelet, and one
// that keeps exiting ends in CrashLoopBackOff.
func (w *Worker) Serve(ctx context.Context) error {
	w.defaults()
	for {
		drain := w.Sidecar.Draining(ctx)
		if err := w.round(ctx, drain); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		if _, ok := worker.DrainingState(drain); ok {
			w.Log.Info("waiting for the drain to be called off or for SIGTERM")
			if err := worker.WaitResumed(ctx, drain); err != nil {
				return nil
			}
		}
		w.Log.Info("drain called off; pulling again")
	}
}

// round works until drain ends; see Run.
func (w *Worker) round(ctx, drain context.Context) error {
	held := make(chan struct{}, w.MaxOutstanding) // a token per message held
	queue := make(chan *pb.ReceivedMessage, w.MaxOutstanding)
	var wg sync.WaitGroup
	for range w.Slots {
		wg.Go(func() {
			for m := range queue {
				w.handle(ctx, drain, m)
				<-held
			}
		})
	}
	w.pull(ctx, drain, held, queue)
	close(queue)
	wg.Wait()
	w.Log.Info("stopped pulling", "acked", w.Acked.Load(), "nacked_unstarted", w.NackedUnstarted.Load(),
		"nacked_unfinished", w.NackedUnfinished.Load(), "export_failures", w.ExportFailures.Load())
	if st, ok := worker.DrainingState(drain); ok {
		w.Log.Info("drained", "reason", st.Reason, "left", time.Until(st.Deadline).String())
		return w.Sidecar.Done(ctx)
	}
	return nil
}

func (w *Worker) defaults() {
	if w.MaxOutstanding <= 0 {
		w.MaxOutstanding = 4
	}
	if w.Slots <= 0 {
		w.Slots = 2
	}
	if w.Margin <= 0 {
		w.Margin = 2 * time.Second
	}
	if w.DrainGrace <= 0 {
		w.DrainGrace = time.Second
	}
	if w.Backoff == nil {
		w.Backoff = &Backoff{Base: 50 * time.Millisecond, Max: 30 * time.Second, Window: time.Minute}
	}
}

// pull asks for as many messages as there is room for, until drain ends.
// A Pull under way when the drain starts gets DrainGrace to return (it
// does at once when there are messages): what it brings is handed back
// rather than lost in a cancelled call.
func (w *Worker) pull(ctx, drain context.Context, held chan struct{}, queue chan<- *pb.ReceivedMessage) {
	for drain.Err() == nil {
		select { // room for one message at least
		case held <- struct{}{}:
		case <-drain.Done():
			return
		}
		// After the room: a handler that failed has set the delay by then.
		if err := w.Backoff.Wait(drain); err != nil {
			<-held
			return
		}
		n := 1
	more:
		for n < w.MaxOutstanding {
			select {
			case held <- struct{}{}:
				n++
			default:
				break more
			}
		}
		resp, err := w.pullOnce(ctx, drain, n)
		got := 0
		if err == nil {
			got = len(resp.ReceivedMessages)
		}
		for range n - got {
			<-held
		}
		if err != nil {
			if ctx.Err() != nil || drain.Err() != nil {
				return
			}
			w.Log.Warn("pull failed", "err", err)
			w.Backoff.Fail(time.Now())
			continue
		}
		for _, m := range resp.ReceivedMessages {
			queue <- m // never blocks: there is a token for it
		}
	}
}

// pullOnce makes one Pull of up to n messages; the drain ends it after
// DrainGrace.
func (w *Worker) pullOnce(ctx, drain context.Context, n int) (*pb.PullResponse, error) {
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stop := context.AfterFunc(drain, func() {
		t := time.NewTimer(w.DrainGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-pctx.Done():
		}
	})
	defer stop()
	return w.Subscriber.Pull(pctx, &pb.PullRequest{Subscription: w.Subscription, MaxMessages: int32(n)})
}

// handle works on one message and acks it, or nacks it at once if it
// cannot be finished.
func (w *Worker) handle(ctx, drain context.Context, m *pb.ReceivedMessage) {
	if drain.Err() != nil || ctx.Err() != nil {
		w.NackedUnstarted.Add(1)
		w.nack(ctx, m)
		return
	}
	work, cancel := worker.UntilDeadline(ctx, drain, w.Margin)
	defer cancel()
	if err := w.Process(work, drain, w.Margin, m.Message); err != nil {
		w.Log.Info("handing message back", "id", m.Message.MessageId, "err", err)
		w.NackedUnfinished.Add(1)
		w.nack(ctx, m)
		return
	}
	if err := w.Export(work, m.Message); err != nil {
		w.ExportFailures.Add(1)
		d := w.Backoff.Fail(time.Now())
		w.Log.Warn("export failed; handing message back and backing off", "id", m.Message.MessageId, "backoff", d.String(), "err", err)
		w.nack(ctx, m)
		return
	}
	actx, cancelAck := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second) // the work is done: ack even after SIGTERM
	defer cancelAck()
	if err := w.Subscriber.Acknowledge(actx, &pb.AcknowledgeRequest{Subscription: w.Subscription, AckIds: []string{m.AckId}}); err != nil {
		w.Log.Warn("ack failed; the message will come back", "id", m.Message.MessageId, "err", err)
		return
	}
	w.Acked.Add(1)
}

// nack hands a message back for immediate redelivery. It runs even when ctx
// has ended (SIGTERM): handing back is the last thing a worker does.
func (w *Worker) nack(ctx context.Context, m *pb.ReceivedMessage) {
	nctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := w.Subscriber.ModifyAckDeadline(nctx, &pb.ModifyAckDeadlineRequest{
		Subscription: w.Subscription, AckIds: []string{m.AckId}, AckDeadlineSeconds: 0,
	}); err != nil {
		w.Log.Warn("nack failed; the message comes back after its ack deadline", "id", m.Message.MessageId, "err", err)
	}
}

// simulate is the stand-in work: it takes the time in the message's "cost"
// attribute (default 10ms), in steps, and gives up as soon as the rest no
// longer fits before the drain's deadline.
func simulate(ctx, drain context.Context, margin time.Duration, m *pb.PubsubMessage) error {
	cost := 10 * time.Millisecond
	if c, err := time.ParseDuration(m.Attributes["cost"]); err == nil {
		cost = c
	}
	const step = 10 * time.Millisecond
	for left := cost; left > 0; left -= step {
		if st, ok := worker.DrainingState(drain); ok && time.Until(st.Deadline)-margin < left {
			return fmt.Errorf("%s of work left: %w", left, ErrWontFit)
		}
		t := time.NewTimer(min(step, left))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		}
	}
	return nil
}

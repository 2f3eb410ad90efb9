// Command sqs is an AWS SQS worker that follows lastcall's sidecar.
//
// It long polls (WaitTimeSeconds 20): an idle worker makes 3 receives a
// minute instead of the endless empty receives of the SDK's default short
// polling. When its pod drains it stops receiving, hands back at once the
// messages it has received but not started (ChangeMessageVisibilityBatch
// with visibility 0), finishes the one under way if it fits before the
// deadline and hands it back otherwise, and tells the sidecar it is done:
// another worker receives those messages now rather than when their
// visibility timeout runs out.
//
// A long poll under way when the drain starts is given a moment (DrainGrace)
// to return, since a long poll answers at once when there are messages:
// what it brings is handed back. Cancelling it at once could abort a
// response that already took messages off the queue, and those would wait
// out their visibility timeout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/lastcall-dev/lastcall/sidecar/worker"
)

func main() {
	queue := flag.String("queue-url", os.Getenv("QUEUE_URL"), "SQS queue URL")
	addr := flag.String("sidecar", worker.DefaultAddr, "the lastcall sidecar")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log, *queue, *addr); err != nil {
		log.Error("worker stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, queue, addr string) error {
	sc, err := worker.NewClient(addr)
	if err != nil {
		return err
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	w := &Worker{Log: log, Sidecar: sc, SQS: sqs.NewFromConfig(cfg), QueueURL: queue, Process: simulate}
	return w.Serve(ctx)
}

// Worker receives from one queue and follows the sidecar.
type Worker struct {
	Log      *slog.Logger
	Sidecar  *worker.Client
	SQS      *sqs.Client
	QueueURL string
	// MaxMessages is how many messages one receive may bring. Default 5.
	MaxMessages int32
	// WaitTimeSeconds is the long poll. Default 20 (the most SQS allows);
	// negative: leave it to the queue's ReceiveMessageWaitTimeSeconds,
	// which is 0 (short polling) unless set.
	WaitTimeSeconds int32
	// VisibilityTimeout hides a received message from other workers; it
	// must exceed the longest work. Default 120 (seconds).
	VisibilityTimeout int32
	// Margin is kept before the drain's deadline for handing back.
	// Default 2s.
	Margin time.Duration
	// DrainGrace is how long a long poll under way when the drain starts
	// may still run. Default 1s.
	DrainGrace time.Duration
	// Process does the work; once drain is done it should return
	// ErrWontFit as soon as the rest cannot finish Margin before the
	// deadline. ctx ends at that point anyway.
	Process func(ctx, drain context.Context, margin time.Duration, m types.Message) error

	// Counts, for logs and tests.
	Receives, Deleted, HandedBack atomic.Int64
}

// ErrWontFit is what Process returns when the rest of the work cannot
// finish before the drain's deadline.
var ErrWontFit = errors.New("the work does not fit before the deadline")

// Run receives and works until the pod drains and everything received is
// deleted or handed back, then tells the sidecar it is done; or until ctx
// ends (SIGTERM), after handing back what it holds.
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
		w.Log.Info("drain called off; receiving again")
	}
}

// round works until drain ends; see Run.
func (w *Worker) round(ctx, drain context.Context) error {
	for drain.Err() == nil {
		out, err := w.receive(ctx, drain)
		if err != nil {
			if drain.Err() == nil {
				w.Log.Warn("receive failed", "err", err)
				sleep(drain, time.Second)
			}
			continue
		}
		if len(out.Messages) == 0 {
			continue
		}
		_ = w.Sidecar.InFlight(ctx, len(out.Messages))
		w.work(ctx, drain, out.Messages)
		_ = w.Sidecar.InFlight(ctx, 0)
	}
	w.Log.Info("stopped receiving", "receives", w.Receives.Load(), "deleted", w.Deleted.Load(), "handed_back", w.HandedBack.Load())
	if st, ok := worker.DrainingState(drain); ok {
		w.Log.Info("drained", "reason", st.Reason, "left", time.Until(st.Deadline).String())
		return w.Sidecar.Done(ctx)
	}
	return nil
}

func (w *Worker) defaults() {
	if w.MaxMessages <= 0 {
		w.MaxMessages = 5
	}
	if w.WaitTimeSeconds == 0 {
		w.WaitTimeSeconds = 20
	}
	if w.VisibilityTimeout <= 0 {
		w.VisibilityTimeout = 120
	}
	if w.Margin <= 0 {
		w.Margin = 2 * time.Second
	}
	if w.DrainGrace <= 0 {
		w.DrainGrace = time.Second
	}
}

// receive makes one receive; the drain ends it after DrainGrace.
func (w *Worker) receive(ctx, drain context.Context) (*sqs.ReceiveMessageOutput, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(drain, func() {
		t := time.NewTimer(w.DrainGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-rctx.Done():
		}
	})
	defer stop()
	in := &sqs.ReceiveMessageInput{
		QueueUrl: &w.QueueURL, MaxNumberOfMessages: w.MaxMessages, VisibilityTimeout: w.VisibilityTimeout,
	}
	if w.WaitTimeSeconds > 0 {
		in.WaitTimeSeconds = w.WaitTimeSeconds
	}
	w.Receives.Add(1)
	return w.SQS.ReceiveMessage(rctx, in)
}

// work handles the messages of one receive one at a time; when the drain
// starts, the ones not started are handed back at once, together.
func (w *Worker) work(ctx, drain context.Context, msgs []types.Message) {
	next := make(chan types.Message)
	var wg sync.WaitGroup
	wg.Go(func() {
		for m := range next {
			w.handle(ctx, drain, m)
		}
	})
	defer wg.Wait()
	defer close(next)
	for i, m := range msgs {
		select {
		case next <- m:
		case <-drain.Done():
			w.handBack(ctx, msgs[i:])
			return
		}
	}
}

func (w *Worker) handle(ctx, drain context.Context, m types.Message) {
	if drain.Err() != nil {
		w.handBack(ctx, []types.Message{m})
		return
	}
	work, cancel := worker.UntilDeadline(ctx, drain, w.Margin)
	defer cancel()
	if err := w.Process(work, drain, w.Margin, m); err != nil {
		w.Log.Info("handing message back", "id", aws.ToString(m.MessageId), "err", err)
		w.handBack(ctx, []types.Message{m})
		return
	}
	dctx, cancelDelete := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second) // the work is done: delete even after SIGTERM
	defer cancelDelete()
	if _, err := w.SQS.DeleteMessage(dctx, &sqs.DeleteMessageInput{QueueUrl: &w.QueueURL, ReceiptHandle: m.ReceiptHandle}); err != nil {
		w.Log.Warn("delete failed; the message will come back", "id", aws.ToString(m.MessageId), "err", err)
		return
	}
	w.Deleted.Add(1)
}

// handBack makes messages visible again at once (visibility timeout 0), in
// batches of ten, the most one call takes. It runs even when ctx has ended
// (SIGTERM): handing back is the last thing a worker does.
func (w *Worker) handBack(ctx context.Context, msgs []types.Message) {
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for start := 0; start < len(msgs); start += 10 {
		batch := msgs[start:min(start+10, len(msgs))]
		entries := make([]types.ChangeMessageVisibilityBatchRequestEntry, len(batch))
		for i, m := range batch {
			entries[i] = types.ChangeMessageVisibilityBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle, VisibilityTimeout: 0}
		}
		out, err := w.SQS.ChangeMessageVisibilityBatch(hctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: &w.QueueURL, Entries: entries})
		if err != nil {
			w.Log.Warn("hand back failed; the messages come back when their visibility ends", "count", len(batch), "err", err)
			continue
		}
		for _, f := range out.Failed {
			w.Log.Warn("hand back failed; the message comes back when its visibility ends", "entry", aws.ToString(f.Id), "code", aws.ToString(f.Code))
		}
		w.HandedBack.Add(int64(len(out.Successful)))
	}
}

// simulate is the stand-in work: it takes the time in the message's body
// ("30ms"; default 10ms), in steps, and gives up as soon as the rest no
// longer fits before the drain's deadline.
func simulate(ctx, drain context.Context, margin time.Duration, m types.Message) error {
	cost, err := time.ParseDuration(aws.ToString(m.Body))
	if err != nil {
		cost = 10 * time.Millisecond
	}
	const step = 10 * time.Millisecond
	for left := cost; left > 0; left -= step {
		if st, ok := worker.DrainingState(drain); ok && time.Until(st.Deadline)-margin < left {
			return fmt.Errorf("%s of work left: %w", left, ErrWontFit)
		}
		if !sleep(ctx, min(step, left)) {
			return context.Cause(ctx)
		}
	}
	return nil
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

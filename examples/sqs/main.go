// Command sqs is an AWS SQS worker that follows lastcall's sidecar. It long
// polls (WaitTimeSeconds 20), so an idle queue costs no empty receives. When
// the node drains it stops receiving at once, finishes what fits before the
// deadline, and sets the visibility of the rest to 0, so another worker
// receives them now rather than when their visibility timeout runs out.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"os/signal"
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
	q := sqs.NewFromConfig(cfg)
	drain := sc.Draining(ctx)
	for drain.Err() == nil {
		// A long poll; the drain cancels it at once.
		out, err := q.ReceiveMessage(drain, &sqs.ReceiveMessageInput{
			QueueUrl: &queue, MaxNumberOfMessages: 5, WaitTimeSeconds: 20, VisibilityTimeout: 120,
		})
		if err != nil {
			if drain.Err() == nil {
				log.Warn("receive failed", "err", err)
				time.Sleep(time.Second)
			}
			continue
		}
		_ = sc.InFlight(ctx, len(out.Messages))
		for i, m := range out.Messages {
			if drain.Err() != nil {
				handBack(ctx, log, q, queue, out.Messages[i:]) // not started: hand back at once
				break
			}
			work, cancel := worker.UntilDeadline(ctx, drain, 2*time.Second)
			err := process(work, m)
			cancel()
			if err != nil {
				handBack(ctx, log, q, queue, []types.Message{m})
				continue
			}
			if _, err := q.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: &queue, ReceiptHandle: m.ReceiptHandle}); err != nil {
				log.Warn("delete failed; the message will come back", "id", aws.ToString(m.MessageId), "err", err)
			}
		}
		_ = sc.InFlight(ctx, 0)
	}
	if _, ok := worker.DrainingState(drain); ok {
		return sc.Done(ctx)
	}
	return nil
}

// handBack makes messages visible again at once (visibility timeout 0).
func handBack(ctx context.Context, log *slog.Logger, q *sqs.Client, queue string, ms []types.Message) {
	for _, m := range ms {
		if _, err := q.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
			QueueUrl: &queue, ReceiptHandle: m.ReceiptHandle, VisibilityTimeout: 0,
		}); err != nil {
			log.Warn("hand back failed; the message comes back when its visibility ends", "id", aws.ToString(m.MessageId), "err", err)
		}
	}
}

// process does the work; it gives up when ctx ends.
func process(ctx context.Context, m types.Message) error {
	select {
	case <-time.After(time.Duration(len(aws.ToString(m.Body))) * time.Millisecond):
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("work interrupted"), context.Cause(ctx))
	}
}

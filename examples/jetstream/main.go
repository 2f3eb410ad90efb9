// Command jetstream is a NATS JetStream worker that follows lastcall's
// sidecar: it pulls one message at a time, keeps long work alive with
// InProgress, and when the node drains finishes what fits before the
// deadline and Naks the rest for immediate redelivery. It says done and
// waits: when the drain is called off (the notice was canceled) it pulls
// again, without exiting; SIGTERM ends it.
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lastcall-dev/lastcall/sidecar/worker"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server")
	stream := flag.String("stream", "JOBS", "stream")
	consumer := flag.String("consumer", "workers", "durable pull consumer")
	addr := flag.String("sidecar", worker.DefaultAddr, "the lastcall sidecar")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log, *url, *stream, *consumer, *addr); err != nil {
		log.Error("worker stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, url, stream, consumer, addr string) error {
	sc, err := worker.NewClient(addr)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		return err
	}
	for {
		drain := sc.Draining(ctx)
		if err := round(ctx, log, cons, drain); err != nil {
			return err
		}
		if _, ok := worker.DrainingState(drain); !ok {
			if ctx.Err() != nil {
				return nil // SIGTERM
			}
			continue // the drain was called off while finishing
		}
		if err := sc.Done(ctx); err != nil {
			return err
		}
		log.Info("drained; waiting for the drain to be called off or for SIGTERM")
		// Exiting here would have the kubelet restart the container, and
		// a worker that keeps exiting ends in CrashLoopBackOff: wait.
		if err := worker.WaitResumed(ctx, drain); err != nil {
			return nil // SIGTERM
		}
		log.Info("drain called off; pulling again")
	}
}

// round pulls and works until drain ends, then returns once nothing is
// held.
func round(ctx context.Context, log *slog.Logger, cons jetstream.Consumer, drain context.Context) error {
	for drain.Err() == nil {
		// A short pull that the drain does not cancel: a pull cancelled
		// while the server answers it would strand the message until its
		// ack wait runs out. What arrives after the drain started goes
		// back at once.
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			continue // no message
		}
		if drain.Err() != nil {
			_ = msg.Nak()
			break
		}
		work, cancel := worker.UntilDeadline(ctx, drain, 2*time.Second)
		err = process(work, msg)
		cancel()
		if err != nil {
			log.Warn("handing message back", "subject", msg.Subject(), "err", err)
			_ = msg.Nak()
			continue
		}
		if err := msg.DoubleAck(ctx); err != nil {
			log.Warn("ack failed; the message will be redelivered", "err", err)
		}
	}
	return nil
}

// process works in steps, telling the server it is still at work.
func process(ctx context.Context, msg jetstream.Msg) error {
	for range len(msg.Data()) {
		select {
		case <-time.After(100 * time.Millisecond):
			_ = msg.InProgress()
		case <-ctx.Done():
			return errors.Join(errors.New("work interrupted"), context.Cause(ctx))
		}
	}
	return nil
}

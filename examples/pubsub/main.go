// Command pubsub is a Google Cloud Pub/Sub worker that follows lastcall's
// sidecar: when the node drains it stops Receive at once, finishes the
// messages whose work fits before the deadline and nacks the others, so
// that Pub/Sub redelivers them to a worker on another node at once instead
// of after the ack deadline.
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

	"cloud.google.com/go/pubsub/v2"

	"github.com/lastcall-dev/lastcall/sidecar/worker"
)

func main() {
	project := flag.String("project", os.Getenv("GOOGLE_CLOUD_PROJECT"), "Google Cloud project")
	subID := flag.String("subscription", "jobs", "subscription to receive from")
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
	sub := client.Subscriber(subID)
	sub.ReceiveSettings.MaxOutstandingMessages = 4 // hold little: less to hand back
	sub.ReceiveSettings.ShutdownOptions = &pubsub.ShutdownOptions{
		Behavior: pubsub.ShutdownBehaviorWaitForProcessing, Timeout: -1, // handle bounds its own work
	}

	// Receive stops pulling when drain ends; it returns once every handler
	// has returned.
	drain := sc.Draining(ctx)
	err = sub.Receive(drain, func(_ context.Context, m *pubsub.Message) {
		if drain.Err() != nil {
			m.Nack() // delivered after the drain started: hand it back now
			return
		}
		// Work on with a context that survives the drain but ends 2s
		// before its deadline.
		work, cancel := worker.UntilDeadline(ctx, drain, 2*time.Second)
		defer cancel()
		if err := process(work, m.Data); err != nil {
			log.Warn("handing message back", "id", m.ID, "err", err)
			m.Nack()
			return
		}
		m.Ack()
	})
	if err != nil {
		return err
	}
	if st, ok := worker.DrainingState(drain); ok {
		log.Info("drained", "reason", st.Reason, "left", time.Until(st.Deadline).String())
		return sc.Done(ctx)
	}
	return nil
}

// process does the work; it gives up when ctx ends.
func process(ctx context.Context, data []byte) error {
	select {
	case <-time.After(time.Duration(len(data)) * time.Millisecond):
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("work interrupted"), context.Cause(ctx))
	}
}

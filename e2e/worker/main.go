// Command worker is the worker of the end-to-end test's pods: a NATS
// JetStream worker that follows lastcall's sidecar contract (like
// examples/jetstream) and reports every step it takes, with its time, on
// the NATS subject -ledger, so that the test can check that each message
// was acknowledged exactly once and draw the pod's timeline.
//
// It pulls one message at a time while the sidecar says running; a
// message's header Cost says how long its work takes. Once draining, it
// finishes what fits before the deadline (less 2 s) and hands the rest
// back (Nak), reports done, and then waits for its SIGTERM (a container
// that exited on its own would be restarted by the kubelet), or for the
// drain to be called off (another tool kept the node), after which it
// pulls again.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lastcall-dev/lastcall/sidecar"
)

// Event is one line of the ledger.
type Event struct {
	Pod    string    `json:"pod"`
	What   string    `json:"what"`
	Seq    uint64    `json:"seq,omitempty"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

type worker struct {
	log    *slog.Logger
	nc     *nats.Conn
	pod    string
	ledger string
}

// emit publishes one ledger event; the connection's buffer is flushed
// before the worker exits.
func (w *worker) emit(what string, seq uint64, detail string) {
	e := Event{Pod: w.pod, What: what, Seq: seq, At: time.Now(), Detail: detail}
	b, _ := json.Marshal(e)
	if err := w.nc.Publish(w.ledger, b); err != nil {
		w.log.Warn("ledger publish", "err", err)
	}
	w.log.Info(what, "seq", seq, "detail", detail)
}

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server")
	stream := flag.String("stream", "JOBS", "stream")
	consumer := flag.String("consumer", "workers", "durable pull consumer")
	ledger := flag.String("ledger", "e2e.ledger", "subject of the ledger events")
	addr := flag.String("sidecar", sidecar.DefaultAddr, "the lastcall sidecar")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(log, *url, *stream, *consumer, *ledger, *addr); err != nil {
		log.Error("worker stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, url, stream, consumer, ledger, addr string) error {
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	w := &worker{log: log, nc: nc, pod: os.Getenv("POD_NAME"), ledger: ledger}
	defer func() {
		w.emit("exit", 0, "")
		_ = nc.Flush()
		nc.Close()
	}()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	go func() {
		sig := <-sigs
		w.emit("sigterm", 0, sig.String())
		stop()
	}()

	sc, err := sidecar.NewClient(addr)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		return err
	}
	w.emit("started", 0, "")
	for {
		drain := sc.Draining(ctx)
		context.AfterFunc(drain, func() {
			if st, ok := sidecar.DrainingState(drain); ok {
				w.emit("told", 0, st.Reason+" deadline "+deadline(st))
			}
		})
		for drain.Err() == nil {
			msg, err := cons.Next(jetstream.FetchContext(drain))
			if err != nil {
				continue // no message, or the drain started
			}
			w.handle(ctx, drain, msg)
		}
		if _, ok := sidecar.DrainingState(drain); ok {
			if err := sc.Done(ctx); err != nil {
				return err
			}
			w.emit("done", 0, "")
		}
		// A drain can be called off (another tool keeps the node): pull
		// again once the sidecar says running.
		if !w.waitRunning(ctx, sc) {
			return nil
		}
		w.emit("resumed", 0, "")
	}
}

// deadline formats a drain's deadline for the ledger.
func deadline(st sidecar.State) string {
	if st.Deadline.IsZero() {
		return "none"
	}
	return st.Deadline.Format(time.RFC3339Nano)
}

// waitRunning blocks until the sidecar says running (true) or ctx ends
// (false).
func (w *worker) waitRunning(ctx context.Context, sc *sidecar.Client) bool {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	running := false
	_ = sc.Watch(wctx, func(st sidecar.State) {
		if st.Phase == sidecar.PhaseRunning {
			running = true
			cancel()
		}
	})
	return running && ctx.Err() == nil
}

// handle works on one message and acknowledges it, or hands it back when
// the work cannot finish before the drain's deadline or SIGTERM.
func (w *worker) handle(ctx, drain context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Warn("no metadata", "err", err)
		_ = msg.Nak()
		return
	}
	seq := meta.Sequence.Stream
	cost, _ := time.ParseDuration(msg.Headers().Get("Cost"))
	w.emit("got", seq, cost.String())
	work, cancel := sidecar.UntilDeadline(ctx, drain, 2*time.Second)
	err = process(work, msg, cost)
	cancel()
	if err != nil {
		if nerr := msg.Nak(); nerr != nil {
			w.emit("nak-failed", seq, nerr.Error())
			return
		}
		w.emit("handed-back", seq, err.Error())
		return
	}
	// The answer to the server must not depend on ctx, which SIGTERM ends.
	// An ack whose reply is lost (a timeout) may have landed or not: it is
	// sent again, which JetStream answers the same for a message already
	// acknowledged, a few times within the pod's grace.
	var aerr error
	for attempt := 1; attempt <= 3; attempt++ {
		actx, acancel := context.WithTimeout(context.Background(), 3*time.Second)
		aerr = msg.DoubleAck(actx)
		acancel()
		if aerr == nil {
			detail := ""
			if attempt > 1 {
				detail = fmt.Sprintf("attempt %d", attempt)
			}
			w.emit("acked", seq, detail)
			return
		}
		if !errors.Is(aerr, context.DeadlineExceeded) && !errors.Is(aerr, nats.ErrTimeout) {
			break
		}
		w.log.Warn("acknowledgement not answered, sending it again", "seq", seq, "attempt", attempt, "err", aerr)
	}
	w.emit("ack-failed", seq, aerr.Error())
}

// process works for cost in 100 ms steps, telling the server it is still
// at work.
func process(ctx context.Context, msg jetstream.Msg, cost time.Duration) error {
	end := time.Now().Add(cost)
	for time.Now().Before(end) {
		select {
		case <-time.After(min(100*time.Millisecond, time.Until(end))):
			_ = msg.InProgress()
		case <-ctx.Done():
			return fmt.Errorf("work interrupted: %w", context.Cause(ctx))
		}
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lastcall-dev/lastcall/sidecar/sidecartest"
	"github.com/lastcall-dev/lastcall/sidecar/sidecartest/jstest"
	"github.com/lastcall-dev/lastcall/watcher"
)

// sidecarBin is the sidecar binary TestMain builds; empty under -short.
var sidecarBin string

func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m, &sidecarBin)) }

// ackLedger is the server's own account of the consumer: an ack metric for
// every ack (sample frequency 100%) and an advisory for every Nak, by
// stream sequence.
type ackLedger struct {
	mu    sync.Mutex
	acks  map[uint64]int // stream sequence → acks
	deliv map[uint64]int // stream sequence → deliveries when acked
	naks  map[uint64]int // stream sequence → naks
}

func subscribeLedger(t *testing.T, nc *nats.Conn) *ackLedger {
	t.Helper()
	l := &ackLedger{acks: map[uint64]int{}, deliv: map[uint64]int{}, naks: map[uint64]int{}}
	var ev struct {
		StreamSeq  uint64 `json:"stream_seq"`
		Deliveries int    `json:"deliveries"`
	}
	for subj, count := range map[string]func(){
		"$JS.EVENT.METRIC.CONSUMER.ACK.JOBS.workers": func() {
			l.acks[ev.StreamSeq]++
			l.deliv[ev.StreamSeq] = ev.Deliveries
		},
		"$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.JOBS.workers": func() { l.naks[ev.StreamSeq]++ },
	} {
		sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if err := json.Unmarshal(m.Data, &ev); err == nil {
				count()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *ackLedger) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

// TestJetStreamScaleDown runs the example worker as a process, with a real
// sidecar, against an embedded JetStream server, and deletes its pod the
// way a scale-down does: no notice; the kubelet runs the worker's preStop
// hook (the sidecar binary's prestop), which drains the pod with reason
// pod-terminating and returns once the worker has finished or handed back
// what it held and said done; then SIGTERM. A worker on another node takes
// over. The server's ack metrics and Nak advisories show every message
// acked exactly once and no redelivery after an ack wait ran out.
func TestJetStreamScaleDown(t *testing.T) {
	if sidecarBin == "" {
		t.Skip("runs the sidecar binary: not under -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	workerBin := filepath.Join(t.TempDir(), "jetstream")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", workerBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, out)
	}

	srv := jstest.Start(ctx, t, jetstream.ConsumerConfig{AckWait: 2 * time.Second, SampleFrequency: "100%"})
	js := srv.JS
	led := subscribeLedger(t, srv.Conn)
	// The example works 100 ms per byte. One worker takes them in order:
	// five quick ones, then one that cannot finish in the pod's grace.
	const total = 20
	for i := range total {
		data := "ab"
		if i == 5 {
			data = strings.Repeat("x", 30)
		}
		if _, err := js.Publish(ctx, "jobs.resize", []byte(data)); err != nil {
			t.Fatal(err)
		}
	}

	a := sidecartest.StartNode(ctx, t, sidecarBin, "js-a", "127.0.13.1")
	wa := sidecartest.StartProc(t, "jetstream worker A", workerBin, []string{"--nats", srv.URL, "--sidecar", a.Sidecar.Addr}, nil, false)
	sidecartest.WaitFor(ctx, t, "five messages acked", func() bool { return led.acked() >= 5 })
	time.Sleep(100 * time.Millisecond) // the long one is under way

	// The kubelet deletes the pod: the preStop hook, then SIGTERM.
	out, err := a.Sidecar.Prestop(ctx, "--timeout", "3s")
	if err != nil || !strings.Contains(out, "reason=pod-terminating done=true") {
		t.Fatalf("preStop hook: %v: %s", err, out)
	}
	wa.Signal(syscall.SIGTERM)
	if err := wa.Wait(ctx); err != nil {
		t.Fatalf("worker A: %v", err)
	}
	select {
	case <-a.Done:
	case <-ctx.Done():
		t.Fatal("the hub never heard worker A was done")
	}
	if _, _, err := wa.WaitLine(ctx, 0, func(l string) bool { return strings.Contains(l, "handing message back") }); err != nil {
		t.Errorf("worker A handed nothing back: %v", err)
	}
	ackedByA := led.acked()

	b := sidecartest.StartNode(ctx, t, sidecarBin, "js-b", "127.0.13.2")
	wb := sidecartest.StartProc(t, "jetstream worker B", workerBin, []string{"--nats", srv.URL, "--sidecar", b.Sidecar.Addr}, nil, false)
	sidecartest.WaitFor(ctx, t, "every message acked", func() bool { return led.acked() == total })
	wb.Signal(syscall.SIGTERM)
	if err := wb.Wait(ctx); err != nil {
		t.Fatalf("worker B: %v", err)
	}

	led.mu.Lock()
	defer led.mu.Unlock()
	once, naks, redelivered, expired := 0, 0, 0, 0
	for seq := uint64(1); seq <= total; seq++ {
		if led.acks[seq] == 1 {
			once++
		} else {
			t.Errorf("message %d acked %d times, want once", seq, led.acks[seq])
		}
		naks += led.naks[seq]
		redelivered += max(led.deliv[seq]-1, 0)
		expired += max(led.deliv[seq]-1-led.naks[seq], 0)
	}
	t.Logf("JetStream (example process, scale-down): %d messages, acked exactly once %d (A %d, B %d), handed back %d, redelivered %d, lost %d, waited out an ack wait %d",
		total, once, ackedByA, total-ackedByA, naks, redelivered, total-len(led.acks), expired)
	if naks == 0 {
		t.Error("nothing was handed back; the preStop drain did not interrupt the long message")
	}
	if expired != 0 {
		t.Errorf("%d redeliveries after an ack wait ran out", expired)
	}
}

// TestJetStreamCalledOffDrain: a notice drains the node while the example
// worker holds a message; the worker finishes it and says done; then the
// notice is canceled and the agent calls the drain off. The same worker
// process must pull again: it may not exit (the kubelet would restart the
// container, and a worker that keeps exiting ends in CrashLoopBackOff), and
// messages published after the drain was called off are acked by it.
// (Before the fix the example returned after saying done, and the
// messages published later were never acked.)
func TestJetStreamCalledOffDrain(t *testing.T) {
	if sidecarBin == "" {
		t.Skip("runs the sidecar binary: not under -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	workerBin := filepath.Join(t.TempDir(), "jetstream")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", workerBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, out)
	}
	srv := jstest.Start(ctx, t, jetstream.ConsumerConfig{AckWait: 2 * time.Second, SampleFrequency: "100%"})
	led := subscribeLedger(t, srv.Conn)
	publish := func(data string) {
		t.Helper()
		if _, err := srv.JS.Publish(ctx, "jobs.resize", []byte(data)); err != nil {
			t.Fatal(err)
		}
	}

	a := sidecartest.StartNode(ctx, t, sidecarBin, "js-c", "127.0.13.3")
	wa := sidecartest.StartProc(t, "jetstream worker", workerBin, []string{"--nats", srv.URL, "--sidecar", a.Sidecar.Addr}, nil, false)
	publish("ab")
	publish(strings.Repeat("x", 10)) // 1 s of work, under way when the notice comes
	sidecartest.WaitFor(ctx, t, "the first message acked", func() bool { return led.acked() >= 1 })

	notice := sidecartest.Notice(watcher.SourceAWS, watcher.KindMaintenance, time.Now().Add(time.Hour))
	if told, err := a.Hub.Hub.Draining(ctx, notice); err != nil || told != 1 {
		t.Fatalf("Draining: told %d, %v", told, err)
	}
	select {
	case <-a.Done:
	case <-ctx.Done():
		t.Fatal("the hub never heard the worker was done")
	}
	if got := led.acked(); got != 2 {
		t.Errorf("acked %d messages when done, want 2 (the one under way fit before the deadline)", got)
	}

	if told, err := a.Hub.Hub.Resumed(ctx, notice); err != nil || told != 1 {
		t.Fatalf("Resumed: told %d, %v", told, err)
	}
	for range 3 {
		publish("ab")
	}
	sidecartest.WaitFor(ctx, t, "the messages published after the drain was called off acked", func() bool { return led.acked() == 5 })
	if _, _, err := wa.WaitLine(ctx, 0, func(l string) bool { return strings.Contains(l, "drain called off; pulling again") }); err != nil {
		t.Errorf("the worker did not log that it pulls again: %v", err)
	}
	wa.Signal(syscall.SIGTERM)
	if err := wa.Wait(ctx); err != nil {
		t.Fatalf("worker: %v", err)
	}
}

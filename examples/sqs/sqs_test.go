package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/lastcall-dev/lastcall/sidecar/sidecartest"
	"github.com/lastcall-dev/lastcall/watcher"
)

// sidecarBin is the sidecar binary TestMain builds; empty under -short.
var sidecarBin string

func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m, &sidecarBin)) }

// emulator starts the SQS-compatible server the tests run and returns its
// URL: fauxqs, which speaks the AWS JSON 1.0 protocol of the current SDK,
// installed by `make test` from examples/sqs/emulator (npm ci) with
// serve.mjs beside it, named by LASTCALL_SQS_EMULATOR.
func emulator(ctx context.Context, t *testing.T) string {
	t.Helper()
	if sidecarBin == "" {
		t.Skip("runs the sidecar and an SQS server: not under -short")
	}
	cli := os.Getenv("LASTCALL_SQS_EMULATOR")
	if cli == "" {
		cli = "../../.tools/fauxqs/serve.mjs"
	}
	if _, err := os.Stat(cli); err != nil {
		t.Fatalf("no SQS emulator (%v): run `make test`, or npm ci in a copy of examples/sqs/emulator and set LASTCALL_SQS_EMULATOR to the serve.mjs copied there", err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the SQS emulator needs Node.js (Debian package nodejs): %v", err)
	}
	p := sidecartest.StartProc(t, "fauxqs", node, []string{cli}, nil, true)
	listening := regexp.MustCompile(`listening at (http://127\.0\.0\.1:\d+)`)
	line, _, err := p.WaitLine(ctx, 0, listening.MatchString)
	if err != nil {
		t.Fatal(err)
	}
	return listening.FindStringSubmatch(line)[1]
}

// recorder records the SQS calls the workers make, from the wire: which
// messages each receive brought, which were deleted and which handed back.
type recorder struct {
	next http.RoundTripper

	mu         sync.Mutex
	receives   int
	empty      int
	emptyTime  time.Duration     // spent in receives that brought nothing
	received   map[string]int    // message ID → times received
	deleted    map[string]int    // message ID → times deleted
	handedBack map[string]int    // message ID → times made visible again
	handles    map[string]string // receipt handle → message ID
}

func newRecorder() *recorder {
	return &recorder{next: http.DefaultTransport, received: map[string]int{}, deleted: map[string]int{},
		handedBack: map[string]int{}, handles: map[string]string{}}
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var in []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		in = b
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	start := time.Now()
	resp, err := r.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(out))
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch strings.TrimPrefix(req.Header.Get("X-Amz-Target"), "AmazonSQS.") {
	case "ReceiveMessage":
		var v struct {
			Messages []struct{ MessageId, ReceiptHandle string }
		}
		_ = json.Unmarshal(out, &v)
		r.receives++
		if len(v.Messages) == 0 {
			r.empty++
			r.emptyTime += time.Since(start)
		}
		for _, m := range v.Messages {
			r.received[m.MessageId]++
			r.handles[m.ReceiptHandle] = m.MessageId
		}
	case "DeleteMessage":
		var v struct{ ReceiptHandle string }
		_ = json.Unmarshal(in, &v)
		r.deleted[r.handles[v.ReceiptHandle]]++
	case "ChangeMessageVisibilityBatch":
		var req struct {
			Entries []struct {
				Id, ReceiptHandle string
				VisibilityTimeout int
			}
		}
		var res struct{ Successful []struct{ Id string } }
		_ = json.Unmarshal(in, &req)
		_ = json.Unmarshal(out, &res)
		for _, ok := range res.Successful {
			for _, e := range req.Entries {
				if e.Id == ok.Id && e.VisibilityTimeout == 0 {
					r.handedBack[r.handles[e.ReceiptHandle]]++
				}
			}
		}
	}
	return resp, nil
}

// tally is what the workers did to the messages, from the wire.
type tally struct {
	messages, deletedOnce, lost, handedBack, redelivered, expired int
}

func (r *recorder) tally(ids []string) tally {
	r.mu.Lock()
	defer r.mu.Unlock()
	var c tally
	for _, id := range ids {
		c.messages++
		if r.deleted[id] == 1 {
			c.deletedOnce++
		}
		if r.deleted[id] == 0 {
			c.lost++
		}
		c.handedBack += r.handedBack[id]
		c.redelivered += max(r.received[id]-1, 0)
		// A message received again without having been handed back
		// waited out its visibility timeout.
		c.expired += max(r.received[id]-1-r.handedBack[id], 0)
	}
	return c
}

func (r *recorder) deletedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, d := range r.deleted {
		n += d
	}
	return n
}

func newSQS(endpoint string, rec *recorder) *sqs.Client {
	return sqs.New(sqs.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint),
		Credentials: aws.AnonymousCredentials{}, HTTPClient: &http.Client{Transport: rec},
	})
}

func createQueue(ctx context.Context, t *testing.T, c *sqs.Client, name string) string {
	t.Helper()
	out, err := c.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name)})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.QueueUrl)
}

func newWorker(t *testing.T, c *sqs.Client, queue string, sc *sidecartest.Sidecar) *Worker {
	t.Helper()
	return &Worker{
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pod", sc.Spec.Ref.Name), Sidecar: sc.Client(t),
		SQS: c, QueueURL: queue, VisibilityTimeout: 30, Margin: 200 * time.Millisecond, Process: simulate,
	}
}

// TestSQSDrain runs the worker against an SQS-compatible server with a
// real sidecar: a notice arrives while it holds a received batch with a
// long message under way. It stops receiving, hands back the messages not
// started at once and the long one as soon as it cannot fit (with
// ChangeMessageVisibilityBatch, visibility 0), says done; a worker on
// another node takes over. Every message is deleted exactly once and none
// waits out its visibility timeout.
func TestSQSDrain(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	endpoint := emulator(ctx, t)
	rec := newRecorder()
	client := newSQS(endpoint, rec)
	queue := createQueue(ctx, t, client, "jobs")
	const total = 40
	var ids []string
	for i := range total {
		cost := "30ms"
		if i%8 == 5 {
			cost = "2s" // cannot finish inside the drain window
		}
		out, err := client.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &queue, MessageBody: aws.String(cost)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, aws.ToString(out.MessageId))
	}

	a := sidecartest.StartNode(ctx, t, sidecarBin, "sqs-a", "127.0.12.1")
	wa := newWorker(t, client, queue, a.Sidecar)
	var longSince atomic.Int64
	wa.Process = func(ctx, drain context.Context, margin time.Duration, m types.Message) error {
		if aws.ToString(m.Body) != "2s" {
			return simulate(ctx, drain, margin, m)
		}
		longSince.Store(time.Now().UnixNano())
		defer longSince.Store(0)
		return simulate(ctx, drain, margin, m)
	}
	errA := make(chan error, 1)
	go func() { errA <- wa.Run(ctx) }()

	// The notice comes mid-batch: some deleted, a long message just started.
	sidecartest.WaitFor(ctx, t, "a long message starting after 8 deleted", func() bool {
		since := longSince.Load()
		return rec.deletedCount() >= 8 && since != 0 && time.Since(time.Unix(0, since)) < 500*time.Millisecond
	})
	drainAt := time.Now()
	took := a.Drain(ctx, t, sidecartest.Notice(watcher.SourceAWS, watcher.KindSpotInterruption, time.Now().Add(time.Second)), errA)
	t.Logf("worker A: done %s after the notice; deleted %d, handed back %d", took.Round(time.Millisecond), wa.Deleted.Load(), wa.HandedBack.Load())
	if wa.HandedBack.Load() < 2 {
		t.Errorf("worker A handed back %d messages; want the long one and the rest of its batch", wa.HandedBack.Load())
	}

	b := sidecartest.StartNode(ctx, t, sidecarBin, "sqs-b", "127.0.12.2")
	wb := newWorker(t, client, queue, b.Sidecar)
	bctx, bcancel := context.WithCancel(ctx)
	errB := make(chan error, 1)
	go func() { errB <- wb.Run(bctx) }()
	for rec.deletedCount() < total {
		select {
		case <-ctx.Done():
			t.Fatalf("deleted %d of %d: %+v", rec.deletedCount(), total, rec.tally(ids))
		case <-time.After(20 * time.Millisecond):
		}
	}
	bcancel()
	if err := <-errB; err != nil {
		t.Fatalf("worker B: %v", err)
	}
	c := rec.tally(ids)
	t.Logf("SQS: %d messages, deleted exactly once %d (A %d, B %d), handed back %d, redelivered %d, lost %d, waited out a visibility timeout %d; notice to all deleted %s",
		c.messages, c.deletedOnce, wa.Deleted.Load(), wb.Deleted.Load(), c.handedBack, c.redelivered, c.lost, c.expired, time.Since(drainAt).Round(time.Millisecond))
	if c.messages != total || c.deletedOnce != total || c.lost != 0 {
		t.Errorf("%+v: want %d messages each deleted exactly once", c, total)
	}
	if c.expired != 0 {
		t.Errorf("%d receives came after a visibility timeout ran out", c.expired)
	}
	if c.handedBack != c.redelivered {
		t.Errorf("%d handed back but %d redelivered", c.handedBack, c.redelivered)
	}
	attrs, err := client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: &queue,
		AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible}})
	if err != nil {
		t.Fatal(err)
	}
	if v, nv := attrs.Attributes["ApproximateNumberOfMessages"], attrs.Attributes["ApproximateNumberOfMessagesNotVisible"]; v != "0" || nv != "0" {
		t.Errorf("queue left with %s visible and %s in flight", v, nv)
	}
}

// TestSQSIdlePolling measures the receives an idle worker makes on an
// empty queue with 20 s long polling and with the SDK's default short
// polling (Buffer's empty receives). A long poll is held 20 s by the
// server, so an idle worker makes 3 receives a minute; short polling makes
// as many as its loop can.
func TestSQSIdlePolling(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	endpoint := emulator(ctx, t)
	idle := sidecartest.StartNode(ctx, t, sidecarBin, "sqs-idle", "127.0.12.3")
	// idleRun runs a worker on an empty queue until enough receives
	// completed and returns the recorder's account.
	idleRun := func(wait int32, enough func(*recorder) bool) *recorder {
		rec := newRecorder()
		client := newSQS(endpoint, rec)
		queue := createQueue(ctx, t, client, fmt.Sprintf("idle-%d", wait))
		w := newWorker(t, client, queue, idle.Sidecar)
		w.WaitTimeSeconds = wait
		wctx, wcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		sidecartest.WaitFor(ctx, t, "idle receives", func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			return enough(rec)
		})
		wcancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if rec.empty != rec.receives {
			t.Errorf("wait %d: %d of %d receives brought messages from an empty queue", wait, rec.receives-rec.empty, rec.receives)
		}
		return rec
	}
	start := time.Now()
	short := idleRun(-1, func(*recorder) bool { return time.Since(start) >= 2*time.Second })
	shortWindow := time.Since(start)
	shortRate := float64(short.receives) / shortWindow.Minutes()
	long := idleRun(20, func(r *recorder) bool { return r.empty >= 1 })
	perReceive := long.emptyTime / time.Duration(long.empty)
	longRate := time.Minute.Seconds() / perReceive.Seconds()
	t.Logf("idle worker, empty queue: 20 s long polling: one empty receive per %s = %.1f receives/min; SDK default short polling: %d receives in %s = %.0f receives/min",
		perReceive.Round(time.Millisecond), longRate, short.receives, shortWindow.Round(time.Millisecond), shortRate)
	if perReceive < 19*time.Second {
		t.Errorf("a long poll on an empty queue returned after %s, want about 20 s", perReceive)
	}
	if shortRate < 100*longRate {
		t.Errorf("short polling %.0f/min is not far above long polling %.1f/min", shortRate, longRate)
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// event is one step a worker reported on the ledger subject (see
// e2e/worker), or one the test observed itself.
type event struct {
	Pod    string    `json:"pod"`
	What   string    `json:"what"`
	Seq    uint64    `json:"seq,omitempty"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

// ledger collects the workers' events. It is safe for concurrent use.
type ledger struct {
	mu      sync.Mutex
	events  []event
	changed chan struct{} // closed and replaced on every event
}

func subscribeLedger(t *testing.T, nc *nats.Conn, subject string) *ledger {
	t.Helper()
	l := &ledger{changed: make(chan struct{})}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var e event
		if err := json.Unmarshal(m.Data, &e); err != nil {
			e = event{What: "bad-ledger-line", Detail: string(m.Data), At: time.Now()}
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.events = append(l.events, e)
		close(l.changed)
		l.changed = make(chan struct{})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// since returns the events at or after t0, in time order.
func (l *ledger) since(t0 time.Time) []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []event
	for _, e := range l.events {
		if !e.At.Before(t0) {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// waitFor blocks until cond holds for the events since t0, or ctx ends.
func (l *ledger) waitFor(ctx context.Context, t0 time.Time, cond func([]event) bool) error {
	for {
		l.mu.Lock()
		ch := l.changed
		l.mu.Unlock()
		if cond(l.since(t0)) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// messageReport is what became of the messages of stream sequences
// 1..published.
type messageReport struct {
	published, acked, handedBack, deliveries int
	problems                                 []string
}

// check reports, for stream sequences 1..published, whether each was
// acknowledged exactly once and every delivery ended in an ack or a
// hand-back (none half-done, as a worker killed mid-work would leave).
func (l *ledger) check(published int) messageReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := messageReport{published: published}
	got, acked, handed := map[uint64]int{}, map[uint64]int{}, map[uint64]int{}
	for _, e := range l.events {
		switch e.What {
		case "got":
			got[e.Seq]++
		case "acked":
			acked[e.Seq]++
		case "handed-back":
			handed[e.Seq]++
		case "ack-failed", "nak-failed", "bad-ledger-line":
			r.problems = append(r.problems, fmt.Sprintf("%s %d by %s: %s", e.What, e.Seq, e.Pod, e.Detail))
		}
	}
	for seq := uint64(1); seq <= uint64(published); seq++ {
		switch n := acked[seq]; {
		case n == 0:
			r.problems = append(r.problems, fmt.Sprintf("message %d lost (never acknowledged)", seq))
		case n > 1:
			r.problems = append(r.problems, fmt.Sprintf("message %d acknowledged %d times", seq, n))
		}
		if got[seq] != acked[seq]+handed[seq] {
			r.problems = append(r.problems, fmt.Sprintf("message %d: %d deliveries, %d acks, %d hand-backs: half-done", seq, got[seq], acked[seq], handed[seq]))
		}
		r.acked += min(acked[seq], 1)
		r.handedBack += handed[seq]
		r.deliveries += got[seq]
	}
	return r
}

func (r messageReport) String() string {
	return fmt.Sprintf("%d messages: %d acknowledged exactly once, %d lost or duplicated, %d hand-backs, %d deliveries",
		r.published, r.acked, len(r.problems), r.handedBack, r.deliveries)
}

// timeline is a scenario's events from every source, for the output.
type timeline struct {
	t0     time.Time
	events []event
}

func (tl *timeline) add(es ...event) { tl.events = append(tl.events, es...) }

// first returns the first event of pod matching what, and whether there
// is one.
func (tl *timeline) first(pod, what string) (event, bool) {
	for _, e := range tl.sorted() {
		if e.Pod == pod && e.What == what {
			return e, true
		}
	}
	return event{}, false
}

func (tl *timeline) sorted() []event {
	es := slices.Clone(tl.events)
	sort.SliceStable(es, func(i, j int) bool { return es[i].At.Before(es[j].At) })
	return es
}

// String prints the events in time order, in ms from t0.
func (tl *timeline) String() string {
	var b strings.Builder
	for _, e := range tl.sorted() {
		fmt.Fprintf(&b, "  %+9.3fs  %-28s %-34s", e.At.Sub(tl.t0).Seconds(), e.Pod, e.What)
		if e.Seq != 0 {
			fmt.Fprintf(&b, " msg %d", e.Seq)
		}
		if e.Detail != "" {
			fmt.Fprintf(&b, " %s", e.Detail)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// assertOrder fails the test unless, for pod, each of whats happened
// (first occurrence) in the order given.
func (tl *timeline) assertOrder(t *testing.T, pod string, whats ...string) {
	t.Helper()
	var prev event
	for i, w := range whats {
		e, ok := tl.first(pod, w)
		if !ok {
			t.Errorf("%s: no %q in the timeline", pod, w)
			return
		}
		if i > 0 && e.At.Before(prev.At) {
			t.Errorf("%s: %q at %s came before %q at %s", pod, w, e.At.Format("15:04:05.000000"), prev.What, prev.At.Format("15:04:05.000000"))
		}
		prev = e
	}
}

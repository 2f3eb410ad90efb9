package worker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// fakeSidecar serves GET /v1/state with the sidecar's long-poll semantics,
// in process: the client's requests go to it through a RoundTripper, not a
// socket, so that a test in a synctest bubble sees them block durably.
type fakeSidecar struct {
	mu      sync.Mutex
	st      State
	changed chan struct{}
}

func newFakeSidecar() *fakeSidecar {
	return &fakeSidecar{st: State{Phase: PhaseRunning, Generation: 1, AgentConnected: true}, changed: make(chan struct{})}
}

// set makes st (with the next generation) the sidecar's state.
func (f *fakeSidecar) set(st State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st.Generation = f.st.Generation + 1
	f.st = st
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeSidecar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q, err := wire.ParsePollQuery(r.URL.Query().Get)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	timeout := time.NewTimer(q.Wait)
	defer timeout.Stop()
	for {
		f.mu.Lock()
		st, ch := f.st, f.changed
		f.mu.Unlock()
		if q.Wait <= 0 || st.Generation != q.Generation {
			_ = json.NewEncoder(w).Encode(st)
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			q.Wait = 0
		case <-r.Context().Done():
			return
		}
	}
}

type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	return rec.Result(), nil
}

// newFakeClient returns a client whose requests the fake serves.
func newFakeClient(t *testing.T, f *fakeSidecar) *Client {
	t.Helper()
	c, err := NewClient("")
	if err != nil {
		t.Fatal(err)
	}
	c.hc = &http.Client{Transport: handlerTransport{f}}
	return c
}

func drainingState(deadline time.Time) State {
	return State{Phase: PhaseDraining, Reason: "preemption", Source: "gce", Deadline: deadline, AgentConnected: true}
}

// TestUntilDeadlineFollowsMovedDeadline: a maintenance notice drains with
// an hour to go; a preemption moves the deadline to 3 s from now. Work
// under UntilDeadline must end margin before the new deadline, not the
// first one. (Before the fix it ended an hour later: the context kept the
// deadline of the state that started the drain.)
func TestUntilDeadlineFollowsMovedDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeSidecar()
		c := newFakeClient(t, f)
		drain := c.Draining(t.Context())
		synctest.Wait()
		if drain.Err() != nil {
			t.Fatalf("draining before any notice: %v", context.Cause(drain))
		}

		f.set(drainingState(time.Now().Add(time.Hour)))
		synctest.Wait()
		if !errors.Is(context.Cause(drain), ErrDraining) {
			t.Fatalf("cause %v, want ErrDraining", context.Cause(drain))
		}
		work, cancel := UntilDeadline(t.Context(), drain, time.Second)
		defer cancel()
		synctest.Wait() // the work follows the first deadline before it moves

		moved := time.Now().Add(3 * time.Second)
		f.set(drainingState(moved))
		synctest.Wait()
		if st, ok := DrainingState(drain); !ok || !st.Deadline.Equal(moved) {
			t.Errorf("DrainingState = %v, %v; want the moved deadline %v", st.Deadline, ok, moved)
		}
		start := time.Now()
		<-work.Done()
		if got, want := time.Since(start), 2*time.Second; got != want {
			t.Errorf("work ended after %v, want %v (margin 1 s before the moved deadline)", got, want)
		}
		if !errors.Is(context.Cause(work), ErrDeadline) {
			t.Errorf("work's cause %v, want ErrDeadline", context.Cause(work))
		}
	})
}

// TestUntilDeadlineLaterDeadline: a deadline moved later gives the work the
// extra time.
func TestUntilDeadlineLaterDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeSidecar()
		c := newFakeClient(t, f)
		drain := c.Draining(t.Context())
		start := time.Now()
		f.set(drainingState(start.Add(10 * time.Second)))
		synctest.Wait()
		work, cancel := UntilDeadline(t.Context(), drain, time.Second)
		defer cancel()
		time.Sleep(5 * time.Second)
		f.set(drainingState(start.Add(30 * time.Second)))
		<-work.Done()
		if got, want := time.Since(start), 29*time.Second; got != want {
			t.Errorf("work ended after %v, want %v", got, want)
		}
	})
}

// TestCalledOffDrain: the drain is called off (the notice was canceled)
// while a message is worked on: the work is not cut at the old deadline,
// DrainingState says the drain no longer stands, and WaitResumed returns,
// after which a new Draining context follows the next drain. (Before the
// fix the work ended at the old deadline and nothing said the drain was
// off: the worker could only exit.)
func TestCalledOffDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeSidecar()
		c := newFakeClient(t, f)
		ctx := t.Context()
		drain := c.Draining(ctx)
		f.set(drainingState(time.Now().Add(5 * time.Second)))
		synctest.Wait()
		work, cancel := UntilDeadline(ctx, drain, time.Second)
		defer cancel()
		resumed := make(chan error, 1)
		go func() { resumed <- WaitResumed(ctx, drain) }()

		time.Sleep(time.Second)
		f.set(State{Phase: PhaseRunning, AgentConnected: true})
		synctest.Wait()
		select {
		case err := <-resumed:
			if err != nil {
				t.Fatalf("WaitResumed: %v", err)
			}
		default:
			t.Fatal("WaitResumed still blocks after the drain was called off")
		}
		if st, ok := DrainingState(drain); ok {
			t.Errorf("DrainingState after the drain was called off = %+v, true; want false", st)
		}
		time.Sleep(time.Minute)
		if work.Err() != nil {
			t.Errorf("work ended after the drain was called off: %v", context.Cause(work))
		}

		// Back at work: a new round follows the next drain.
		again := c.Draining(ctx)
		synctest.Wait()
		if again.Err() != nil {
			t.Fatalf("new round cancelled while running: %v", context.Cause(again))
		}
		f.set(drainingState(time.Now().Add(3 * time.Second)))
		synctest.Wait()
		if st, ok := DrainingState(again); !ok || st.Reason != "preemption" {
			t.Errorf("second drain: DrainingState = %+v, %v", st, ok)
		}
	})
}

// TestWaitResumedEndsWithContext: a drain that is never called off leaves
// WaitResumed to the worker's own context (its SIGTERM).
func TestWaitResumedEndsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeSidecar()
		c := newFakeClient(t, f)
		ctx, cancel := context.WithCancelCause(t.Context())
		drain := c.Draining(ctx)
		if err := WaitResumed(ctx, drain); err == nil {
			t.Error("WaitResumed before any drain returned nil")
		}
		f.set(drainingState(time.Now().Add(time.Minute)))
		synctest.Wait()
		sigterm := errors.New("SIGTERM")
		time.AfterFunc(10*time.Second, func() { cancel(sigterm) })
		if err := WaitResumed(ctx, drain); !errors.Is(err, sigterm) {
			t.Errorf("WaitResumed = %v, want the context's cause", err)
		}
		// The drain stands as it was last seen.
		if st, ok := DrainingState(drain); !ok || st.Reason != "preemption" {
			t.Errorf("DrainingState after ctx ended = %+v, %v; want the last drain", st, ok)
		}
	})
}

package worker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// drainingWith returns a context cancelled as Client.Draining cancels it
// when the sidecar shows st.
func drainingWith(t *testing.T, st State) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(&DrainingError{State: st})
	return ctx
}

// TestNoDeadline: another tool is taking the node away and the workers are
// told draining with no deadline. Work already pulled is not cut short
// (no deadline is not "now"), ends with the worker's own context (its
// SIGTERM), and the error says there is no deadline rather than printing
// year 1.
func TestNoDeadline(t *testing.T) {
	st := State{Phase: wire.PhaseDraining, Reason: "karpenter", Source: "node"}
	if got := (&DrainingError{State: st}).Error(); !strings.Contains(got, "no deadline") || strings.Contains(got, "0001") {
		t.Errorf("DrainingError = %q, want it to say there is no deadline", got)
	}
	if r := st.Remaining(time.Now()); r != 0 {
		t.Errorf("Remaining without a deadline = %v, want 0", r)
	}
	synctest.Test(t, func(t *testing.T) {
		parent, sigterm := context.WithCancel(t.Context())
		drain := drainingWith(t, st)
		work, cancel := UntilDeadline(parent, drain, 2*time.Second)
		defer cancel()
		time.Sleep(time.Hour)
		synctest.Wait()
		if work.Err() != nil {
			t.Fatalf("work cut short without a deadline: %v", context.Cause(work))
		}
		sigterm()
		synctest.Wait()
		if work.Err() == nil || errors.Is(context.Cause(work), ErrDeadline) {
			t.Errorf("after the worker's context ended: %v, want it ended, not by a deadline", context.Cause(work))
		}
	})
}

// TestDeadlineMargin: with a deadline, work ends margin before it.
func TestDeadlineMargin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		drain := drainingWith(t, State{Phase: wire.PhaseDraining, Reason: "preemption", Source: "gce", Deadline: start.Add(30 * time.Second)})
		work, cancel := UntilDeadline(t.Context(), drain, 2*time.Second)
		defer cancel()
		<-work.Done()
		if took := time.Since(start); took != 28*time.Second || !errors.Is(context.Cause(work), ErrDeadline) {
			t.Errorf("work ended after %v with %v, want 28s and ErrDeadline", took, context.Cause(work))
		}
	})
}

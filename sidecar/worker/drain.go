package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrDraining is the cause of a context returned by Client.Draining once
// draining has started; errors.Is(context.Cause(ctx), ErrDraining).
var ErrDraining = errors.New("sidecar: draining")

// ErrDeadline is the cause of a context from UntilDeadline that ended
// because the drain's deadline (less the margin) came.
var ErrDeadline = errors.New("sidecar: drain deadline")

// DrainingError is the cause of a context returned by Client.Draining: the
// state that started the drain. The drain's latest state (its deadline may
// move) is DrainingState's.
type DrainingError struct {
	State State
}

// Error describes the drain.
func (e *DrainingError) Error() string {
	if e.State.Deadline.IsZero() {
		return fmt.Sprintf("sidecar: draining (%s), no deadline", e.State.Reason)
	}
	return fmt.Sprintf("sidecar: draining (%s), deadline %s", e.State.Reason, e.State.Deadline.Format(time.RFC3339))
}

// Is reports whether target is ErrDraining.
func (e *DrainingError) Is(target error) bool { return target == ErrDraining }

// drainKey is the context key of a Draining context's *drainState.
type drainKey struct{}

// drainState is what the goroutine of one Client.Draining call has seen of
// the sidecar. mu guards every field.
type drainState struct {
	mu sync.Mutex
	// st is the latest state the sidecar showed.
	st State
	// started: a draining state was seen; over: a state that is not
	// draining was seen after that (the drain was called off), or the
	// watch ended.
	started, over bool
	// calledOff is closed when the sidecar said running (or unknown)
	// again after the drain started.
	calledOff chan struct{}
	// changed is closed and replaced at every change of the above.
	changed chan struct{}
}

// update records st and reports whether it started the drain or called it
// off.
func (d *drainState) update(st State) (started, off bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.over {
		return false, false
	}
	d.st = st
	switch {
	case st.Draining() && !d.started:
		d.started, started = true, true
	case !st.Draining() && d.started:
		d.over, off = true, true
		close(d.calledOff)
	}
	close(d.changed)
	d.changed = make(chan struct{})
	return started, off
}

// end records that the watch has ended (its context is done).
func (d *drainState) end() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.over {
		d.over = true
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

// snapshot returns the latest state, whether the drain stands (started and
// not called off) and a channel closed at the next change.
func (d *drainState) snapshot() (st State, draining, calledOff bool, changed <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	off := false
	select {
	case <-d.calledOff:
		off = true
	default:
	}
	return d.st, d.started && !off, off, d.changed
}

func drainStateOf(ctx context.Context) *drainState {
	d, _ := ctx.Value(drainKey{}).(*drainState)
	return d
}

// Draining returns a context that is cancelled when draining starts (its
// cause is a *DrainingError with the state that started it) or when ctx is
// done. Pull messages with it; a worker that sees it done stops pulling and
// finishes or hands back what it holds.
//
// A drain is not final: its deadline can move (a later notice is more
// urgent) and it can be called off (the notice was canceled). After the
// context is cancelled, its goroutine goes on following the sidecar until
// the drain is called off or ctx is done: DrainingState returns the drain's
// latest state, UntilDeadline follows its deadline, and WaitResumed returns
// once it is called off. A worker that should go back to work after a
// called-off drain calls WaitResumed and then Draining again; see the
// package example.
func (c *Client) Draining(ctx context.Context) context.Context {
	dctx, cancel := context.WithCancelCause(ctx)
	d := &drainState{calledOff: make(chan struct{}), changed: make(chan struct{})}
	// The watch outlives dctx: it ends when the drain is called off, or
	// with ctx (which also ends dctx).
	wctx, stop := context.WithCancel(ctx)
	go func() {
		defer d.end()
		defer stop()
		_ = c.Watch(wctx, func(st State) {
			started, off := d.update(st)
			if started {
				cancel(&DrainingError{State: st})
			}
			if off {
				stop()
			}
		})
		cancel(nil) // ctx is done, and so is dctx: release it
	}()
	return context.WithValue(dctx, drainKey{}, d)
}

// DrainingState returns the latest state of the drain that cancelled a
// context from Client.Draining, and true, while that drain stands: its
// deadline is the one to work to now, which may differ from the one that
// started the drain. It returns false if draining did not cancel the
// context, or if the drain has since been called off (work as usual; see
// WaitResumed).
func DrainingState(ctx context.Context) (State, bool) {
	var de *DrainingError
	if !errors.As(context.Cause(ctx), &de) {
		return State{}, false
	}
	d := drainStateOf(ctx)
	if d == nil {
		return de.State, true
	}
	st, draining, _, _ := d.snapshot()
	if !draining {
		return State{}, false
	}
	return st, true
}

// WaitResumed blocks until the drain that cancelled drain (a context from
// Client.Draining) is called off, the sidecar showing running (or unknown)
// again, and returns nil; or until ctx is done, and returns its cause. It
// returns an error at once if drain has not been cancelled by draining.
// A worker calls it after it has finished or handed back its work and said
// done, then calls Client.Draining again and goes back to pulling.
func WaitResumed(ctx, drain context.Context) error {
	var de *DrainingError
	if !errors.As(context.Cause(drain), &de) {
		return errors.New("sidecar: WaitResumed: the context was not cancelled by a drain")
	}
	d := drainStateOf(drain)
	if d == nil {
		return errors.New("sidecar: WaitResumed: the context is not one of Client.Draining")
	}
	select {
	case <-d.calledOff:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// UntilDeadline returns a context for work on a message already pulled: it
// is not cancelled when draining starts (the work may still finish), but
// ends margin before the drain's deadline, with cause ErrDeadline, so that
// work that cannot finish stops in time to be handed back. drain is a
// context from Client.Draining. The deadline followed is the drain's latest:
// when the sidecar moves it, the context ends margin before the new one;
// when the drain is called off before that, the context does not end for
// it. The returned context also ends with ctx or when cancel is called. A
// drain without a deadline (another tool is taking the node away) does not
// end it: finish the work promptly, or hand it back when ctx ends (the
// pod's SIGTERM).
func UntilDeadline(ctx, drain context.Context, margin time.Duration) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancelCause(ctx)
	d := drainStateOf(drain)
	if d == nil {
		// Not a context of Client.Draining: follow the deadline of its
		// cause, if a drain cancelled it.
		stop := context.AfterFunc(drain, func() {
			st, ok := DrainingState(drain)
			if !ok || st.Deadline.IsZero() {
				return
			}
			t := time.AfterFunc(time.Until(st.Deadline)-margin, func() { cancel(ErrDeadline) })
			context.AfterFunc(wctx, func() { t.Stop() })
		})
		return wctx, func() {
			stop()
			cancel(context.Canceled)
		}
	}
	go func() {
		for {
			st, draining, _, changed := d.snapshot()
			var fire <-chan time.Time
			var t *time.Timer
			if draining && !st.Deadline.IsZero() {
				t = time.NewTimer(time.Until(st.Deadline) - margin)
				fire = t.C
			}
			select {
			case <-fire:
				cancel(ErrDeadline)
				return
			case <-changed:
			case <-wctx.Done():
			}
			if t != nil {
				t.Stop()
			}
			if wctx.Err() != nil {
				return
			}
		}
	}()
	return wctx, func() { cancel(context.Canceled) }
}

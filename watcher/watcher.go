package watcher

import "context"

// Watcher watches one metadata source and reports what it announces.
//
// Watch sends one Notice on out for every change it sees: a notice ID seen
// for the first time, or a known ID whose State changed (active, then
// canceled). It never sends the same (ID, State) twice in a row and never
// sends a notice the source did not announce: malformed answers, error
// statuses and unreachable servers are logged, counted and retried, never
// turned into notices and never fatal.
//
// Watch blocks until ctx is canceled; a send on out blocks until the caller
// receives it or ctx is canceled. Watch returns nil once ctx is canceled and
// every goroutine it started has finished. It returns a non-nil error only
// when it cannot watch at all (for example the simulated source cannot listen
// on its address). Watch never closes out: the caller owns the channel and
// may close it after Watch returns. A Watcher is not meant to be watched by
// two callers at once.
type Watcher interface {
	Watch(ctx context.Context, out chan<- Notice) error
}

// Func adapts a function to the Watcher interface, like http.HandlerFunc.
type Func func(ctx context.Context, out chan<- Notice) error

// Watch calls f(ctx, out).
func (f Func) Watch(ctx context.Context, out chan<- Notice) error {
	return f(ctx, out)
}

// Send delivers n on out, blocking until the receiver takes it or ctx is
// done. It reports whether n was delivered.
func Send(ctx context.Context, out chan<- Notice, n Notice) bool {
	select {
	case out <- n:
		return true
	case <-ctx.Done():
		return false
	}
}

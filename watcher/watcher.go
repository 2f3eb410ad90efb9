package watcher

import (
	"context"
	"sync"
)

// Watcher watches one metadata source and reports what it announces.
//
// Watch sends one Notice on out for every change it sees: a notice ID seen
// for the first time, or a known ID whose State changed (active, then
// canceled). After its first complete read of every value it watches it
// sends the StateSynced marker, once. It never sends the same (ID, State)
// twice in a row and never
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

// Syncer sends a source's StateSynced marker once each of a fixed set of
// values has been read in full at least once. It is safe for concurrent use
// by the goroutines that read the values.
type Syncer struct {
	source Source
	want   int

	mu   sync.Mutex      // guards read and sent
	read map[string]bool // values read in full at least once
	sent bool
}

// NewSyncer returns a Syncer for source that waits for n values.
func NewSyncer(source Source, n int) *Syncer {
	return &Syncer{source: source, want: n, read: map[string]bool{}}
}

// Read records that value key was read in full and every notice it
// announced was sent. The call that completes the set sends the marker on
// out, blocking like Send; it reports false only when ctx ended first.
func (s *Syncer) Read(ctx context.Context, out chan<- Notice, key string) bool {
	s.mu.Lock()
	s.read[key] = true
	due := !s.sent && len(s.read) >= s.want
	if due {
		s.sent = true
	}
	s.mu.Unlock()
	if !due {
		return true
	}
	return Send(ctx, out, Synced(s.source))
}

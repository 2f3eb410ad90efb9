package main

import (
	"context"
	"sync"
	"time"
)

// Backoff paces a worker whose downstream fails, as Spotify's Pub/Sub
// consumers do: after a failure the worker pulls nothing for a delay that
// grows exponentially with the number of failures within a sliding window
// (Base × 2^(n-1), at most Max). Sleeping instead of retrying at once keeps
// the CPU quiet, so an autoscaler does not add machines for an outage
// downstream. Failures older than Window no longer count. It is safe for
// concurrent use.
type Backoff struct {
	Base, Max, Window time.Duration

	mu       sync.Mutex  // guards the fields below
	failures []time.Time // within Window, oldest first
	until    time.Time   // no pulling before then
}

// Fail records a failure at now and returns the delay it imposes.
func (b *Backoff) Fail(now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forget(now)
	b.failures = append(b.failures, now)
	d := b.Max
	if n := len(b.failures); n <= 32 {
		d = min(b.Base<<(n-1), b.Max)
	}
	if until := now.Add(d); until.After(b.until) {
		b.until = until
	}
	return d
}

// Failures returns how many failures are within the window at now.
func (b *Backoff) Failures(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forget(now)
	return len(b.failures)
}

// forget drops the failures older than the window. Called with b.mu held.
func (b *Backoff) forget(now time.Time) {
	i := 0
	for i < len(b.failures) && now.Sub(b.failures[i]) >= b.Window {
		i++
	}
	b.failures = b.failures[i:]
}

// Wait blocks until the delay of the last failures has passed, or ctx is
// done (it returns ctx's error then).
func (b *Backoff) Wait(ctx context.Context) error {
	b.mu.Lock()
	d := time.Until(b.until)
	b.mu.Unlock()
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

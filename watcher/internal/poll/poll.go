// Package poll holds the small pieces every metadata watcher loop shares:
// a jittered backoff, a context-aware sleep, and an error tracker that counts
// every failure but logs only the first of a run and the recovery after it.
package poll

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

// Sleep waits for d or until ctx is done, and reports whether the full d
// elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Backoff is an exponential backoff with full jitter between Min and Max.
// The zero value is not usable; set Min and Max. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns how long to wait before the next attempt and grows the
// interval for the one after.
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	}
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur *= 2
	if b.cur > b.Max {
		b.cur = b.Max
	}
	return d
}

// Reset starts the backoff again from Min.
func (b *Backoff) Reset() { b.cur = 0 }

// Errors counts every failure of a source in Metrics and logs only the first
// failure of a run for each path and the recovery that ends it, so a metadata
// server that is down for an hour logs two lines, not 3600. Safe for
// concurrent use.
type Errors struct {
	Source  watcher.Source
	Logger  *slog.Logger
	Metrics *watcher.Metrics

	mu      sync.Mutex
	failing map[string]int // consecutive failures per path; guarded by mu
}

// Fail records one failure reading path.
func (e *Errors) Fail(ctx context.Context, path, reason string, err error) {
	e.Metrics.Error(e.Source, reason)
	e.mu.Lock()
	if e.failing == nil {
		e.failing = make(map[string]int)
	}
	e.failing[path]++
	n := e.failing[path]
	e.mu.Unlock()
	level := slog.LevelDebug
	if n == 1 {
		level = slog.LevelWarn
	}
	e.Logger.Log(ctx, level, "metadata read failed", "path", path, "reason", reason, "failures", n, "error", err)
}

// OK records a successful read of path and logs the recovery if it ends a
// run of failures.
func (e *Errors) OK(ctx context.Context, path string) {
	e.Metrics.Success(e.Source, time.Now())
	e.mu.Lock()
	n := e.failing[path]
	delete(e.failing, path)
	e.mu.Unlock()
	if n > 0 {
		e.Logger.InfoContext(ctx, "metadata read recovered", "path", path, "failures", n)
	}
}

// Logger returns l, or a logger that discards everything when l is nil.
func Logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

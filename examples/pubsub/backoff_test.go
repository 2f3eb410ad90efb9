package main

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &Backoff{Base: 50 * time.Millisecond, Max: time.Second, Window: time.Minute}
		want := []time.Duration{50, 100, 200, 400, 800, 1000, 1000}
		for i, w := range want {
			start := time.Now()
			if d := b.Fail(start); d != w*time.Millisecond {
				t.Errorf("failure %d: delay %s, want %s", i+1, d, w*time.Millisecond)
			}
			if err := b.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
			if waited := time.Since(start); waited != w*time.Millisecond {
				t.Errorf("failure %d: waited %s, want %s", i+1, waited, w*time.Millisecond)
			}
		}
		// No failure for a window: the count starts over.
		time.Sleep(time.Minute)
		if n := b.Failures(time.Now()); n != 0 {
			t.Errorf("%d failures left after a quiet window", n)
		}
		if d := b.Fail(time.Now()); d != 50*time.Millisecond {
			t.Errorf("after a quiet window: delay %s, want 50ms", d)
		}
		// A drain does not wait for the backoff.
		b.Fail(time.Now())
		ctx, cancel := context.WithCancel(t.Context())
		go func() { time.Sleep(10 * time.Millisecond); cancel() }()
		start := time.Now()
		if err := b.Wait(ctx); err == nil || time.Since(start) != 10*time.Millisecond {
			t.Errorf("Wait with a cancelled context: %v after %s", err, time.Since(start))
		}
	})
}

// TestBackoffDoesNotSpin runs a loop that fails every call for ten
// seconds, as a worker whose downstream is down: with the backoff it makes
// a handful of calls, not thousands.
func TestBackoffDoesNotSpin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &Backoff{Base: 50 * time.Millisecond, Max: 30 * time.Second, Window: time.Minute}
		var calls atomic.Int64
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		for b.Wait(ctx) == nil {
			calls.Add(1)
			b.Fail(time.Now())
		}
		// 50ms, 100ms, ... 6.4s add up to 12.75s: 8 calls fit in 10s.
		if n := calls.Load(); n != 8 {
			t.Errorf("%d calls in 10s of failures, want 8", n)
		}
	})
}

package agent

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestCheckUntilOK: the first check waits less than the spread; failures
// (a busy apiserver, a missing permission) are reported and the check
// runs again with growing waits until it passes, then stops.
func TestCheckUntilOK(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		var at []time.Duration
		var reports []error
		calls := 0
		CheckUntilOK(t.Context(), 10*time.Second, 4*time.Second, func(context.Context) error {
			calls++
			at = append(at, time.Since(start))
			if calls <= 4 {
				return errors.New("context deadline exceeded")
			}
			return nil
		}, func(err error) { reports = append(reports, err) })
		if calls != 5 || len(reports) != 5 || reports[4] != nil {
			t.Fatalf("calls %d, reports %v: want 5 calls, 4 failures then nil", calls, reports)
		}
		if at[0] >= 10*time.Second {
			t.Errorf("first check after %v, want within the 10s spread", at[0])
		}
		for i := 1; i < len(at); i++ {
			gap := at[i] - at[i-1]
			limit := min(time.Second<<(i-1), 4*time.Second)
			if gap < limit/2 || gap > limit {
				t.Errorf("wait before check %d: %v, want between %v and %v", i+1, gap, limit/2, limit)
			}
		}
	})
}

// TestCheckUntilOKStops: a check that never passes stops with its context.
func TestCheckUntilOKStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		calls := 0
		CheckUntilOK(ctx, 0, 5*time.Second, func(context.Context) error {
			calls++
			return errors.New("RBAC: the agent may not create pods/eviction")
		}, func(error) {})
		if calls < 10 || calls > 20 {
			t.Errorf("%d checks in a minute with waits up to 5s, want 10 to 20", calls)
		}
	})
}

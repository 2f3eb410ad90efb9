package poll

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/wtest"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for i := range 20 {
		d := b.Next()
		ceil := min(100*time.Millisecond<<i, time.Second)
		if d < ceil/2 || d > ceil {
			t.Fatalf("attempt %d: %v not in [%v, %v]", i, d, ceil/2, ceil)
		}
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Fatalf("after Reset: %v", d)
	}
}

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Sleep(t.Context(), 3*time.Second) || time.Since(start) != 3*time.Second {
			t.Fatalf("slept %v", time.Since(start))
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start = time.Now()
		if Sleep(ctx, time.Hour) || time.Since(start) != time.Second {
			t.Fatalf("canceled sleep took %v", time.Since(start))
		}
	})
}

// TestErrorsLastSuccess: a failure leaves the source's last-success time
// where it was (the watcher is blind), a success moves it to now; the error
// counters of every reason exist at 0 once the source is watched.
func TestErrorsLastSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		m, err := watcher.NewMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		m.Watching(watcher.SourceAWS)
		e := &Errors{Source: watcher.SourceAWS, Logger: slog.New(slog.DiscardHandler), Metrics: m}
		last := func() float64 {
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() == "lastcall_watcher_last_success_timestamp_seconds" {
					return mf.GetMetric()[0].GetGauge().GetValue()
				}
			}
			return -1
		}
		if got := last(); got != -1 {
			t.Fatalf("last success %v before any read, want no series", got)
		}
		e.OK(t.Context(), "spot")
		first := float64(time.Now().UnixNano()) / 1e9
		if got := last(); got != first {
			t.Fatalf("last success %v, want %v", got, first)
		}
		time.Sleep(time.Minute)
		e.Fail(t.Context(), "spot", watcher.ReasonTimeout, errors.New("timeout"))
		if got := last(); got != first {
			t.Errorf("after a failure: last success %v, want it unchanged at %v", got, first)
		}
		e.OK(t.Context(), "spot")
		if got, want := last(), first+60; got != want {
			t.Errorf("after recovery: last success %v, want %v", got, want)
		}
		if got := wtest.Errors(reg, watcher.SourceAWS, watcher.ReasonHTTP404); got != 0 {
			t.Errorf("http_404 errors %v, want a series at 0", got)
		}
		n, err := testSeries(reg, "lastcall_watcher_errors_total")
		if err != nil || n != 11 {
			t.Errorf("%d error series (%v), want one per reason (11) from the start", n, err)
		}
	})
}

// testSeries counts the series of metric name in reg.
func testSeries(reg *prometheus.Registry, name string) (int, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric()), nil
		}
	}
	return 0, nil
}

// Package wtest holds test helpers shared by the watcher packages' tests: a
// logger that writes to the test log, a runner that owns a Watch goroutine
// for the life of a test, and readers for the watcher metrics.
package wtest

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/watcher"
)

// Logger returns a debug-level logger that writes to t.Log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(writer{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type writer struct{ t testing.TB }

func (w writer) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Metrics returns watcher metrics on a fresh private registry.
func Metrics(t testing.TB) (*watcher.Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := watcher.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// Run starts w.Watch in a goroutine that lives until the test ends; cleanup
// cancels it, waits for it to return and fails the test if it returned an
// error. Notices arrive on the returned buffered channel; the StateSynced
// marker does not (RunAll passes it on).
func Run(t testing.TB, w watcher.Watcher) chan watcher.Notice {
	t.Helper()
	all := RunAll(t, w)
	out := make(chan watcher.Notice, 64)
	ctx := t.Context()
	go func() {
		for {
			select {
			case n := <-all:
				if n.State == watcher.StateSynced {
					continue
				}
				select {
				case out <- n:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// RunAll is Run with the StateSynced marker passed on like a notice.
func RunAll(t testing.TB, w watcher.Watcher) chan watcher.Notice {
	t.Helper()
	out := make(chan watcher.Notice, 64)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Watch(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch returned %v, want nil", err)
		}
	})
	return out
}

// States receives n notices (markers included) from out and returns their
// states in order; it fails the test if the test ends first.
func States(t testing.TB, out <-chan watcher.Notice, n int) []watcher.State {
	t.Helper()
	var got []watcher.State
	for len(got) < n {
		select {
		case m := <-out:
			got = append(got, m.State)
		case <-t.Context().Done():
			t.Fatalf("got %v, then nothing", got)
		}
	}
	return got
}

// Errors returns lastcall_watcher_errors_total{source, reason} from reg.
func Errors(reg prometheus.Gatherer, source watcher.Source, reason string) float64 {
	return value(reg, "lastcall_watcher_errors_total", map[string]string{"source": string(source), "reason": reason})
}

// ErrorsAny returns the sum of lastcall_watcher_errors_total for source.
func ErrorsAny(reg prometheus.Gatherer, source watcher.Source) float64 {
	return value(reg, "lastcall_watcher_errors_total", map[string]string{"source": string(source)})
}

// Notices returns the sum of lastcall_watcher_notices_total for source.
func Notices(reg prometheus.Gatherer, source watcher.Source) float64 {
	return value(reg, "lastcall_watcher_notices_total", map[string]string{"source": string(source)})
}

func value(reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

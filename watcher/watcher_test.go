package watcher_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/wtest"
)

func TestDedup(t *testing.T) {
	var d watcher.Dedup
	steps := []struct {
		id    string
		state watcher.State
		want  bool
	}{
		{"a", watcher.StateActive, true},
		{"a", watcher.StateActive, false},
		{"b", watcher.StateActive, true},
		{"a", watcher.StateCanceled, true},
		{"a", watcher.StateCanceled, false},
		{"a", watcher.StateActive, true}, // a new event under the same ID
	}
	for i, s := range steps {
		if got := d.First(watcher.Notice{ID: s.id, State: s.state}); got != s.want {
			t.Fatalf("step %d (%s %s): First = %v", i, s.id, s.state, got)
		}
	}
	if s, ok := d.Last("a"); !ok || s != watcher.StateActive {
		t.Fatalf("Last(a) = %s, %v", s, ok)
	}
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1, err := watcher.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := watcher.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m1.Error(watcher.SourceGCE, watcher.ReasonTimeout)
	m2.Error(watcher.SourceGCE, watcher.ReasonTimeout)
	m2.Notice(watcher.Notice{Source: watcher.SourceGCE, Kind: watcher.KindPreemption, State: watcher.StateActive})
	if got := wtest.Errors(reg, watcher.SourceGCE, watcher.ReasonTimeout); got != 2 {
		t.Fatalf("errors = %v, want 2", got)
	}
	if got := wtest.Notices(reg, watcher.SourceGCE); got != 1 {
		t.Fatalf("notices = %v, want 1", got)
	}
	var nilMetrics *watcher.Metrics
	nilMetrics.Error(watcher.SourceAWS, watcher.ReasonNetwork) // no panic
}

func TestFuncAndSend(t *testing.T) {
	w := watcher.Func(func(ctx context.Context, out chan<- watcher.Notice) error {
		watcher.Send(ctx, out, watcher.Notice{ID: "x"})
		<-ctx.Done()
		return nil
	})
	out := wtest.Run(t, w)
	if n := <-out; n.ID != "x" {
		t.Fatalf("got %v", n)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if watcher.Send(ctx, make(chan watcher.Notice), watcher.Notice{}) {
		t.Fatal("Send reported delivery on a canceled context")
	}
}

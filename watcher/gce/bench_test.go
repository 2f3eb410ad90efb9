package gce

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

// BenchmarkDetection measures the time from the fake metadata server
// flipping instance/preempted to TRUE, while the watcher's hanging GET is
// open over loopback TCP, to the Notice arriving on the watcher's channel.
// It reports the 50th and 99th percentile in milliseconds.
func BenchmarkDetection(b *testing.B) {
	fake := newFake(fresh())
	srv := startServer(b, fake)

	var lat []time.Duration
	for b.Loop() {
		fake.set(PathPreempted, "FALSE")
		w, err := New(Options{Host: srv.addr, IgnoreMaintenance: true})
		if err != nil {
			b.Fatal(err)
		}
		before := fake.startedHanging(PathPreempted)
		ctx, cancel := context.WithCancel(b.Context())
		out := make(chan watcher.Notice, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = w.Watch(ctx, out)
		}()
		fake.waitStarted(ctx, PathPreempted, before+1)
		start := time.Now()
		fake.set(PathPreempted, "TRUE")
		n := <-out
		for n.State == watcher.StateSynced {
			n = <-out
		}
		lat = append(lat, time.Since(start))
		if n.Kind != watcher.KindPreemption {
			b.Fatalf("got %v", n)
		}
		cancel()
		<-done
	}
	slices.Sort(lat)
	b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
}

func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(0, min(len(sorted)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

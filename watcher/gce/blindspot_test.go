package gce

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"cloud.google.com/go/compute/metadata"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/wtest"
)

// outages are the lengths of the metadata outages the blind-spot tests go
// through: from shorter than the library's own retries (about 3 s at most)
// to well past them, at uneven steps so they land in different phases of the
// retry and backoff cycles.
var outages = func() []time.Duration {
	var ds []time.Duration
	for i := range 24 {
		ds = append(ds, 500*time.Millisecond+time.Duration(i)*613*time.Millisecond)
	}
	return ds
}()

// afterOutage runs one outage in a synctest bubble: once a hanging GET is
// open the server goes away for outage, then comes back with
// instance/preempted = TRUE; it returns the (fake) time from the server's
// return to the moment subscribe reported the preemption.
func afterOutage(t *testing.T, outage time.Duration, subscribe func(ctx context.Context, hc *http.Client, preempted chan<- struct{})) time.Duration {
	var latency time.Duration
	synctest.Test(t, func(t *testing.T) {
		fake := newFake(fresh())
		hc := &http.Client{Transport: &transport{base: memTransport{fake}, host: "metadata.test"}}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		preempted := make(chan struct{}, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			subscribe(ctx, hc, preempted)
		}()
		fake.waitHeld(ctx, PathPreempted)
		fake.setDown(true)
		time.Sleep(outage)
		fake.set(PathPreempted, "TRUE")
		back := time.Now()
		fake.setDown(false)
		<-preempted
		latency = time.Since(back)
		cancel()
		<-done
	})
	return latency
}

// TestBlindSpotAfterOutage measures, in fake time, how long after the
// metadata server comes back a preemption is reported: with the library's
// SubscribeWithContext (which sleeps a fixed 5 s after an error it has given
// up retrying) and with this package's loop (library retries plus a 50 ms-1 s
// backoff). The bound asserted for the watcher is the largest pause the
// library's own retry can draw (1.6 s) plus slack; Subscribe's numbers are
// logged, not asserted, as they describe the library.
func TestBlindSpotAfterOutage(t *testing.T) {
	var lib, ours []time.Duration
	for _, outage := range outages {
		lib = append(lib, afterOutage(t, outage, func(ctx context.Context, hc *http.Client, preempted chan<- struct{}) {
			c := metadata.NewWithOptions(&metadata.Options{Client: hc})
			_ = c.SubscribeWithContext(ctx, PathPreempted, func(ctx context.Context, v string, ok bool) error {
				if v == "TRUE" {
					preempted <- struct{}{}
				}
				return nil
			})
		}))
		ours = append(ours, afterOutage(t, outage, func(ctx context.Context, hc *http.Client, preempted chan<- struct{}) {
			w, err := New(Options{HTTPClient: hc, IgnoreMaintenance: true, Logger: wtest.Logger(t)})
			if err != nil {
				t.Error(err)
				return
			}
			out := make(chan watcher.Notice, 1)
			go func() {
				for n := range out {
					if n.Kind == watcher.KindPreemption {
						preempted <- struct{}{}
						return
					}
				}
			}()
			_ = w.Watch(ctx, out)
			close(out)
		}))
	}
	t.Logf("library SubscribeWithContext: after the server returns, preemption seen in max %v, median %v (outages %v..%v)",
		slices.Max(lib), median(lib), outages[0], outages[len(outages)-1])
	t.Logf("gce.Watcher: after the server returns, preemption seen in max %v, median %v", slices.Max(ours), median(ours))
	if m := slices.Max(ours); m > 1700*time.Millisecond {
		t.Errorf("watcher took %v after the server came back, want at most 1.7s", m)
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestLibrarySubscribeRedelivers shows the library quirk this package
// de-duplicates: after each server-side timeout of a hanging GET,
// SubscribeWithContext calls back with the same value again.
func TestLibrarySubscribeRedelivers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFake(fresh())
		fake.setTimeout(time.Second)
		hc := &http.Client{Transport: &transport{base: memTransport{fake}, host: "metadata.test"}}
		c := metadata.NewWithOptions(&metadata.Options{Client: hc})
		ctx, cancel := context.WithTimeout(t.Context(), 5500*time.Millisecond)
		defer cancel()
		var values []string
		_ = c.SubscribeWithContext(ctx, PathPreempted, func(ctx context.Context, v string, ok bool) error {
			values = append(values, v)
			return nil
		})
		if len(values) < 5 || slices.ContainsFunc(values, func(v string) bool { return v != "FALSE" }) {
			t.Fatalf("values %v: want FALSE delivered again after every 1s server timeout", values)
		}
	})
}

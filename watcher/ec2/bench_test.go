package ec2

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

// BenchmarkDetection measures, at the default poll interval (250 ms) with
// every path watched, the time from a spot interruption notice appearing in
// a loopback fake IMDS (at a random moment between two polls) to the Notice
// arriving on the watcher's channel. It reports percentiles in
// milliseconds; the bound is one interval plus one request. Then it runs one
// watcher at rest for 10 s and reports the requests it sent a second (token
// requests included), counted by the fake.
func BenchmarkDetection(b *testing.B) {
	fake := newFake()
	srv := httptest.NewServer(fake)
	b.Cleanup(srv.Close)
	var lat []time.Duration
	for b.Loop() {
		fake.unset(PathSpot)
		took, n := detectOnce(b, fake, srv.URL, PathSpot, itn, DefaultPollInterval)
		lat = append(lat, took)
		if n.Kind != watcher.KindSpotInterruption {
			b.Fatalf("got %v", n)
		}
	}
	slices.Sort(lat)
	b.Logf("slowest: %v", lat[max(0, len(lat)-5):])
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	b.ReportMetric(ms(sum/time.Duration(len(lat))), "mean-ms")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	b.ReportMetric(restRate(b, srv.URL, fake), "imds-req/s-at-rest")
}

// detectOnce starts a watcher with the default options against fake at url,
// waits for its first read of path, then, at a random moment within
// period, sets path to notice. It returns the time from then to the first
// Notice other than the sync, and that Notice; the watcher is stopped.
func detectOnce(b *testing.B, fake *fakeIMDS, url, path, notice string, period time.Duration) (time.Duration, watcher.Notice) {
	w, err := New(Options{Endpoint: url})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	out := make(chan watcher.Notice, 1)
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	before := fake.getsOf(path)
	go func() {
		defer close(done)
		_ = w.Watch(ctx, out)
	}()
	fake.waitGets(ctx, path, before+1)
	time.Sleep(rand.N(period))
	start := time.Now()
	fake.set(path, notice)
	n := <-out
	for n.State == watcher.StateSynced {
		n = <-out
	}
	return time.Since(start), n
}

// restRate runs a watcher with the default options against fake for 10 s
// after its first reads and returns the requests it sent a second.
func restRate(b *testing.B, url string, fake *fakeIMDS) float64 {
	const rest = 10 * time.Second
	fake.unset(PathSpot)
	w, err := New(Options{Endpoint: url})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	out := make(chan watcher.Notice, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Watch(ctx, out)
	}()
	if n := <-out; n.State != watcher.StateSynced {
		b.Fatalf("at rest: got %v", n)
	}
	before := len(fake.requests())
	time.Sleep(rest)
	n := len(fake.requests()) - before
	cancel()
	<-done
	return float64(n) / rest.Seconds()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkDetectionOther measures, as BenchmarkDetection does for the spot
// notice, the time from a notice appearing on each of the other paths to
// the Notice, at the default intervals. They share one request a second
// (RotateInterval), so each is read less often than PathSpot: PathASG
// every 2 s, the rest every 6 s. The notice appears at a random moment of
// the path's period; the bound is one period plus one request.
func BenchmarkDetectionOther(b *testing.B) {
	rotate := 4 * DefaultPollInterval
	for _, c := range []struct {
		name, path, rest, notice string
		kind                     watcher.Kind
		period                   time.Duration
	}{
		{"asg", PathASG, "InService", "Terminated", watcher.KindTermination, 2 * rotate},
		{"rebalance", PathRebalance, "", rebalance, watcher.KindRebalance, 6 * rotate},
		{"scheduled", PathScheduled, "[]", fmt.Sprintf(scheduled, "active"), watcher.KindMaintenance, 6 * rotate},
	} {
		b.Run(c.name, func(b *testing.B) {
			fake := newFake()
			srv := httptest.NewServer(fake)
			b.Cleanup(srv.Close)
			var lat []time.Duration
			for b.Loop() {
				if c.rest == "" {
					fake.unset(c.path)
				} else {
					fake.set(c.path, c.rest)
				}
				took, n := detectOnce(b, fake, srv.URL, c.path, c.notice, c.period)
				lat = append(lat, took)
				if n.Kind != c.kind {
					b.Fatalf("got %v, want a %s notice", n, c.kind)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
			b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
			b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
		})
	}
}

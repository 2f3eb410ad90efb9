package ec2

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/internal/ec2mock"
	"github.com/lastcall-dev/lastcall/watcher"
)

func startMockWatcher(t *testing.T, port string, opts Options) *env {
	t.Helper()
	opts.Endpoint = "http://127.0.0.1:" + port
	if opts.PollInterval == 0 {
		opts.PollInterval = 50 * time.Millisecond
	}
	return startWith(t, nil, opts)
}

func (e *env) nextWithin(t *testing.T, d time.Duration) watcher.Notice {
	t.Helper()
	select {
	case n := <-e.out:
		return n
	case <-time.After(d):
		t.Fatalf("no notice within %v", d)
	}
	return watcher.Notice{}
}

func (e *env) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case n := <-e.out:
		t.Fatalf("unexpected notice %v", n)
	case <-time.After(d):
	}
}

func TestMockSpot(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		action string
		id     string
	}{
		{"terminate at a fixed time", []string{"spot", "-a", "terminate", "-t", "2026-03-01T12:02:00Z"}, "terminate", "aws-spot-terminate-2026-03-01T12:02:00Z"},
		{"stop", []string{"spot", "-a", "stop", "-t", "2026-03-01T12:02:00Z"}, "stop", "aws-spot-stop-2026-03-01T12:02:00Z"},
		{"hibernate with the time moving on every read", []string{"spot", "-a", "hibernate"}, "hibernate", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := ec2mock.FreePort(t)
			ec2mock.Start(t, port, tc.args...)
			e := startMockWatcher(t, port, Options{Paths: []string{PathSpot}})
			n := e.nextWithin(t, 10*time.Second)
			if n.Kind != watcher.KindSpotInterruption || n.Action != tc.action || (tc.id != "" && n.ID != tc.id) {
				t.Fatalf("got %v action %s", n, n.Action)
			}
			if tc.id == "" && time.Until(n.Deadline) < 100*time.Second {
				t.Fatalf("deadline %v is not about 2 min ahead", n.Deadline)
			}
			e.quiet(t, time.Second)
			if got := errorsTotal(e); got != 0 {
				t.Fatalf("%v errors against the mock", got)
			}
		})
	}
}

func errorsTotal(e *env) float64 {
	var sum float64
	for _, r := range []string{watcher.ReasonNetwork, watcher.ReasonTimeout, watcher.ReasonMalformed, watcher.ReasonEmpty,
		watcher.ReasonHTTP401, watcher.ReasonHTTP403, watcher.ReasonHTTP404, watcher.ReasonHTTP429, watcher.ReasonHTTP5xx, watcher.ReasonHTTPOther, watcher.ReasonToken} {
		sum += errorsOf(e, r)
	}
	return sum
}

// TestMockAllEvents runs the mock with no subcommand: it serves a spot
// notice, a rebalance recommendation, a scheduled event and the ASG
// Terminated state at once. Each is one notice.
func TestMockAllEvents(t *testing.T) {
	port := ec2mock.FreePort(t)
	ec2mock.Start(t, port, "--mock-trigger-time", "2026-03-01T12:00:00Z")
	e := startMockWatcher(t, port, Options{})
	got := map[watcher.Kind]watcher.Notice{}
	for len(got) < 4 {
		n := e.nextWithin(t, 10*time.Second)
		if _, dup := got[n.Kind]; dup {
			t.Fatalf("second %s notice: %v", n.Kind, n)
		}
		got[n.Kind] = n
	}
	if n := got[watcher.KindMaintenance]; n.ID != "instance-event-1234567890abcdef0" || n.State != watcher.StateActive || n.Action != "system-reboot" {
		t.Errorf("scheduled event: %v %s", n, n.Action)
	}
	if n := got[watcher.KindTermination]; n.ID != IDASGTerminated {
		t.Errorf("asg: %v", n)
	}
	e.quiet(t, time.Second)
}

// TestMockScheduledCanceled runs the mock with an active scheduled event,
// stops it, and starts it again on the same port with the event canceled
// (then completed). The restarted mock does not know the old token: the SDK
// gets a 401, a new token, and the watcher reports the cancellation.
func TestMockScheduledCanceled(t *testing.T) {
	port := ec2mock.FreePort(t)
	m := ec2mock.Start(t, port, "events", "-o", "instance-stop", "-t", "active")
	e := startMockWatcher(t, port, Options{Paths: []string{PathScheduled, PathSpot}})
	n := e.nextWithin(t, 10*time.Second)
	if n.Kind != watcher.KindMaintenance || n.State != watcher.StateActive || n.Action != "instance-stop" {
		t.Fatalf("got %v", n)
	}
	m.Stop()
	ec2mock.Start(t, port, "events", "-o", "instance-stop", "-t", "canceled")
	n = e.nextWithin(t, 15*time.Second)
	if n.State != watcher.StateCanceled || n.ID != "instance-event-1234567890abcdef0" {
		t.Fatalf("got %v", n)
	}
	e.quiet(t, time.Second)
}

// TestMockASGLifecycle: the mock says InService first and Terminated after
// the delay; only Terminated is a notice, once.
func TestMockASGLifecycle(t *testing.T) {
	port := ec2mock.FreePort(t)
	ec2mock.Start(t, port, "asglifecycle", "--asg-termination-delay-sec", "2")
	e := startMockWatcher(t, port, Options{Paths: []string{PathASG}, ASGTerminationNotice: 30 * time.Second})
	n := e.nextWithin(t, 15*time.Second)
	if n.Kind != watcher.KindTermination || n.ID != IDASGTerminated || !n.Deadline.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("got %v", n)
	}
	e.quiet(t, time.Second)
}

// TestMockDelayedSpot: with -d the notice appears some seconds after the
// mock starts; until then the watcher sees 404 and sends nothing.
func TestMockDelayedSpot(t *testing.T) {
	port := ec2mock.FreePort(t)
	ec2mock.Start(t, port, "spot", "-d", "2", "-t", "2026-03-01T12:02:00Z")
	e := startMockWatcher(t, port, Options{Paths: []string{PathSpot}})
	e.quiet(t, time.Second)
	n := e.nextWithin(t, 15*time.Second)
	if n.ID != "aws-spot-terminate-2026-03-01T12:02:00Z" {
		t.Fatalf("got %v", n)
	}
}

// TestMockScheduledBlip puts a proxy in front of the real mock that answers
// the scheduled-events path with a 404, then an empty list, while the
// mock's event stands: the watcher reports the event once and does not
// cancel it.
func TestMockScheduledBlip(t *testing.T) {
	port := ec2mock.FreePort(t)
	ec2mock.Start(t, port, "events", "-o", "instance-stop", "-t", "active")
	target, err := url.Parse("http://127.0.0.1:" + port)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var blips atomic.Int32 // answers still to fake
	var reads atomic.Int32 // reads of the path
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/latest/meta-data/"+PathScheduled {
			reads.Add(1)
			switch blips.Add(-1) {
			case 1:
				http.NotFound(w, r)
				return
			case 0:
				_, _ = w.Write([]byte("[]"))
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	e := startWith(t, nil, Options{Endpoint: srv.URL, PollInterval: 50 * time.Millisecond, Paths: []string{PathScheduled}})
	n := e.nextWithin(t, 10*time.Second)
	if n.Kind != watcher.KindMaintenance || n.State != watcher.StateActive {
		t.Fatalf("got %v", n)
	}
	blips.Store(2)
	start := reads.Load()
	e.quiet(t, 2*time.Second)
	if got := reads.Load() - start; got < 4 {
		t.Fatalf("only %d reads of the path in 2 s", got)
	}
	if blips.Load() > 0 {
		t.Fatal("the faked answers were not served")
	}
}

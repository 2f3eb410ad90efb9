package gce

import (
	"cmp"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/wtest"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func fixedClock() time.Time { return t0 }

type env struct {
	fake    *fakeMetadata
	srv     *server
	metrics *watcher.Metrics
	reg     *prometheus.Registry
	out     chan watcher.Notice
}

// start runs a watcher against a fresh fake with the given values until the
// test ends.
func start(t *testing.T, values map[string]string, opts Options) *env {
	t.Helper()
	e := &env{fake: newFake(values), reg: prometheus.NewRegistry()}
	e.srv = startServer(t, e.fake)
	var err error
	if e.metrics, err = watcher.NewMetrics(e.reg); err != nil {
		t.Fatal(err)
	}
	opts.Host = e.srv.addr
	if opts.Clock == nil {
		opts.Clock = fixedClock
	}
	opts.Logger = wtest.Logger(t)
	opts.Metrics = e.metrics
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.out = wtest.Run(t, w)
	return e
}

func (e *env) next(t *testing.T) watcher.Notice {
	t.Helper()
	select {
	case n := <-e.out:
		return n
	case <-t.Context().Done():
		t.Fatal("test ended before a notice arrived")
	}
	return watcher.Notice{}
}

// settle waits until the watcher has gone back to a hanging GET on path at
// least rounds more times, then checks nothing else was sent meanwhile.
func (e *env) settle(t *testing.T, path string, rounds int) {
	t.Helper()
	// Short server-side timeouts from here on: the watcher keeps coming back
	// with the same last_etag and gets the same value again.
	e.fake.setTimeout(20 * time.Millisecond)
	if !e.fake.waitStarted(t.Context(), path, e.fake.startedHanging(path)+rounds) {
		t.Fatal("watcher never went back to a hanging GET")
	}
	select {
	case n := <-e.out:
		t.Fatalf("unexpected notice %v", n)
	default:
	}
}

func (e *env) errors(reason string) float64 {
	return wtest.Errors(e.reg, watcher.SourceGCE, reason)
}

func fresh() map[string]string {
	return map[string]string{PathPreempted: "FALSE", PathMaintenance: "NONE"}
}

func TestPreemption(t *testing.T) {
	for _, tc := range []struct {
		name   string
		notice time.Duration
		want   time.Duration
	}{
		{"default 30s notice", 0, 30 * time.Second},
		{"120s spot notice", 120 * time.Second, 120 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, fresh(), Options{PreemptionNotice: tc.notice, IgnoreMaintenance: true})
			e.fake.waitHeld(t.Context(), PathPreempted)
			e.fake.setTimeout(20 * time.Millisecond) // many server-side timeouts from now on
			e.fake.set(PathPreempted, "TRUE")
			n := e.next(t)
			want := watcher.Notice{
				Source: watcher.SourceGCE, Kind: watcher.KindPreemption, State: watcher.StateActive,
				ID: IDPreempted, Action: "TRUE", Detected: t0, Deadline: t0.Add(tc.want), Raw: []byte("TRUE"),
			}
			if n.String() != want.String() || !n.Detected.Equal(want.Detected) || string(n.Raw) != "TRUE" || n.Action != "TRUE" {
				t.Fatalf("got %+v, want %+v", n, want)
			}
			// The server now answers TRUE again after every timeout: no duplicate.
			e.settle(t, PathPreempted, 5)

			for _, r := range e.fake.seen() {
				if r.Flavor != "Google" {
					t.Errorf("request %s without Metadata-Flavor", r.Path)
				}
				if r.Hanging && (r.Query.Get("last_etag") == "" || r.Query.Get("timeout_sec") == "") {
					t.Errorf("hanging GET without last_etag or timeout_sec: %v", r.Query)
				}
			}
		})
	}
}

func TestPreemptedAtStart(t *testing.T) {
	v := fresh()
	v[PathPreempted] = "TRUE"
	e := start(t, v, Options{})
	if n := e.next(t); n.Kind != watcher.KindPreemption || n.State != watcher.StateActive {
		t.Fatalf("got %v", n)
	}
	e.settle(t, PathPreempted, 1)
}

func TestMaintenance(t *testing.T) {
	type step struct {
		value string
		want  watcher.State // "" = nothing sent
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"terminate then back to none", []step{
			{maintenanceTerminate, watcher.StateActive}, {maintenanceNone, watcher.StateCanceled}}},
		{"migration is informational", []step{
			{maintenanceMigrate, watcher.StateInformational}, {maintenanceTerminate, watcher.StateActive},
			{maintenanceNone, watcher.StateCanceled}, {maintenanceTerminate, watcher.StateActive}}},
		{"unknown values send nothing", []step{
			{"SOMETHING_NEW", ""}, {"", ""}, {maintenanceNone, ""}, {maintenanceTerminate, watcher.StateActive}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, fresh(), Options{})
			for _, s := range tc.steps {
				e.fake.waitHeld(t.Context(), PathMaintenance)
				e.fake.set(PathMaintenance, s.value)
				if s.want == "" {
					continue
				}
				n := e.next(t)
				if n.Kind != watcher.KindMaintenance || n.State != s.want || n.ID != IDMaintenance {
					t.Fatalf("after %q got %v, want state %s", s.value, n, s.want)
				}
				if s.want != watcher.StateCanceled && (n.Action != s.value || !n.Deadline.Equal(t0.Add(60*time.Second))) {
					t.Fatalf("after %q got action %q deadline %v", s.value, n.Action, n.Deadline)
				}
			}
			e.settle(t, PathMaintenance, 1)
		})
	}
}

// TestFaults drives the fake through broken answers before the preemption:
// each is counted under its reason, none is fatal, none becomes a notice, and
// the one real preemption afterwards is sent exactly once.
func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  fault
		n      int // the library itself retries 5xx and 429 five times
		reason string
		rt     time.Duration // RequestTimeout; the library's own retries must fit in it
	}{
		{"503 beyond the library's retries", fault{status: http.StatusServiceUnavailable}, 7, watcher.ReasonHTTP5xx, 0},
		{"500", fault{status: http.StatusInternalServerError, body: "oops"}, 6, watcher.ReasonHTTP5xx, 0},
		{"429", fault{status: http.StatusTooManyRequests}, 6, watcher.ReasonHTTP429, 0},
		{"403", fault{status: http.StatusForbidden}, 2, watcher.ReasonHTTP403, 0},
		{"404", fault{status: http.StatusNotFound}, 2, watcher.ReasonHTTP404, 0},
		{"401", fault{status: http.StatusUnauthorized}, 1, watcher.ReasonHTTP401, 0},
		{"malformed value", fault{status: http.StatusOK, body: "{\"preempted\": true}"}, 1, watcher.ReasonMalformed, 0},
		{"empty body", fault{status: http.StatusOK, body: ""}, 1, watcher.ReasonMalformed, 0},
		{"slow answer", fault{delay: 2 * time.Second}, 1, watcher.ReasonTimeout, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(fresh())
			f.fail(PathPreempted, tc.n, tc.fault)
			e := startWithFake(t, f, Options{IgnoreMaintenance: true, RequestTimeout: cmp.Or(tc.rt, 10*time.Second), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
			e.fake.waitHeld(t.Context(), PathPreempted)
			if got := e.fake.pendingFaults(PathPreempted); got != 0 {
				t.Fatalf("%d faults not consumed", got)
			}
			if got := e.errors(tc.reason); got == 0 {
				t.Errorf("errors{reason=%s} = 0, want > 0", tc.reason)
			}
			select {
			case n := <-e.out:
				t.Fatalf("notice %v sent from a broken answer", n)
			default:
			}
			e.fake.set(PathPreempted, "TRUE")
			if n := e.next(t); n.Kind != watcher.KindPreemption {
				t.Fatalf("got %v", n)
			}
			e.settle(t, PathPreempted, 1)
		})
	}
}

func startWithFake(t *testing.T, f *fakeMetadata, opts Options) *env {
	t.Helper()
	e := &env{fake: f, reg: prometheus.NewRegistry()}
	e.srv = startServer(t, f)
	var err error
	if e.metrics, err = watcher.NewMetrics(e.reg); err != nil {
		t.Fatal(err)
	}
	opts.Host = e.srv.addr
	opts.Clock = fixedClock
	opts.Logger = wtest.Logger(t)
	opts.Metrics = e.metrics
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.out = wtest.Run(t, w)
	return e
}

// TestServerGoneAndBack stops the metadata server while a hanging GET is
// open, flips the value while it is away, and brings it back on the same
// port: the watcher reports the preemption once, and nothing while it was
// gone.
func TestServerGoneAndBack(t *testing.T) {
	e := start(t, fresh(), Options{IgnoreMaintenance: true, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	e.fake.waitHeld(t.Context(), PathPreempted)
	e.srv.stop()
	for e.errors(watcher.ReasonNetwork) == 0 {
		select {
		case n := <-e.out:
			t.Fatalf("notice %v while the server was gone", n)
		case <-t.Context().Done():
			t.Fatal("no network error counted")
		case <-time.After(5 * time.Millisecond):
		}
	}
	e.fake.set(PathPreempted, "TRUE")
	e.srv.start()
	if n := e.next(t); n.Kind != watcher.KindPreemption {
		t.Fatalf("got %v", n)
	}
	e.settle(t, PathPreempted, 1)
}

func TestMissingFlavorIs403(t *testing.T) {
	f := newFake(fresh())
	srv := startServer(t, f)
	res, err := http.Get("http://" + srv.addr + "/computeMetadata/v1/" + PathPreempted)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", res.StatusCode)
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"client timeout", Options{HTTPClient: &http.Client{Timeout: time.Second}}},
		{"negative notice", Options{PreemptionNotice: -time.Second}},
		{"sub-second wait", Options{WaitTimeout: 500 * time.Millisecond}},
		{"backoff bounds", Options{MinBackoff: time.Second, MaxBackoff: time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.opts); err == nil {
				t.Fatal("New accepted bad options")
			}
		})
	}
}

// The synced marker comes once both values have been read, after the
// notices they announced, and not while a read keeps failing.
func TestSyncedAfterBothValues(t *testing.T) {
	f := newFake(fresh())
	f.set(PathPreempted, "TRUE")
	f.fail(PathMaintenance, 3, fault{status: http.StatusServiceUnavailable})
	srv := startServer(t, f)
	w, err := New(Options{Host: srv.addr, Clock: fixedClock, Logger: wtest.Logger(t), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	out := wtest.RunAll(t, w)
	got := wtest.States(t, out, 2)
	if got[0] != watcher.StateActive || got[1] != watcher.StateSynced {
		t.Fatalf("got %v, want the preemption, then the marker", got)
	}
	if left := f.pendingFaults(PathMaintenance); left != 0 {
		t.Errorf("marker sent with %d failing reads of %s still to come", left, PathMaintenance)
	}
	f.set(PathMaintenance, "MIGRATE_ON_HOST_MAINTENANCE")
	select {
	case n := <-out:
		if n.State == watcher.StateSynced {
			t.Fatal("marker sent twice")
		}
	case <-time.After(time.Second):
		t.Fatal("no informational notice")
	}
}

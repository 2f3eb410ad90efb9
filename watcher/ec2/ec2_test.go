package ec2

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/wtest"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	itn       = `{"action": "terminate", "time": "2026-03-01T12:02:00Z"}`
	rebalance = `{"noticeTime": "2026-03-01T11:59:00Z"}`
	scheduled = `[{"Code": "system-reboot", "Description": "scheduled reboot", "EventId": "instance-event-0d59937288b749b32", "NotBefore": "1 Mar 2026 12:30:00 GMT", "NotAfter": "1 Mar 2026 12:47:23 GMT", "State": "%s"}]`
)

type env struct {
	fake *fakeIMDS
	reg  *prometheus.Registry
	out  chan watcher.Notice
}

// start runs a watcher against fake over loopback HTTP until the test ends.
func start(t *testing.T, fake *fakeIMDS, opts Options) *env {
	t.Helper()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	if opts.Endpoint == "" {
		opts.Endpoint = srv.URL
	}
	return startWith(t, fake, opts)
}

func startWith(t *testing.T, fake *fakeIMDS, opts Options) *env {
	t.Helper()
	m, reg := wtest.Metrics(t)
	if opts.PollInterval == 0 {
		opts.PollInterval = 5 * time.Millisecond
	}
	if opts.Clock == nil {
		opts.Clock = func() time.Time { return t0 }
	}
	opts.Logger = wtest.Logger(t)
	opts.Metrics = m
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &env{fake: fake, reg: reg, out: wtest.Run(t, w)}
}

func errorsOf(e *env, reason string) float64 {
	return wtest.Errors(e.reg, watcher.SourceAWS, reason)
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

// settle waits for rounds more reads of path, then checks that nothing more
// was sent.
func (e *env) settle(t *testing.T, path string, rounds int) {
	t.Helper()
	if !e.fake.waitGets(t.Context(), path, e.fake.getsOf(path)+rounds) {
		t.Fatal("watcher stopped reading", path)
	}
	select {
	case n := <-e.out:
		t.Fatalf("unexpected notice %v", n)
	default:
	}
}

func TestNotices(t *testing.T) {
	for _, tc := range []struct {
		name  string
		path  string
		value string
		want  watcher.Notice
	}{
		{"spot terminate", PathSpot, itn, watcher.Notice{
			Kind: watcher.KindSpotInterruption, State: watcher.StateActive, Action: "terminate",
			ID: "aws-spot-terminate-2026-03-01T12:02:00Z", Deadline: t0.Add(2 * time.Minute)}},
		{"spot hibernate", PathSpot, `{"action":"hibernate","time":"2026-03-01T12:02:00+00:00"}`, watcher.Notice{
			Kind: watcher.KindSpotInterruption, State: watcher.StateActive, Action: "hibernate",
			ID: "aws-spot-hibernate-2026-03-01T12:02:00Z", Deadline: t0.Add(2 * time.Minute)}},
		{"rebalance", PathRebalance, rebalance, watcher.Notice{
			Kind: watcher.KindRebalance, State: watcher.StateActive, Action: "rebalance",
			ID: "aws-rebalance-2026-03-01T11:59:00Z"}},
		{"scheduled", PathScheduled, sprintf(scheduled, "active"), watcher.Notice{
			Kind: watcher.KindMaintenance, State: watcher.StateActive, Action: "system-reboot",
			ID: "instance-event-0d59937288b749b32", Deadline: t0.Add(30 * time.Minute)}},
		{"asg terminated", PathASG, "Terminated", watcher.Notice{
			Kind: watcher.KindTermination, State: watcher.StateActive, Action: "Terminated",
			ID: IDASGTerminated, Deadline: t0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			fake.set(tc.path, tc.value)
			e := start(t, fake, Options{})
			n := e.next(t)
			tc.want.Source, tc.want.Detected, tc.want.Raw = watcher.SourceAWS, t0, n.Raw
			if n.String() != tc.want.String() || n.Action != tc.want.Action || !n.Detected.Equal(t0) {
				t.Fatalf("got  %v %s\nwant %v %s", n, n.Action, tc.want, tc.want.Action)
			}
			e.settle(t, tc.path, 5)
		})
	}
}

func TestNothingWithout(t *testing.T) {
	fake := newFake()
	fake.set(PathASG, "InService")
	fake.set(PathScheduled, "[]")
	e := start(t, fake, Options{})
	for _, p := range []string{PathSpot, PathRebalance, PathScheduled, PathASG} {
		e.settle(t, p, 3)
	}
	if got := wtest.ErrorsAny(e.reg, watcher.SourceAWS); got != 0 {
		t.Fatalf("%v errors counted for 404s and quiet values", got)
	}
}

func TestScheduledCanceledAndCompleted(t *testing.T) {
	for _, end := range []string{"canceled", "completed"} {
		t.Run(end, func(t *testing.T) {
			fake := newFake()
			fake.set(PathScheduled, sprintf(scheduled, "active"))
			e := start(t, fake, Options{Paths: []string{PathScheduled}})
			if n := e.next(t); n.State != watcher.StateActive {
				t.Fatalf("got %v", n)
			}
			fake.set(PathScheduled, sprintf(scheduled, end))
			n := e.next(t)
			if n.State != watcher.StateCanceled || n.ID != "instance-event-0d59937288b749b32" {
				t.Fatalf("got %v", n)
			}
			e.settle(t, PathScheduled, 3)
		})
	}
}

// TestSpotTimeMoves: the metadata mock computes the notice time afresh on
// every read; it is still one notice.
func TestSpotTimeMoves(t *testing.T) {
	fake := newFake()
	fake.set(PathSpot, itn)
	e := start(t, fake, Options{Paths: []string{PathSpot}})
	e.next(t)
	fake.set(PathSpot, `{"action": "terminate", "time": "2026-03-01T12:02:07Z"}`)
	e.settle(t, PathSpot, 3)
	fake.set(PathSpot, `{"action": "stop", "time": "2026-03-01T12:02:07Z"}`)
	if n := e.next(t); n.Action != "stop" {
		t.Fatalf("got %v", n)
	}
}

// TestFaults sends broken answers before a real notice: each is counted
// under its reason, none is fatal or becomes a notice, and the real notice
// afterwards is sent once.
func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		path   string
		fault  fault
		n      int
		reason string
	}{
		{"malformed json", PathSpot, fault{status: 200, body: `{"action": "terminate", "time": `}, 2, watcher.ReasonMalformed},
		{"json of the wrong shape", PathScheduled, fault{status: 200, body: `{"EventId": "x"}`}, 2, watcher.ReasonMalformed},
		{"wrong time format", PathSpot, fault{status: 200, body: `{"action": "terminate", "time": "18 Sep 2017 08:22:00 GMT"}`}, 2, watcher.ReasonMalformed},
		{"scheduled time in RFC 3339", PathScheduled, fault{status: 200, body: `[{"EventId":"e-1","State":"active","Code":"system-reboot","NotBefore":"2026-03-01T12:30:00Z"}]`}, 2, watcher.ReasonMalformed},
		{"unknown scheduled state", PathScheduled, fault{status: 200, body: `[{"EventId":"e-1","State":"pending","Code":"system-reboot","NotBefore":"1 Mar 2026 12:30:00 GMT"}]`}, 2, watcher.ReasonMalformed},
		{"empty body", PathSpot, fault{status: 200, body: ""}, 2, watcher.ReasonEmpty},
		{"empty asg state", PathASG, fault{status: 200, body: "\n"}, 2, watcher.ReasonEmpty},
		{"500", PathSpot, fault{status: 500}, 6, watcher.ReasonHTTP5xx},
		{"503", PathSpot, fault{status: 503}, 6, watcher.ReasonHTTP5xx},
		{"429", PathSpot, fault{status: 429}, 6, watcher.ReasonHTTP429},
		{"401 after a new token too", PathSpot, fault{status: 401}, 6, watcher.ReasonHTTP401},
		{"403", PathSpot, fault{status: 403}, 2, watcher.ReasonHTTP403},
		{"slow answer", PathSpot, fault{delay: time.Second}, 1, watcher.ReasonTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			fake.fail(tc.path, tc.n, tc.fault)
			rt := 10 * time.Second // room for the SDK's own retries
			if tc.fault.delay > 0 {
				rt = 300 * time.Millisecond
			}
			e := start(t, fake, Options{Paths: []string{tc.path}, RequestTimeout: rt})
			// Let the faults drain, then a real notice.
			e.settle(t, tc.path, tc.n+1)
			if got := wtest.Errors(e.reg, watcher.SourceAWS, tc.reason); got == 0 {
				t.Errorf("errors{reason=%s} = 0, want > 0", tc.reason)
			}
			want := watcher.KindSpotInterruption
			switch tc.path {
			case PathSpot:
				fake.set(PathSpot, itn)
			case PathScheduled:
				fake.set(PathScheduled, sprintf(scheduled, "active"))
				want = watcher.KindMaintenance
			case PathASG:
				fake.set(PathASG, "Terminated")
				want = watcher.KindTermination
			}
			if n := e.next(t); n.Kind != want {
				t.Fatalf("got %v", n)
			}
			e.settle(t, tc.path, 3)
		})
	}
}

// TestServerGoneAndBack takes the service away and brings it back on the
// same address, without the tokens it gave out: the watcher keeps polling,
// gets a new token and reports the notice that appeared meanwhile.
func TestServerGoneAndBack(t *testing.T) {
	fake := newFake()
	srv := httptest.NewServer(fake)
	addr := srv.Listener.Addr().String()
	e := startWith(t, fake, Options{Endpoint: srv.URL, Paths: []string{PathSpot}})
	e.settle(t, PathSpot, 2)
	srv.Close()
	for wtest.ErrorsAny(e.reg, watcher.SourceAWS) == 0 {
		select {
		case n := <-e.out:
			t.Fatalf("notice %v while the service was gone", n)
		case <-time.After(5 * time.Millisecond):
		}
	}
	fake.revoke()
	fake.set(PathSpot, itn)
	srv2 := httptest.NewUnstartedServer(fake)
	srv2.Listener.Close()
	ln, err := listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	srv2.Listener = ln
	srv2.Start()
	t.Cleanup(srv2.Close)
	if n := e.next(t); n.Kind != watcher.KindSpotInterruption {
		t.Fatalf("got %v", n)
	}
	e.settle(t, PathSpot, 3)
}

// TestTokenReused: one token serves many reads.
func TestTokenReused(t *testing.T) {
	fake := newFake()
	e := start(t, fake, Options{})
	e.settle(t, PathSpot, 20)
	if puts := fake.count(http.MethodPut, 0); puts != 1 {
		t.Fatalf("%d token requests for 20+ reads, want 1", puts)
	}
	for _, r := range fake.requests() {
		if r.Method == http.MethodPut && r.TTL == "" {
			t.Fatal("token request without a TTL header")
		}
		if r.Method == http.MethodGet && r.Token == "" {
			t.Fatal("read without a token")
		}
	}
}

// TestTokenRefresh runs the SDK's token handling in fake time. A token the
// service caps at 60 s is replaced after 54 s, before the service would
// refuse it (no 401 at all: without the watcher's margin the SDK would wait
// until 61 s and get 5 tokens in 5 min, not 6); a token the service forgets (a restart)
// draws one 401, after which the SDK fetches a new token and retries the
// same read, so the watcher sees no error.
func TestTokenRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFake()
		fake.maxTTL = 60 * time.Second
		e := startWith(t, fake, Options{Endpoint: "http://imds.test", HTTPClient: memClient{fake}, Paths: []string{PathSpot}, PollInterval: time.Second})
		time.Sleep(5*time.Minute + 500*time.Millisecond)
		synctest.Wait()
		if puts, unauth := fake.count(http.MethodPut, 200), fake.count(http.MethodGet, 401); puts != 6 || unauth != 0 {
			t.Fatalf("after 5 min with a 60 s token: %d tokens, %d 401s; want 6 and 0", puts, unauth)
		}

		fake.revoke()
		fake.set(PathSpot, itn)
		if n := e.next(t); n.Kind != watcher.KindSpotInterruption {
			t.Fatalf("got %v", n)
		}
		if puts, unauth := fake.count(http.MethodPut, 200), fake.count(http.MethodGet, 401); puts != 7 || unauth != 1 {
			t.Fatalf("after revoking: %d tokens, %d 401s; want 7 and 1", puts, unauth)
		}
		if got := wtest.ErrorsAny(e.reg, watcher.SourceAWS); got != 0 {
			t.Fatalf("%v errors counted; the SDK should have retried the 401", got)
		}
	})
}

// TestNoIMDSv1Fallback: when no token can be had (the token endpoint
// answers 403, 404 or 405, or is unreachable) the watcher never reads
// without one unless AllowIMDSv1 is set.
func TestNoIMDSv1Fallback(t *testing.T) {
	for _, code := range []int{403, 404, 405} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			fake := newFake()
			fake.allowV1 = true
			fake.putFails, fake.putCode = 1<<30, code
			fake.set(PathSpot, itn)
			e := start(t, fake, Options{Paths: []string{PathSpot}})
			for fake.count(http.MethodPut, 0) < 5 {
				e.settle(t, "none", 0)
				time.Sleep(5 * time.Millisecond)
			}
			if gets := fake.count(http.MethodGet, 0); gets != 0 {
				t.Fatalf("%d reads without a token", gets)
			}
			if wtest.Errors(e.reg, watcher.SourceAWS, watcher.ReasonToken) == 0 {
				t.Fatal("token failures not counted")
			}
		})
		t.Run(http.StatusText(code)+" allowed", func(t *testing.T) {
			fake := newFake()
			fake.allowV1 = true
			fake.putFails, fake.putCode = 1<<30, code
			fake.set(PathSpot, itn)
			e := start(t, fake, Options{Paths: []string{PathSpot}, AllowIMDSv1: true})
			if n := e.next(t); n.Kind != watcher.KindSpotInterruption {
				t.Fatalf("got %v", n)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	for _, opts := range []Options{{PollInterval: -1}, {Paths: []string{"iam/security-credentials/"}}} {
		if _, err := New(opts); err == nil {
			t.Errorf("New(%+v) accepted", opts)
		}
	}
}

// A scheduled event that AWS moves (same EventId, new NotBefore) is a new
// deadline; one that leaves the list (AWS moves canceled and completed
// events to the history) or shows in the history as canceled is over.
func TestScheduledMovedGoneOrInHistory(t *testing.T) {
	const id = "instance-event-0d59937288b749b32"
	moved := strings.Replace(sprintf(scheduled, "active"), "1 Mar 2026 12:30:00 GMT", "1 Mar 2026 14:00:00 GMT", 1)
	for _, tc := range []struct {
		name string
		end  func(f *fakeIMDS)
	}{
		{"gone from the list", func(f *fakeIMDS) { f.unset(PathScheduled) }},
		{"empty list", func(f *fakeIMDS) { f.set(PathScheduled, "[]") }},
		{"canceled in the history", func(f *fakeIMDS) { f.set(PathHistory, sprintf(scheduled, "canceled")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			fake.set(PathScheduled, sprintf(scheduled, "active"))
			e := start(t, fake, Options{Paths: []string{PathScheduled, PathHistory}})
			if n := e.next(t); n.State != watcher.StateActive || !n.Deadline.Equal(t0.Add(30*time.Minute)) {
				t.Fatalf("got %v", n)
			}
			fake.set(PathScheduled, moved)
			if n := e.next(t); n.State != watcher.StateActive || n.ID != id || !n.Deadline.Equal(t0.Add(2*time.Hour)) {
				t.Fatalf("moved event: got %v, want active again with the new NotBefore", n)
			}
			e.settle(t, PathScheduled, 3)
			tc.end(fake)
			if n := e.next(t); n.State != watcher.StateCanceled || n.ID != id {
				t.Fatalf("got %v, want the event canceled", n)
			}
			e.settle(t, PathScheduled, 3)
			e.settle(t, PathHistory, 3)
		})
	}
}

// The synced marker comes once, after the first full read of every path,
// and after the notices that read found.
func TestSyncedAfterFirstRead(t *testing.T) {
	fake := newFake()
	fake.set(PathSpot, itn)
	fake.fail(PathASG, 3, fault{status: http.StatusInternalServerError})
	m, _ := wtest.Metrics(t)
	w, err := New(Options{Endpoint: httptestURL(t, fake), PollInterval: 5 * time.Millisecond, Clock: func() time.Time { return t0 }, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	out := wtest.RunAll(t, w)
	got := wtest.States(t, out, 2)
	if got[0] != watcher.StateActive || got[1] != watcher.StateSynced {
		t.Fatalf("got %v, want the spot notice, then the marker", got)
	}
	if fake.getsOf(PathASG) < 4 {
		t.Errorf("marker sent after %d reads of %s; the first 3 failed", fake.getsOf(PathASG), PathASG)
	}
	e := &env{fake: fake, out: out}
	e.settle(t, PathSpot, 3) // once only
}

func httptestURL(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestRotation(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{PathRebalance, PathScheduled, PathHistory, PathASG}, []string{PathASG, PathRebalance, PathASG, PathScheduled, PathASG, PathHistory}},
		{[]string{PathASG}, []string{PathASG}},
		{[]string{PathScheduled, PathHistory}, []string{PathScheduled, PathHistory}},
		{[]string{PathASG, PathRebalance}, []string{PathASG, PathRebalance}},
	} {
		if got := rotation(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("rotation(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestDefaultReadRate runs a watcher at its defaults for a minute of fake
// time: the spot path is read every 250 ms, the others in turn once a
// second (the ASG state every other second), at most 5 requests in any
// second after the first read of every path, and one token serves them
// all.
func TestDefaultReadRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fake := newFake()
		startWith(t, fake, Options{Endpoint: "http://imds.test", HTTPClient: memClient{fake}, PollInterval: DefaultPollInterval})
		start := time.Now()
		time.Sleep(time.Minute + time.Millisecond)
		synctest.Wait()
		want := map[string]int{PathSpot: 241, PathASG: 31, PathRebalance: 11, PathScheduled: 11, PathHistory: 11}
		for p, n := range want {
			if got := fake.getsOf(p); got != n {
				t.Errorf("%s read %d times in a minute, want %d", p, got, n)
			}
		}
		if puts := fake.count(http.MethodPut, 0); puts != 1 {
			t.Errorf("%d token requests, want 1", puts)
		}
		reqs := fake.requests()
		var prevSpot time.Time
		for i, r := range reqs {
			if r.Path == PathSpot {
				if !prevSpot.IsZero() && r.At.Sub(prevSpot) > DefaultPollInterval {
					t.Fatalf("spot read %v after the one before", r.At.Sub(prevSpot))
				}
				prevSpot = r.At
			}
			if !r.At.After(start) {
				continue // the first read of every path, at once
			}
			n := 0
			for _, q := range reqs[i:] {
				if q.At.Sub(r.At) < time.Second {
					n++
				}
			}
			if n > 5 {
				t.Fatalf("%d requests in the second from %v", n, r.At.Sub(start))
			}
		}
	})
}

// TestSpotSeenWithinInterval: in fake time, a spot notice appearing at any
// moment between two reads is sent at the next read, within PollInterval.
func TestSpotSeenWithinInterval(t *testing.T) {
	for _, offset := range []time.Duration{time.Millisecond, 100 * time.Millisecond, 249 * time.Millisecond} {
		synctest.Test(t, func(t *testing.T) {
			fake := newFake()
			e := startWith(t, fake, Options{Endpoint: "http://imds.test", HTTPClient: memClient{fake}, Paths: []string{PathSpot, PathASG}, PollInterval: DefaultPollInterval})
			time.Sleep(10*time.Second + offset)
			fake.set(PathSpot, itn)
			appeared := time.Now()
			n := e.next(t)
			if n.Kind != watcher.KindSpotInterruption {
				t.Fatalf("got %v", n)
			}
			if d := time.Since(appeared); d > DefaultPollInterval {
				t.Fatalf("notice appearing %v after a read sent %v later", offset, d)
			}
		})
	}
}

// A live scheduled event is not canceled by a read or two that miss it (a
// 404 or an empty list from a metadata service having a bad moment): only
// ScheduledGoneReads misses in a row, or the event shown canceled, end it.
// Before the fix one such read canceled the event for good: the next reads
// showing it active again were ignored.
func TestScheduledMissingReadsConfirmed(t *testing.T) {
	const id = "instance-event-0d59937288b749b32"
	for _, tc := range []struct {
		name   string
		faults []fault
	}{
		{"one 404", []fault{{status: http.StatusNotFound, body: "<html>404 - Not Found</html>"}}},
		{"one empty list", []fault{{status: http.StatusOK, body: "[]"}}},
		{"a 404 then an empty list", []fault{{status: http.StatusNotFound}, {status: http.StatusOK, body: "[]"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			fake.set(PathScheduled, sprintf(scheduled, "active"))
			e := start(t, fake, Options{Paths: []string{PathScheduled}})
			if n := e.next(t); n.State != watcher.StateActive || n.ID != id {
				t.Fatalf("got %v", n)
			}
			for _, f := range tc.faults {
				fake.fail(PathScheduled, 1, f)
			}
			e.quiet(t, 500*time.Millisecond) // about 100 reads
			// Still live: its cancellation is reported.
			fake.set(PathScheduled, sprintf(scheduled, "canceled"))
			if n := e.next(t); n.State != watcher.StateCanceled || n.ID != id {
				t.Fatalf("got %v, want the event canceled", n)
			}
			e.settle(t, PathScheduled, 3)
		})
	}
	t.Run("missing from ScheduledGoneReads reads in a row", func(t *testing.T) {
		fake := newFake()
		fake.set(PathScheduled, sprintf(scheduled, "active"))
		e := start(t, fake, Options{Paths: []string{PathScheduled}, ScheduledGoneReads: 5})
		if n := e.next(t); n.State != watcher.StateActive {
			t.Fatalf("got %v", n)
		}
		before := fake.getsOf(PathScheduled)
		fake.unset(PathScheduled)
		n := e.next(t)
		if n.State != watcher.StateCanceled || n.ID != id {
			t.Fatalf("got %v, want the event canceled", n)
		}
		if reads := fake.getsOf(PathScheduled) - before; reads < 5 {
			t.Errorf("canceled after %d reads without the event, want at least 5", reads)
		}
		// It comes back: active again.
		fake.set(PathScheduled, sprintf(scheduled, "active"))
		if n := e.next(t); n.State != watcher.StateActive || n.ID != id {
			t.Fatalf("got %v, want the event active again", n)
		}
	})
}

package azure

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/wtest"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeIMDS serves Azure scheduled events and the compute name; it answers
// 400 without the Metadata: true header, records everything it saw, and can
// fail the next requests.
type fakeIMDS struct {
	mu      sync.Mutex
	doc     string
	name    string
	faults  []fault
	seen    []seenRequest
	changed chan struct{}
}

type fault struct {
	status int
	body   string
	delay  time.Duration
}

type seenRequest struct {
	Method, Path, Query, Metadata, Body string
	Status                              int
}

func newFake() *fakeIMDS {
	return &fakeIMDS{doc: `{"DocumentIncarnation": 0, "Events": []}`, name: "vm-1", changed: make(chan struct{})}
}

func (f *fakeIMDS) setDoc(incarnation int, events ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.doc = fmt.Sprintf(`{"DocumentIncarnation": %d, "Events": [%s]}`, incarnation, strings.Join(events, ","))
}

func (f *fakeIMDS) fail(n int, ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.faults = append(f.faults, ft)
	}
}

func (f *fakeIMDS) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.seen...)
}

func (f *fakeIMDS) gets() int {
	n := 0
	for _, r := range f.requests() {
		if r.Method == http.MethodGet && r.Path == pathEvents {
			n++
		}
	}
	return n
}

func (f *fakeIMDS) waitGets(t *testing.T, n int) {
	t.Helper()
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		if f.gets() >= n {
			return
		}
		select {
		case <-ch:
		case <-t.Context().Done():
			t.Fatal("no more reads")
		}
	}
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := seenRequest{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Metadata: r.Header.Get("Metadata"), Body: string(body)}
	reply := func(status int, body string) {
		rec.Status = status
		f.mu.Lock()
		f.seen = append(f.seen, rec)
		close(f.changed)
		f.changed = make(chan struct{})
		f.mu.Unlock()
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
	if rec.Metadata != "true" {
		reply(http.StatusBadRequest, `{"error": "Bad request. Required metadata header not specified"}`)
		return
	}
	f.mu.Lock()
	var ft *fault
	if r.URL.Path == pathEvents && r.Method == http.MethodGet && len(f.faults) > 0 {
		ft = &f.faults[0]
		f.faults = f.faults[1:]
	}
	doc, name := f.doc, f.name
	f.mu.Unlock()
	if ft != nil {
		if ft.delay > 0 {
			select {
			case <-time.After(ft.delay):
			case <-r.Context().Done():
			}
		}
		if ft.status != 0 {
			reply(ft.status, ft.body)
			return
		}
	}
	switch {
	case r.URL.Path == pathName && r.URL.Query().Get("format") == "text":
		reply(http.StatusOK, name)
	case r.URL.Path == pathEvents && r.URL.Query().Get("api-version") == "":
		reply(http.StatusBadRequest, `{"error": "Bad request. api-version was not specified"}`)
	case r.URL.Path == pathEvents && r.Method == http.MethodGet:
		reply(http.StatusOK, doc)
	case r.URL.Path == pathEvents && r.Method == http.MethodPost:
		reply(http.StatusOK, "")
	default:
		reply(http.StatusNotFound, "")
	}
}

func ev(id, typ, status, notBefore string, resources ...string) string {
	rs, _ := json.Marshal(resources)
	return fmt.Sprintf(`{"EventId": %q, "EventStatus": %q, "EventType": %q, "ResourceType": "VirtualMachine", "Resources": %s, "NotBefore": %q, "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}`,
		id, status, typ, rs, notBefore)
}

const notBefore = "Sun, 01 Mar 2026 12:00:30 GMT"

type env struct {
	fake *fakeIMDS
	srv  *httptest.Server
	w    *Watcher
	reg  *prometheus.Registry
	out  chan watcher.Notice
}

func start(t *testing.T, fake *fakeIMDS, opts Options) *env {
	t.Helper()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	m, reg := wtest.Metrics(t)
	opts.Endpoint = srv.URL
	if opts.PollInterval == 0 {
		opts.PollInterval = 5 * time.Millisecond
	}
	opts.Clock = func() time.Time { return t0 }
	opts.Logger = wtest.Logger(t)
	opts.Metrics = m
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &env{fake: fake, srv: srv, w: w, reg: reg, out: wtest.Run(t, w)}
}

func (e *env) next(t *testing.T) watcher.Notice {
	t.Helper()
	select {
	case n := <-e.out:
		return n
	case <-t.Context().Done():
		t.Fatal("no notice")
	}
	return watcher.Notice{}
}

func (e *env) settle(t *testing.T, rounds int) {
	t.Helper()
	e.fake.waitGets(t, e.fake.gets()+rounds)
	select {
	case n := <-e.out:
		t.Fatalf("unexpected notice %v", n)
	default:
	}
}

func TestEvents(t *testing.T) {
	for _, tc := range []struct {
		name   string
		event  string
		kind   watcher.Kind
		state  watcher.State
		expect time.Time
	}{
		{"preempt", ev("e-1", "Preempt", "Scheduled", notBefore, "vm-1"), watcher.KindPreemption, watcher.StateActive, t0.Add(30 * time.Second)},
		{"preempt started", ev("e-1", "Preempt", "Started", "", "vm-1"), watcher.KindPreemption, watcher.StateActive, t0},
		{"terminate", ev("e-1", "Terminate", "Scheduled", notBefore, "VM-1"), watcher.KindTermination, watcher.StateActive, t0.Add(30 * time.Second)},
		{"reboot", ev("e-1", "Reboot", "Scheduled", notBefore, "vm-0", "vm-1"), watcher.KindMaintenance, watcher.StateActive, t0.Add(30 * time.Second)},
		{"redeploy", ev("e-1", "Redeploy", "Scheduled", notBefore, "vm-1"), watcher.KindMaintenance, watcher.StateActive, t0.Add(30 * time.Second)},
		{"freeze", ev("e-1", "Freeze", "Scheduled", notBefore, "vm-1"), watcher.KindMaintenance, watcher.StateInformational, t0.Add(30 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			fake.setDoc(1, ev("e-0", "Preempt", "Scheduled", notBefore, "vm-2"), tc.event)
			e := start(t, fake, Options{})
			n := e.next(t)
			if n.Source != watcher.SourceAzure || n.Kind != tc.kind || n.State != tc.state || n.ID != "e-1" || !n.Deadline.Equal(tc.expect) {
				t.Fatalf("got %v", n)
			}
			e.settle(t, 5)
			for _, r := range fake.requests() {
				if r.Metadata != "true" {
					t.Errorf("request %s without Metadata: true", r.Path)
				}
				if r.Path == pathEvents && !strings.Contains(r.Query, "api-version=2020-07-01") {
					t.Errorf("request %s?%s", r.Path, r.Query)
				}
			}
		})
	}
}

func TestOtherVMsIgnored(t *testing.T) {
	fake := newFake()
	fake.setDoc(1, ev("e-0", "Preempt", "Scheduled", notBefore, "vm-2"), ev("e-2", "Terminate", "Scheduled", notBefore))
	e := start(t, fake, Options{VMName: "vm-1"})
	e.settle(t, 5)
	for _, r := range fake.requests() {
		if r.Path == pathName {
			t.Fatal("asked for the VM name although it was given")
		}
	}
}

func TestMaintenanceOver(t *testing.T) {
	fake := newFake()
	fake.setDoc(1, ev("e-1", "Reboot", "Scheduled", notBefore, "vm-1"))
	e := start(t, fake, Options{})
	if n := e.next(t); n.State != watcher.StateActive {
		t.Fatalf("got %v", n)
	}
	// The same incarnation without the event (a broken answer) says nothing.
	fake.setDoc(1)
	e.settle(t, 3)
	fake.setDoc(2)
	if n := e.next(t); n.State != watcher.StateCanceled || n.ID != "e-1" {
		t.Fatalf("got %v", n)
	}
	e.settle(t, 3)
}

func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  fault
		reason string
	}{
		{"malformed json", fault{status: 200, body: `{"DocumentIncarnation": 1, "Events": [`}, watcher.ReasonMalformed},
		{"wrong time format", fault{status: 200, body: `{"DocumentIncarnation": 1, "Events": [` + ev("e-9", "Preempt", "Scheduled", "2026-03-01T12:00:30Z", "vm-1") + `]}`}, watcher.ReasonMalformed},
		{"unknown type", fault{status: 200, body: `{"DocumentIncarnation": 1, "Events": [` + ev("e-9", "Vaporize", "Scheduled", notBefore, "vm-1") + `]}`}, watcher.ReasonMalformed},
		{"empty body", fault{status: 200, body: ""}, watcher.ReasonEmpty},
		{"500", fault{status: 500}, watcher.ReasonHTTP5xx},
		{"410", fault{status: 410}, watcher.ReasonHTTPOther},
		{"429", fault{status: 429}, watcher.ReasonHTTP429},
		{"401", fault{status: 401}, watcher.ReasonHTTP401},
		{"slow", fault{delay: time.Second}, watcher.ReasonTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := newFake()
			fake.fail(3, tc.fault)
			e := start(t, fake, Options{RequestTimeout: 200 * time.Millisecond, FirstRequestTimeout: 200 * time.Millisecond})
			e.settle(t, 4)
			if got := wtest.Errors(e.reg, watcher.SourceAzure, tc.reason); got == 0 {
				t.Fatalf("errors{reason=%s} = 0", tc.reason)
			}
			fake.setDoc(2, ev("e-1", "Preempt", "Scheduled", notBefore, "vm-1"))
			if n := e.next(t); n.ID != "e-1" {
				t.Fatalf("got %v", n)
			}
			e.settle(t, 3)
		})
	}
}

func TestServerGoneAndBack(t *testing.T) {
	fake := newFake()
	e := start(t, fake, Options{})
	e.settle(t, 2)
	addr := e.srv.Listener.Addr().String()
	e.srv.CloseClientConnections()
	e.srv.Close()
	for wtest.ErrorsAny(e.reg, watcher.SourceAzure) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	fake.setDoc(3, ev("e-1", "Preempt", "Scheduled", notBefore, "vm-1"))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fake}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if n := e.next(t); n.ID != "e-1" {
		t.Fatalf("got %v", n)
	}
}

func TestVMNameRetried(t *testing.T) {
	fake := newFake()
	fake.name = "" // an empty name is not a name
	fake.setDoc(1, ev("e-1", "Preempt", "Scheduled", notBefore, "vm-7"))
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	m, reg := wtest.Metrics(t)
	w, err := New(Options{Endpoint: srv.URL, PollInterval: 5 * time.Millisecond, Metrics: m, Logger: wtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	out := wtest.Run(t, w)
	for wtest.Errors(reg, watcher.SourceAzure, watcher.ReasonMalformed) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	fake.mu.Lock()
	fake.name = "vm-7\n"
	fake.mu.Unlock()
	if n := <-out; n.ID != "e-1" {
		t.Fatalf("got %v", n)
	}
}

func TestAcknowledge(t *testing.T) {
	fake := newFake()
	e := start(t, fake, Options{})
	if err := e.w.Acknowledge(t.Context(), "e-1"); err != nil {
		t.Fatal(err)
	}
	var acks []seenRequest
	for _, r := range fake.requests() {
		if r.Method == http.MethodPost {
			acks = append(acks, r)
		}
	}
	if len(acks) != 1 || acks[0].Body != `{"StartRequests":[{"EventId":"e-1"}]}` || acks[0].Metadata != "true" || !strings.Contains(acks[0].Query, "api-version=") {
		t.Fatalf("acks %+v", acks)
	}
	if err := e.w.Acknowledge(t.Context(), ""); err == nil {
		t.Fatal("empty ID accepted")
	}
	e.srv.Close()
	if err := e.w.Acknowledge(t.Context(), "e-1"); err == nil {
		t.Fatal("no error with the service gone")
	}
}

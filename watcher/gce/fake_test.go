package gce

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeMetadata reproduces the parts of the GCE metadata server the watcher
// relies on: Metadata-Flavor: Google required (403 without), an ETag on every
// value, wait_for_change with last_etag hanging until the value changes or a
// server-side timeout passes (then the same value again), 404 for unknown
// paths. It records every request for the test goroutine to inspect and can
// be told to fail the next requests.
type fakeMetadata struct {
	mu       sync.Mutex
	values   map[string]string
	changed  chan struct{}      // closed and replaced on every change
	timeout  time.Duration      // server-side cap of a hanging GET
	faults   map[string][]fault // next answers per path, consumed in order
	requests []fakeRequest      // what the server saw
	held     map[string]int     // hanging GETs being held now, per path
	started  map[string]int     // hanging GETs held so far, per path
	heldCh   chan struct{}      // closed and replaced when held or started change
	down     bool               // in-memory transport: refuse connections
	drop     chan struct{}      // closed when the server goes down: in-flight requests fail
}

type fault struct {
	status int           // 0: answer normally after delay
	body   string        // body for a 200 fault (no ETag) or error status
	delay  time.Duration // wait before answering
}

type fakeRequest struct {
	Path    string
	Query   url.Values
	Flavor  string
	Status  int
	Hanging bool
}

func newFake(values map[string]string) *fakeMetadata {
	return &fakeMetadata{
		values:  values,
		changed: make(chan struct{}),
		timeout: time.Minute,
		faults:  make(map[string][]fault),
		held:    make(map[string]int),
		started: make(map[string]int),
		heldCh:  make(chan struct{}),
		drop:    make(chan struct{}),
	}
}

func etagOf(v string) string {
	h := fnv.New64a()
	h.Write([]byte(v))
	return strconv.FormatUint(h.Sum64(), 16)
}

func (f *fakeMetadata) set(path, v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[path] = v
	close(f.changed)
	f.changed = make(chan struct{})
}

// setTimeout changes the server-side timeout, for hanging GETs being held
// too.
func (f *fakeMetadata) setTimeout(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.timeout = d
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeMetadata) fail(path string, n int, ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.faults[path] = append(f.faults[path], ft)
	}
}

func (f *fakeMetadata) pendingFaults(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.faults[path])
}

// waitHeld blocks until the server holds a hanging GET for path, or ctx
// ends; it reports which.
func (f *fakeMetadata) waitHeld(ctx context.Context, path string) bool {
	return f.waitFor(ctx, func() bool { return f.held[path] > 0 })
}

// startedHanging returns how many hanging GETs for path the server has held.
func (f *fakeMetadata) startedHanging(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started[path]
}

// waitStarted blocks until the server has held n hanging GETs for path.
func (f *fakeMetadata) waitStarted(ctx context.Context, path string, n int) bool {
	return f.waitFor(ctx, func() bool { return f.started[path] >= n })
}

func (f *fakeMetadata) waitFor(ctx context.Context, cond func() bool) bool {
	for {
		f.mu.Lock()
		ok, ch := cond(), f.heldCh
		f.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (f *fakeMetadata) hold(path string, delta int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held[path] += delta
	if delta > 0 {
		f.started[path]++
	}
	close(f.heldCh)
	f.heldCh = make(chan struct{})
}

func (f *fakeMetadata) seen() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

func (f *fakeMetadata) record(r fakeRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r)
}

func (f *fakeMetadata) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	q := r.URL.Query()
	rec := fakeRequest{Path: path, Query: q, Flavor: r.Header.Get("Metadata-Flavor"), Hanging: q.Get("wait_for_change") == "true"}
	w.Header().Set("Metadata-Flavor", "Google")
	if rec.Flavor != "Google" {
		rec.Status = http.StatusForbidden
		f.record(rec)
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}

	f.mu.Lock()
	var ft *fault
	if fs := f.faults[path]; len(fs) > 0 {
		ft = &fs[0]
		f.faults[path] = fs[1:]
	}
	f.mu.Unlock()
	if ft != nil {
		if ft.delay > 0 {
			select {
			case <-time.After(ft.delay):
			case <-r.Context().Done():
				rec.Status = -1
				f.record(rec)
				return
			}
		}
		if ft.status != 0 {
			rec.Status = ft.status
			f.record(rec)
			if ft.status == http.StatusOK {
				fmt.Fprint(w, ft.body) // no ETag
				return
			}
			http.Error(w, ft.body, ft.status)
			return
		}
	}

	f.mu.Lock()
	v, ok := f.values[path]
	ch, timeout := f.changed, f.timeout
	f.mu.Unlock()
	if !ok {
		rec.Status = http.StatusNotFound
		f.record(rec)
		http.NotFound(w, r)
		return
	}
	if rec.Hanging {
		if s := q.Get("timeout_sec"); s != "" {
			if n, err := strconv.Atoi(s); err == nil && time.Duration(n)*time.Second < timeout {
				timeout = time.Duration(n) * time.Second
			}
		}
		last := q.Get("last_etag")
		if last == "" {
			last = etagOf(v) // without last_etag, wait for the next change
		}
		if etagOf(v) == last {
			f.hold(path, 1)
			defer f.hold(path, -1)
			started := time.Now()
			deadline := time.NewTimer(timeout)
			defer deadline.Stop()
		wait:
			for {
				select {
				case <-ch:
					f.mu.Lock()
					v, ok = f.values[path]
					ch = f.changed
					if f.timeout < timeout {
						timeout = f.timeout
						deadline.Reset(time.Until(started.Add(timeout)))
					}
					f.mu.Unlock()
					if !ok || etagOf(v) != last {
						break wait
					}
				case <-deadline.C:
					break wait
				case <-r.Context().Done():
					rec.Status = -1
					f.record(rec)
					return
				}
			}
			if !ok {
				rec.Status = http.StatusNotFound
				f.record(rec)
				http.NotFound(w, r)
				return
			}
		}
	}
	rec.Status = http.StatusOK
	f.record(rec)
	w.Header().Set("ETag", etagOf(v))
	w.Header().Set("Content-Type", "application/text")
	fmt.Fprint(w, v)
}

// server runs a fakeMetadata on a loopback port that survives stop and start,
// so a test can take the metadata server away and bring it back.
type server struct {
	t    testing.TB
	fake *fakeMetadata
	addr string
	mu   sync.Mutex
	srv  *httptest.Server
}

func startServer(t testing.TB, fake *fakeMetadata) *server {
	t.Helper()
	s := &server{t: t, fake: fake}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	s.t.Helper()
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.t.Fatalf("listen %s: %v", addr, err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: s.fake}}
	srv.Start()
	s.mu.Lock()
	s.srv = srv
	s.addr = ln.Addr().String()
	s.mu.Unlock()
}

func (s *server) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.CloseClientConnections()
		srv.Close()
	}
}

// memTransport serves requests from a handler in memory, so the watcher can
// run inside a testing/synctest bubble. When the fake is down it refuses the
// connection like a closed port.
type memTransport struct{ fake *fakeMetadata }

func (t memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.fake.mu.Lock()
	down, drop := t.fake.down, t.fake.drop
	t.fake.mu.Unlock()
	if down {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &syscallError{err: syscall.ECONNREFUSED}}
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		t.fake.ServeHTTP(rec, r.WithContext(ctx))
	}()
	select {
	case <-done:
	case <-drop:
		cancel()
		<-done
		return nil, &net.OpError{Op: "read", Net: "tcp", Err: &syscallError{err: syscall.ECONNRESET}}
	}
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	return rec.Result(), nil
}

// syscallError stands in for *os.SyscallError: it unwraps to the errno.
type syscallError struct{ err error }

func (e *syscallError) Error() string { return "connect: " + e.err.Error() }
func (e *syscallError) Unwrap() error { return e.err }

func (f *fakeMetadata) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if down && !f.down {
		close(f.drop)
		f.drop = make(chan struct{})
	}
	f.down = down
}

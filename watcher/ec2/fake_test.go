package ec2

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
)

// fakeIMDS is an IMDSv2-only instance metadata service: PUT /latest/api/token
// with a TTL header gives a token valid for that TTL (capped at maxTTL), every
// GET needs a valid token (401 otherwise), paths without a value answer 404.
// It records what it saw for the test goroutine and can fail the next
// requests on a path.
type fakeIMDS struct {
	mu       sync.Mutex
	values   map[string]string
	faults   map[string][]fault
	tokens   map[string]time.Time // token -> expiry
	maxTTL   time.Duration
	allowV1  bool
	putFails int // the next PUTs answer with putStatus
	putCode  int
	next     int
	seen     []fakeRequest
	gets     map[string]int // GETs answered per path
	changed  chan struct{}  // closed and replaced on every request
}

type fault struct {
	status int           // 0: answer normally (after delay)
	body   string        // body for the fault; a 200 fault answers this body
	delay  time.Duration // wait before answering
}

type fakeRequest struct {
	Method string
	Path   string
	Token  string
	TTL    string
	Status int
	At     time.Time // when it was answered
}

func newFake() *fakeIMDS {
	return &fakeIMDS{
		values:  make(map[string]string),
		faults:  make(map[string][]fault),
		tokens:  make(map[string]time.Time),
		maxTTL:  6 * time.Hour,
		gets:    make(map[string]int),
		changed: make(chan struct{}),
	}
}

func (f *fakeIMDS) set(path, v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[path] = v
}

func (f *fakeIMDS) unset(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.values, path)
}

func (f *fakeIMDS) fail(path string, n int, ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.faults[path] = append(f.faults[path], ft)
	}
}

// revoke forgets every token, as a restarted service would.
func (f *fakeIMDS) revoke() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.tokens)
}

func (f *fakeIMDS) requests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.seen...)
}

func (f *fakeIMDS) count(method string, status int) int {
	n := 0
	for _, r := range f.requests() {
		if r.Method == method && (status == 0 || r.Status == status) {
			n++
		}
	}
	return n
}

func (f *fakeIMDS) getsOf(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets[path]
}

// waitGets blocks until path has been answered n times or ctx ends.
func (f *fakeIMDS) waitGets(ctx context.Context, path string, n int) bool {
	for {
		f.mu.Lock()
		ok, ch := f.gets[path] >= n, f.changed
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

func (f *fakeIMDS) record(r fakeRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r.At = time.Now()
	f.seen = append(f.seen, r)
	if r.Method == http.MethodGet {
		f.gets[r.Path]++
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := fakeRequest{Method: r.Method, Token: r.Header.Get("X-aws-ec2-metadata-token"), TTL: r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds")}
	reply := func(status int, body string) {
		rec.Status = status
		f.record(rec)
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
	if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
		rec.Path = "token"
		f.mu.Lock()
		if f.putFails > 0 {
			f.putFails--
			code := f.putCode
			f.mu.Unlock()
			reply(code, "")
			return
		}
		f.mu.Unlock()
		secs, err := strconv.Atoi(rec.TTL)
		if err != nil || secs < 1 || secs > 21600 {
			reply(http.StatusBadRequest, "bad ttl")
			return
		}
		f.mu.Lock()
		ttl := min(time.Duration(secs)*time.Second, f.maxTTL)
		f.next++
		tok := "token-" + strconv.Itoa(f.next)
		f.tokens[tok] = time.Now().Add(ttl)
		f.mu.Unlock()
		w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", strconv.Itoa(int(ttl/time.Second)))
		reply(http.StatusOK, tok)
		return
	}
	rec.Path = strings.TrimPrefix(r.URL.Path, "/latest/meta-data/")
	if r.Method != http.MethodGet {
		reply(http.StatusMethodNotAllowed, "")
		return
	}
	f.mu.Lock()
	exp, ok := f.tokens[rec.Token]
	allowV1 := f.allowV1
	f.mu.Unlock()
	if !(rec.Token == "" && allowV1) && (!ok || time.Now().After(exp)) {
		reply(http.StatusUnauthorized, "")
		return
	}
	f.mu.Lock()
	var ft *fault
	if fs := f.faults[rec.Path]; len(fs) > 0 {
		ft = &fs[0]
		f.faults[rec.Path] = fs[1:]
	}
	v, found := f.values[rec.Path]
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
			reply(ft.status, ft.body)
			return
		}
	}
	if !found {
		reply(http.StatusNotFound, "<html>404 - Not Found</html>")
		return
	}
	reply(http.StatusOK, v)
}

// memClient serves requests from a handler in memory, so the watcher and the
// SDK's token clock can run inside a testing/synctest bubble.
type memClient struct{ h http.Handler }

func (c memClient) Do(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	c.h.ServeHTTP(rec, r)
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	return rec.Result(), nil
}

package e2e

import (
	"context"
	"hash/fnv"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// gceFake is a GCE metadata server for the agent's two values,
// instance/preempted and instance/maintenance-event: Metadata-Flavor:
// Google required (403 without), an ETag on every answer, and
// wait_for_change with last_etag hanging until the value changes.
type gceFake struct {
	addr    string
	mu      sync.Mutex
	values  map[string]string
	changed chan struct{} // closed and replaced on every change
}

// startGCEFake serves the fake on a loopback port until the test ends.
// The agent reaches it there: it runs with hostNetwork.
func startGCEFake(t *testing.T) *gceFake {
	t.Helper()
	f := &gceFake{
		values:  map[string]string{"instance/preempted": "FALSE", "instance/maintenance-event": "NONE"},
		changed: make(chan struct{}),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	srv := &http.Server{Handler: f, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

func (f *gceFake) set(path, v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.values[path] == v {
		return
	}
	f.values[path] = v
	close(f.changed)
	f.changed = make(chan struct{})
}

func etag(v string) string {
	h := fnv.New64a()
	h.Write([]byte(v))
	return strconv.FormatUint(h.Sum64(), 16)
}

func (f *gceFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Missing Metadata-Flavor:Google header", http.StatusForbidden)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	f.mu.Lock()
	v, ok := f.values[path]
	ch := f.changed
	f.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	if q.Get("wait_for_change") == "true" && q.Get("last_etag") == etag(v) {
		wait := time.Minute
		if s, err := strconv.Atoi(q.Get("timeout_sec")); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		defer cancel()
		for {
			select {
			case <-ctx.Done():
			case <-ch:
				f.mu.Lock()
				v, ch = f.values[path], f.changed
				f.mu.Unlock()
				if etag(v) == q.Get("last_etag") {
					continue
				}
			}
			break
		}
	}
	w.Header().Set("Metadata-Flavor", "Google")
	w.Header().Set("ETag", etag(v))
	w.Header().Set("Content-Type", "application/text")
	_, _ = w.Write([]byte(v))
}

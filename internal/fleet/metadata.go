package fleet

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Cloud is the kind of a simulated node's metadata server.
type Cloud string

// The two clouds of the fleet.
const (
	// GCE serves instance/preempted and instance/maintenance-event with
	// wait_for_change long polls, as the GCE metadata server does.
	GCE Cloud = "gce"
	// AWS serves IMDSv2: a session token, then spot/instance-action (404
	// until a spot interruption) and 404 for the other paths.
	AWS Cloud = "aws"
)

// Metadata is one node's metadata server.
type Metadata struct {
	cloud Cloud
	addr  string
	srv   *http.Server

	mu        sync.Mutex
	preempted bool
	deadline  time.Time     // AWS: the instance-action time
	changed   chan struct{} // closed and replaced on every change
}

// ServeMetadata serves a node's metadata at addr until Close.
func ServeMetadata(cloud Cloud, addr string) (*Metadata, error) {
	if cloud != GCE && cloud != AWS {
		return nil, fmt.Errorf("metadata: unknown cloud %q", cloud)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	m := &Metadata{cloud: cloud, addr: ln.Addr().String(), changed: make(chan struct{})}
	m.srv = &http.Server{Handler: m, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = m.srv.Serve(ln) }()
	return m, nil
}

// Addr is the server's host:port.
func (m *Metadata) Addr() string { return m.addr }

// Close stops the server.
func (m *Metadata) Close() error { return m.srv.Close() }

// Preempt announces the node's end: GCE sets instance/preempted to TRUE
// (the deadline is the agent's 30 s after it sees it), AWS serves a
// terminate instance-action for deadline.
func (m *Metadata) Preempt(deadline time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.preempted, m.deadline = true, deadline
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *Metadata) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m.cloud == GCE {
		m.serveGCE(w, r)
		return
	}
	m.serveAWS(w, r)
}

// gceValue returns the value at path, whether there is one, and the
// channel closed on the next change.
func (m *Metadata) gceValue(path string) (string, bool, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch path {
	case "instance/preempted":
		if m.preempted {
			return "TRUE", true, m.changed
		}
		return "FALSE", true, m.changed
	case "instance/maintenance-event":
		return "NONE", true, m.changed
	case "instance/id":
		return "1", true, m.changed
	}
	return "", false, m.changed
}

func etag(v string) string {
	h := fnv.New64a()
	h.Write([]byte(v))
	return strconv.FormatUint(h.Sum64(), 16)
}

func (m *Metadata) serveGCE(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Missing Metadata-Flavor:Google header", http.StatusForbidden)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")
	v, ok, ch := m.gceValue(path)
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
		for etag(v) == q.Get("last_etag") {
			select {
			case <-ctx.Done():
			case <-ch:
				v, _, ch = m.gceValue(path)
				continue
			}
			break
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			return // the client went away
		}
	}
	w.Header().Set("Metadata-Flavor", "Google")
	w.Header().Set("ETag", etag(v))
	w.Header().Set("Content-Type", "application/text")
	_, _ = w.Write([]byte(v))
}

func (m *Metadata) serveAWS(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			http.Error(w, "", http.StatusMethodNotAllowed)
			return
		}
		ttl := r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds")
		if ttl == "" {
			http.Error(w, "", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", ttl)
		_, _ = w.Write([]byte("fleet-token"))
		return
	}
	if r.Header.Get("X-aws-ec2-metadata-token") != "fleet-token" {
		http.Error(w, "", http.StatusUnauthorized)
		return
	}
	m.mu.Lock()
	preempted, deadline := m.preempted, m.deadline
	m.mu.Unlock()
	switch strings.TrimPrefix(r.URL.Path, "/latest/meta-data/") {
	case "spot/instance-action":
		if preempted {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, `{"action":"terminate","time":%q}`, deadline.UTC().Format(time.RFC3339))
			return
		}
	case "instance-id":
		_, _ = w.Write([]byte("i-fleet"))
		return
	}
	http.NotFound(w, r)
}

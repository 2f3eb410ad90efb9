package sim

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/wtest"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func next(t *testing.T, out <-chan watcher.Notice) watcher.Notice {
	t.Helper()
	select {
	case n := <-out:
		return n
	case <-t.Context().Done():
		t.Fatal("no notice")
	}
	return watcher.Notice{}
}

func none(t *testing.T, out <-chan watcher.Notice) {
	t.Helper()
	select {
	case n := <-out:
		t.Fatalf("unexpected notice %v", n)
	default:
	}
}

func TestFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "notice.json")
	m, reg := wtest.Metrics(t)
	w, err := New(Options{File: file, PollInterval: 5 * time.Millisecond, Clock: func() time.Time { return t0 }, Logger: wtest.Logger(t), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	out := wtest.Run(t, w)
	write := func(s string) {
		t.Helper()
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"kind": "preemption", "seconds": 30, "id": "demo-1"}`)
	n := next(t, out)
	if n.Source != watcher.SourceSim || n.Kind != watcher.KindPreemption || n.ID != "demo-1" || !n.Deadline.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("got %v", n)
	}
	// Same notice again with a different layout: no duplicate. Then broken
	// JSON: counted, nothing sent. Then a cancel.
	write(` {"id": "demo-1", "kind": "preemption", "seconds": 30} `)
	write(`{"kind": "preemption", "seconds": `)
	for wtest.Errors(reg, watcher.SourceSim, watcher.ReasonMalformed) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	none(t, out)
	write(`[{"kind": "preemption", "state": "canceled", "id": "demo-1"}, {"kind": "spot-interruption", "source": "aws", "action": "terminate", "deadline": "2026-03-01T12:02:00Z"}]`)
	if n := next(t, out); n.State != watcher.StateCanceled || n.ID != "demo-1" {
		t.Fatalf("got %v", n)
	}
	if n := next(t, out); n.Source != watcher.SourceAWS || n.Kind != watcher.KindSpotInterruption || !strings.HasPrefix(n.ID, "sim-spot-interruption-") {
		t.Fatalf("got %v", n)
	}
}

func TestTrigger(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, reg := wtest.Metrics(t)
	w, err := New(Options{Listener: ln, Logger: wtest.Logger(t), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	out := wtest.Run(t, w)
	url := "http://" + ln.Addr().String() + "/notice"
	post := func(body string) int {
		t.Helper()
		res, err := http.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	for _, tc := range []struct {
		name string
		body string
		want int
	}{
		{"notice", `{"kind": "maintenance", "seconds": 60, "id": "m-1"}`, http.StatusAccepted},
		{"duplicate", `{"kind": "maintenance", "seconds": 60, "id": "m-1"}`, http.StatusOK},
		{"malformed", `{"kind": `, http.StatusBadRequest},
		{"empty", ``, http.StatusBadRequest},
		{"unknown kind", `{"kind": "meteor", "seconds": 1}`, http.StatusBadRequest},
		{"wrong time format", `{"kind": "preemption", "deadline": "01 Mar 26 12:00 UTC"}`, http.StatusBadRequest},
		{"no deadline", `{"kind": "preemption"}`, http.StatusBadRequest},
		{"unknown field", `{"kind": "preemption", "seconds": 1, "sconds": 2}`, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := post(tc.body); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
		})
	}
	if n := next(t, out); n.ID != "m-1" || n.Kind != watcher.KindMaintenance {
		t.Fatalf("got %v", n)
	}
	none(t, out)
	if wtest.Errors(reg, watcher.SourceSim, watcher.ReasonMalformed) < 5 || wtest.Errors(reg, watcher.SourceSim, watcher.ReasonEmpty) != 1 {
		t.Fatal("bad requests not counted")
	}
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", res.StatusCode)
	}
}

func TestListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	w, err := New(Options{Addr: ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Watch(t.Context(), make(chan watcher.Notice)); err == nil {
		t.Fatal("Watch on a busy address returned nil")
	}
}

func TestWatchReturnsOnCancel(t *testing.T) {
	w, err := New(Options{Addr: "127.0.0.1:0", File: filepath.Join(t.TempDir(), "n.json")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := w.Watch(ctx, make(chan watcher.Notice)); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseNotices(f *testing.F) {
	for _, s := range []string{`{"kind": "preemption", "seconds": 30, "id": "demo-1"}`, `[{"kind":"maintenance","state":"canceled","id":"x"}]`,
		`{"kind":"preemption","deadline":"2026-03-01T12:00:30Z"}`, `{"kind":"preemption","seconds":1e300}`, ``, `[]`, `null`, `[null]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ns, err := parseNotices(body, t0)
		if err != nil {
			return
		}
		for _, n := range ns {
			if n.ID == "" || n.Kind == "" || n.State == "" || n.Source == "" {
				t.Fatalf("incomplete notice %+v from %q", n, body)
			}
			if n.State == watcher.StateActive && n.Kind != watcher.KindRebalance && n.Deadline.IsZero() {
				t.Fatalf("active notice without deadline from %q", body)
			}
		}
		again, err := parseNotices(body, t0)
		if err != nil || len(again) != len(ns) {
			t.Fatal("not deterministic")
		}
		for i := range ns {
			if again[i].ID != ns[i].ID {
				t.Fatal("ID not stable")
			}
		}
	})
}

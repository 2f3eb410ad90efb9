package sidecar_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lastcall-dev/lastcall/agent"
	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

var _ agent.Sidecars = (*sidecar.Hub)(nil)

// poll is one long-poll served by h's handler in a goroutine, as if from
// the pod's IP.
type poll struct {
	rec  *httptest.ResponseRecorder
	done chan struct{}
}

func startPoll(h http.Handler, ip, path string) *poll {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = ip + ":40000"
	p := &poll{rec: httptest.NewRecorder(), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		h.ServeHTTP(p.rec, req)
	}()
	return p
}

func (p *poll) answered() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *poll) state(t *testing.T) wire.NodeState {
	t.Helper()
	<-p.done
	var st wire.NodeState
	if err := json.Unmarshal(p.rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("poll answered %d %q: %v", p.rec.Code, p.rec.Body, err)
	}
	return st
}

func newTestHub(t *testing.T, linger time.Duration, onDone func(sidecar.PodRef)) (*sidecar.Hub, *podIPs) {
	t.Helper()
	ips := newPodIPs()
	ips.set(sidecar.PodRef{Namespace: "ns", Name: "a"}, "10.0.0.1")
	ips.set(sidecar.PodRef{Namespace: "ns", Name: "b"}, "10.0.0.2")
	h, err := sidecar.NewHub(sidecar.HubOptions{Pods: ips, Linger: linger, OnDone: onDone})
	if err != nil {
		t.Fatal(err)
	}
	return h, ips
}

func TestHubLongPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub, _ := newTestHub(t, time.Second, nil)
		h := hub.Handler()
		gen := hub.State().Generation
		path := "/v1/pods/ns/a/state?" + wire.PollQuery{Generation: gen, Wait: 30 * time.Second}.Encode()

		// Nothing changes: the poll is held for the whole wait.
		p := startPoll(h, "10.0.0.1", path)
		time.Sleep(29 * time.Second)
		synctest.Wait()
		if p.answered() {
			t.Fatal("poll answered before the wait ran out")
		}
		time.Sleep(time.Second)
		if st := p.state(t); st.Generation != gen || st.Phase != wire.PhaseRunning {
			t.Errorf("after the wait: %+v, want generation %d running", st, gen)
		}

		// An older generation is answered at once.
		if st := startPoll(h, "10.0.0.1", "/v1/pods/ns/a/state?generation=1&wait=30s").state(t); st.Generation != gen {
			t.Errorf("stale poll: %+v", st)
		}

		// A change answers a waiting poll at once, and Draining returns when
		// it has.
		p = startPoll(h, "10.0.0.1", path)
		q := startPoll(h, "10.0.0.2", strings.Replace(path, "/a/", "/b/", 1))
		synctest.Wait()
		deadline := time.Now().Add(30 * time.Second)
		told, err := hub.Draining(t.Context(), testNotice(deadline))
		if err != nil || told != 2 {
			t.Fatalf("Draining = %d, %v; want 2", told, err)
		}
		for _, p := range []*poll{p, q} {
			st := p.state(t)
			if st.Phase != wire.PhaseDraining || st.Generation <= gen || st.Reason != "preemption" || !st.Deadline.Equal(deadline) {
				t.Errorf("draining state: %+v", st)
			}
		}
	})
}

func TestHubDrainingWaits(t *testing.T) {
	tests := []struct {
		name      string
		comesBack bool // the sidecar polls again within the linger
		wantTold  int
	}{
		{"sidecar between two polls comes back", true, 1},
		{"sidecar gone for good", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				hub, _ := newTestHub(t, 2*time.Second, nil)
				h := hub.Handler()
				// One answered poll: the sidecar counts as subscribed for the linger.
				st := startPoll(h, "10.0.0.1", "/v1/pods/ns/a/state").state(t)
				var told int
				var err error
				returned := make(chan struct{})
				go func() {
					defer close(returned)
					told, err = hub.Draining(t.Context(), testNotice(time.Now().Add(time.Minute)))
				}()
				synctest.Wait()
				select {
				case <-returned:
					t.Fatal("Draining returned before the subscribed sidecar had the state")
				default:
				}
				if tt.comesBack {
					startPoll(h, "10.0.0.1", "/v1/pods/ns/a/state?"+wire.PollQuery{Generation: st.Generation, Wait: 30 * time.Second}.Encode()).state(t)
				}
				<-returned
				if err != nil || told != tt.wantTold {
					t.Errorf("Draining = %d, %v; want %d", told, err, tt.wantTold)
				}
			})
		})
	}
}

func TestHubDrainingContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub, _ := newTestHub(t, time.Hour, nil)
		startPoll(hub.Handler(), "10.0.0.1", "/v1/pods/ns/a/state").state(t)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		told, err := hub.Draining(ctx, testNotice(time.Now().Add(time.Minute)))
		if told != 0 || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Draining = %d, %v; want 0, deadline exceeded", told, err)
		}
	})
}

func TestHubReports(t *testing.T) {
	var mu sync.Mutex
	var calls []sidecar.PodRef
	hub, _ := newTestHub(t, time.Second, func(p sidecar.PodRef) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, p)
	})
	h := hub.Handler()
	put := func(ip, name, body string) int {
		req := httptest.NewRequest(http.MethodPut, "/v1/pods/ns/"+name+"/report", strings.NewReader(body))
		req.RemoteAddr = ip + ":1234"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	steps := []struct {
		ip, name, body string
		wantCode       int
		wantCalls      int
	}{
		{"10.0.0.1", "a", `{"done":false,"inflight":3}`, 204, 0},
		{"10.0.0.1", "a", `{"done":true,"inflight":0}`, 204, 1},
		// Sent again: called again, for the callee tells pods by UID (a
		// StatefulSet pod that took the name of one that said done reports
		// done under the same name, and must be released too).
		{"10.0.0.1", "a", `{"done":true,"inflight":0}`, 204, 2},
		{"10.0.0.2", "a", `{"done":true}`, 403, 2},
		{"[::ffff:10.0.0.2]", "b", `{"done":true}`, 204, 3}, // IPv4-mapped address
	}
	for i, s := range steps {
		if code := put(s.ip, s.name, s.body); code != s.wantCode {
			t.Errorf("step %d: %d, want %d", i, code, s.wantCode)
		}
		mu.Lock()
		if len(calls) != s.wantCalls {
			t.Errorf("step %d: OnDone calls %v, want %d", i, calls, s.wantCalls)
		}
		mu.Unlock()
	}
	if !hub.Done("ns", "a") || !hub.Done("ns", "b") {
		t.Error("done reports not recorded")
	}
	if _, err := hub.Resumed(t.Context(), testNotice(time.Time{})); err != nil {
		t.Fatal(err)
	}
	if hub.Done("ns", "a") || hub.State().Phase != wire.PhaseRunning {
		t.Error("Resumed kept the done reports or the drain")
	}
	if put("10.0.0.1", "a", `{"done":true}`); len(calls) != 4 {
		t.Errorf("a done report after Resumed: OnDone calls %v, want 4", calls)
	}
}

// A report that takes done back calls OnUndone: a restarted sidecar
// re-sends its saved done, then what holds now.
func TestHubUndone(t *testing.T) {
	ips := newPodIPs()
	ips.set(sidecar.PodRef{Namespace: "ns", Name: "a"}, "10.0.0.1")
	var undone []sidecar.PodRef
	hub, err := sidecar.NewHub(sidecar.HubOptions{Pods: ips, OnUndone: func(p sidecar.PodRef) { undone = append(undone, p) }})
	if err != nil {
		t.Fatal(err)
	}
	h := hub.Handler()
	for _, body := range []string{`{"done":false}`, `{"done":true}`, `{"done":false}`, `{"done":false}`} {
		req := httptest.NewRequest(http.MethodPut, "/v1/pods/ns/a/report", strings.NewReader(body))
		req.RemoteAddr = "10.0.0.1:1234"
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	if len(undone) != 1 || undone[0].Name != "a" {
		t.Errorf("OnUndone calls %v, want one for ns/a", undone)
	}
}

// Each pod's sidecar is handed its own stop time (SetPodDeadlines): while
// draining, a Deadline no later than it, and a new generation when it
// changes; the other sidecars are not woken with anything new.
func TestHubPodDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub, _ := newTestHub(t, time.Second, nil)
		h := hub.Handler()
		node := time.Now().Add(30 * time.Second)
		hub.Tell(wire.NodeState{Phase: wire.PhaseDraining, Reason: "preemption", Deadline: node})
		stopA := time.Now().Add(18 * time.Second)
		hub.SetPodDeadlines(map[sidecar.PodRef]time.Time{{Namespace: "ns", Name: "a"}: stopA})
		a := startPoll(h, "10.0.0.1", "/v1/pods/ns/a/state").state(t)
		b := startPoll(h, "10.0.0.2", "/v1/pods/ns/b/state").state(t)
		if !a.Deadline.Equal(stopA) || !a.PodDeadline.Equal(stopA) {
			t.Errorf("pod a handed %+v, want its own stop time %v as deadline", a, stopA)
		}
		if !b.Deadline.Equal(node) || !b.PodDeadline.IsZero() {
			t.Errorf("pod b handed %+v, want the node's deadline %v", b, node)
		}
		// a's stop time moves earlier: a's poll is answered, b's is not.
		pa := startPoll(h, "10.0.0.1", "/v1/pods/ns/a/state?"+wire.PollQuery{Generation: a.Generation, Wait: time.Minute}.Encode())
		pb := startPoll(h, "10.0.0.2", "/v1/pods/ns/b/state?"+wire.PollQuery{Generation: b.Generation, Wait: time.Minute}.Encode())
		synctest.Wait()
		earlier := stopA.Add(-5 * time.Second)
		hub.SetPodDeadlines(map[sidecar.PodRef]time.Time{{Namespace: "ns", Name: "a"}: earlier})
		synctest.Wait()
		if !pa.answered() || pb.answered() {
			t.Fatalf("after a's change: a answered %v, b answered %v; want only a", pa.answered(), pb.answered())
		}
		if st := pa.state(t); st.Generation <= a.Generation || !st.Deadline.Equal(earlier) {
			t.Errorf("a handed %+v, want a new generation with deadline %v", st, earlier)
		}
		// A node-wide change after a pod's own one still reaches everyone.
		hub.Tell(wire.NodeState{Phase: wire.PhaseRunning})
		if st := pb.state(t); st.Phase != wire.PhaseRunning {
			t.Errorf("b handed %+v after the resume", st)
		}
		if st := startPoll(h, "10.0.0.1", "/v1/pods/ns/a/state").state(t); st.Phase != wire.PhaseRunning || !st.Deadline.IsZero() || !st.PodDeadline.Equal(earlier) {
			t.Errorf("a handed %+v while running, want no deadline and its pod deadline", st)
		}
	})
}

func TestHubClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hub, _ := newTestHub(t, time.Second, nil)
		gen := hub.State().Generation
		p := startPoll(hub.Handler(), "10.0.0.1", "/v1/pods/ns/a/state?"+wire.PollQuery{Generation: gen, Wait: time.Minute}.Encode())
		synctest.Wait()
		hub.Close()
		if st := p.state(t); st.Generation != gen {
			t.Errorf("after Close: %+v", st)
		}
	})
}

func TestUntilDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		drain, stop := context.WithCancelCause(t.Context())
		work, cancel := sidecar.UntilDeadline(t.Context(), drain, time.Second)
		defer cancel()
		time.Sleep(time.Hour)
		if work.Err() != nil {
			t.Fatal("work ended before any drain")
		}
		stop(&sidecar.DrainingError{State: sidecar.State{Phase: sidecar.PhaseDraining, Deadline: time.Now().Add(10 * time.Second)}})
		time.Sleep(8 * time.Second)
		synctest.Wait()
		if work.Err() != nil {
			t.Fatal("work ended at the start of the drain")
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if !errors.Is(context.Cause(work), sidecar.ErrDeadline) {
			t.Errorf("cause %v, want ErrDeadline", context.Cause(work))
		}
	})
}

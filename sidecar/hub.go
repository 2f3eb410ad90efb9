package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/internal/httpguard"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
	"github.com/lastcall-dev/lastcall/watcher"
)

// PodIPs finds the IP of a pod on the node. The agent's *agent.NodePods
// implements it from its pod cache.
type PodIPs interface {
	// PodIP returns the IP of pod namespace/name, if the pod is on the node
	// and has one.
	PodIP(namespace, name string) (string, bool)
}

// PodRef names a pod.
type PodRef struct {
	Namespace, Name string
}

// String returns namespace/name.
func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// HubOptions configure a Hub.
type HubOptions struct {
	// Pods authenticates callers: a call naming a pod is served only when it
	// comes from that pod's IP. Required.
	Pods PodIPs
	// OnDone, if set, is called for every report of a pod's sidecar that
	// says its workers are done: not only the first, since a pod that takes
	// the name of one that said done (a StatefulSet replica) reports under
	// the same name, and the callee tells pods apart by UID. It is
	// called from the request's goroutine, so it must return quickly (start
	// an eviction in a goroutine the agent owns, for example). A pod may also
	// report done outside a node drain, when the pod itself is terminating.
	OnDone func(PodRef)
	// OnUndone, if set, is called when a pod whose sidecar had reported
	// done reports not done: its workers took the report back (a sidecar
	// that restarted re-sends what it saved, then what holds now). Like
	// OnDone it must return quickly.
	OnUndone func(PodRef)
	// Logger receives the Hub's log. Default: discard.
	Logger *slog.Logger
	// Registerer, if set, gets the Hub's metrics (lastcall_sidecars_*).
	Registerer prometheus.Registerer
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Linger is how long a sidecar that is between two long-polls still
	// counts as subscribed, so that Draining waits for it. Default 2s.
	Linger time.Duration
	// Unknown starts the Hub without a state: until the first Tell (or
	// Draining, Resumed) it answers every sidecar 503, after holding a
	// long-poll for its wait. A node agent that has just (re)started does
	// not know yet whether the node is draining, and must not tell sidecars
	// that were draining to run again; they keep what they were told.
	Unknown bool
}

// forgetAfter is how long the Hub keeps a pod it has not heard from.
const forgetAfter = 10 * time.Minute

// maxPollsPerPod caps the long-polls held open for one pod: a sidecar holds
// one, and one more while it reconnects.
const maxPollsPerPod = 4

// Hub is the node agent's endpoint for the sidecars of the pods on its node.
// Serve Handler on the node's IP (the agent runs with hostNetwork); sidecars
// find it through the downward API's status.hostIP. Draining and Resumed
// change the state every sidecar sees. See package wire for the protocol.
//
// A Hub is safe for concurrent use. Its zero value is not usable: create it
// with NewHub.
type Hub struct {
	pods     PodIPs
	onDone   func(PodRef)
	onUndone func(PodRef)
	log      *slog.Logger
	quiet    *slog.Logger // rate-limited, for what any client can cause
	now      func() time.Time
	linger   time.Duration

	refused prometheus.Counter // nil without a Registerer

	mu        sync.Mutex // guards the fields below
	state     wire.NodeState
	maxGen    uint64               // the latest generation handed out, node-wide or to one pod
	podDL     map[PodRef]time.Time // each pod's stop time, where known (SetPodDeadlines)
	podGen    map[PodRef]uint64    // the generation of each pod's own last change
	changed   chan struct{}        // closed and replaced when state changes or the Hub closes
	progress  chan struct{}        // closed and replaced when a sidecar is told, subscribes or leaves
	closed    bool
	subs      map[PodRef]*subscriber
	lastSweep time.Time
}

// subscriber is what the Hub knows of one pod's sidecar. Guarded by Hub.mu.
type subscriber struct {
	open     int         // long-polls under way
	lastSeen time.Time   // when a long-poll last started or ended
	told     uint64      // the latest generation the sidecar is known to have
	report   wire.Report // the pod's last report
}

// NewHub returns a Hub whose state is running.
func NewHub(o HubOptions) (*Hub, error) {
	if o.Pods == nil {
		return nil, errors.New("sidecar hub: Pods is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Linger <= 0 {
		o.Linger = 2 * time.Second
	}
	h := &Hub{
		pods: o.Pods, onDone: o.OnDone, onUndone: o.OnUndone, log: o.Logger, quiet: httpguard.NewQuietLogger(o.Logger), now: o.Now, linger: o.Linger,
		changed:  make(chan struct{}),
		progress: make(chan struct{}),
		subs:     map[PodRef]*subscriber{},
		podDL:    map[PodRef]time.Time{},
		podGen:   map[PodRef]uint64{},
	}
	if !o.Unknown {
		h.state = wire.NodeState{Generation: wire.NextGeneration(0, h.now()), Phase: wire.PhaseRunning}
		h.maxGen = h.state.Generation
	}
	if o.Registerer != nil {
		if err := h.register(o.Registerer); err != nil {
			return nil, fmt.Errorf("sidecar hub metrics: %w", err)
		}
	}
	return h, nil
}

func (h *Hub) register(reg prometheus.Registerer) error {
	h.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lastcall_sidecar_requests_refused_total",
		Help: "Sidecar calls refused because they did not come from the pod they name.",
	})
	cs := []prometheus.Collector{
		h.refused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lastcall_sidecars_connected",
			Help: "Sidecars subscribed to the agent (a long-poll open, or between two).",
		}, func() float64 { return float64(h.Connected()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lastcall_sidecars_done",
			Help: "Pods whose sidecar reported its workers done.",
		}, func() float64 { d, _ := h.totals(); return float64(d) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lastcall_sidecars_inflight_messages",
			Help: "Messages the workers on the node last reported holding, summed over pods.",
		}, func() float64 { _, n := h.totals(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lastcall_sidecars_draining",
			Help: "1 while the Hub tells its sidecars to drain.",
		}, func() float64 {
			if h.State().Phase == wire.PhaseDraining {
				return 1
			}
			return 0
		}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Draining tells every sidecar on the node that n drains it: workers stop
// pulling, finish what fits before n.Deadline and hand back the rest. It
// blocks like Told, and returns how many sidecars were told.
func (h *Hub) Draining(ctx context.Context, n watcher.Notice) (told int, err error) {
	return h.Told(ctx, h.Tell(NoticeState(n)))
}

// NoticeState is the state that tells sidecars notice n drains the node.
func NoticeState(n watcher.Notice) wire.NodeState {
	return wire.NodeState{
		Phase: wire.PhaseDraining, Reason: string(n.Kind), Source: string(n.Source),
		NoticeID: n.ID, Deadline: n.Deadline,
	}
}

// Resumed tells every sidecar that the node runs on (the notice n was
// canceled), and forgets the pods' done reports. It blocks like Told.
func (h *Hub) Resumed(ctx context.Context, n watcher.Notice) (told int, err error) {
	told, err = h.Told(ctx, h.Tell(wire.NodeState{Phase: wire.PhaseRunning}))
	if err == nil {
		h.log.Info("sidecars told to resume", "id", n.ID, "told", told)
	}
	return told, err
}

// Tell makes st, with a new generation, what every sidecar is handed from
// now on, answers the waiting long-polls and returns the generation at
// once. A running state also forgets the pods' done reports: workers back
// at work must report done again. Calls are ordered: the last one wins.
func (h *Hub) Tell(st wire.NodeState) (generation uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st.Generation = wire.NextGeneration(h.maxGen, h.now())
	st.PodDeadline = time.Time{} // per pod: SetPodDeadlines
	h.maxGen = st.Generation
	h.state = st
	if st.Phase == wire.PhaseRunning {
		for _, s := range h.subs {
			s.report.Done = false
		}
	}
	close(h.changed)
	h.changed = make(chan struct{})
	return st.Generation
}

// SetPodDeadlines makes deadlines the stop times of the pods it names
// (wire.NodeState.PodDeadline): each pod's sidecar is handed its own, and,
// while the node drains, a Deadline no later than it. Pods it does not
// name have none. Each call replaces the last (level-triggered); the
// sidecars of pods whose stop time changed get a new generation at once,
// the others are not woken with anything new.
func (h *Hub) SetPodDeadlines(deadlines map[PodRef]time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := false
	bump := func(ref PodRef) {
		h.maxGen = wire.NextGeneration(h.maxGen, h.now())
		h.podGen[ref] = h.maxGen
		changed = true
	}
	for ref, old := range h.podDL {
		if _, ok := deadlines[ref]; !ok {
			delete(h.podDL, ref)
			bump(ref)
		} else if t := deadlines[ref]; !t.Equal(old) {
			h.podDL[ref] = t
			bump(ref)
		}
	}
	for ref, t := range deadlines {
		if _, ok := h.podDL[ref]; !ok {
			h.podDL[ref] = t
			bump(ref)
		}
	}
	for ref, g := range h.podGen {
		if _, ok := h.podDL[ref]; !ok && g <= h.state.Generation {
			delete(h.podGen, ref) // the node-wide state is newer: nothing of its own left
		}
	}
	if changed {
		close(h.changed)
		h.changed = make(chan struct{})
	}
}

// viewLocked is what the sidecar of ref is handed: the node's state with
// the pod's own stop time. Call with h.mu held.
func (h *Hub) viewLocked(ref PodRef) wire.NodeState {
	st := h.state
	if st.Phase == "" {
		return st
	}
	if g := h.podGen[ref]; g > st.Generation {
		st.Generation = g
	}
	if t, ok := h.podDL[ref]; ok {
		st.PodDeadline = t
		if st.Phase == wire.PhaseDraining && (st.Deadline.IsZero() || t.Before(st.Deadline)) {
			st.Deadline = t
		}
	}
	return st
}

// Told blocks until every subscribed sidecar (a long-poll open, or one
// that ended less than Linger ago) has been handed generation gen or a later
// one, or ctx is done, and returns how many sidecars have it. Nothing on the
// way calls the apiserver.
func (h *Hub) Told(ctx context.Context, gen uint64) (int, error) {
	for {
		told, pending, wake, progress := h.count(gen)
		if pending == 0 {
			return told, nil
		}
		var timeout <-chan time.Time
		var t *time.Timer
		if wake > 0 {
			t = time.NewTimer(wake)
			timeout = t.C
		}
		select {
		case <-progress:
		case <-timeout:
		case <-ctx.Done():
			return told, fmt.Errorf("%d of %d sidecars told of generation %d: %w", told, told+pending, gen, context.Cause(ctx))
		}
		if t != nil {
			t.Stop()
		}
	}
}

// count returns how many sidecars have generation gen, how many subscribed
// ones do not yet, when the next of those stops counting as subscribed, and
// the channel closed on the next progress.
func (h *Hub) count(gen uint64) (told, pending int, wake time.Duration, progress <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	for _, s := range h.subs {
		switch idle := now.Sub(s.lastSeen); {
		case s.told >= gen:
			told++
		case s.open > 0:
			pending++
		case idle < h.linger:
			pending++
			if left := h.linger - idle; wake == 0 || left < wake {
				wake = left
			}
		}
	}
	return told, pending, wake, h.progress
}

// State returns the state the Hub hands out.
func (h *Hub) State() wire.NodeState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state
}

// Connected returns how many sidecars are subscribed: a long-poll open, or
// one ended less than Linger ago.
func (h *Hub) Connected() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	n := 0
	for _, s := range h.subs {
		if h.subscribedLocked(s, now) {
			n++
		}
	}
	return n
}

// Subscribed reports whether the sidecar of pod namespace/name is
// subscribed: a long-poll is open, or one ended less than Linger ago.
func (h *Hub) Subscribed(namespace, name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.subs[PodRef{namespace, name}]
	return ok && h.subscribedLocked(s, h.now())
}

func (h *Hub) subscribedLocked(s *subscriber, now time.Time) bool {
	return s.open > 0 || now.Sub(s.lastSeen) < h.linger
}

// Done reports whether the sidecar of pod namespace/name reported its
// workers done.
func (h *Hub) Done(namespace, name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.subs[PodRef{namespace, name}]
	return ok && s.report.Done
}

// InFlight returns the in-flight count pod namespace/name last reported,
// and whether it reported one.
func (h *Hub) InFlight(namespace, name string) (int, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.subs[PodRef{namespace, name}]
	if !ok {
		return 0, false
	}
	return s.report.InFlight, true
}

func (h *Hub) totals() (done, inflight int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.subs {
		if s.report.Done {
			done++
		}
		inflight += s.report.InFlight
	}
	return done, inflight
}

// Close answers every waiting long-poll at once and makes later ones answer
// without waiting, so that an http.Server holding them can shut down:
// register it with srv.RegisterOnShutdown(hub.Close).
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.changed)
		h.changed = make(chan struct{})
	}
}

// Handler returns the Hub's HTTP API (see package wire):
//
//	GET /v1/pods/{namespace}/{name}/state?generation=N&wait=30s
//	PUT /v1/pods/{namespace}/{name}/report
//
// Serve it with no WriteTimeout shorter than the sidecars' wait (30s).
func (h *Hub) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pods/{namespace}/{name}/state", h.serveState)
	mux.HandleFunc("PUT /v1/pods/{namespace}/{name}/report", h.serveReport)
	return mux
}

// authorize answers 403 and returns false unless r comes from the IP of the
// pod it names.
func (h *Hub) authorize(w http.ResponseWriter, r *http.Request) (PodRef, bool) {
	ref := PodRef{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}
	reason := ""
	from := remoteAddr(r)
	switch want, ok := h.pods.PodIP(ref.Namespace, ref.Name); {
	case !ok:
		reason = fmt.Sprintf("pod %s is not known on this node (or has no IP yet)", ref)
	case !from.IsValid():
		reason = fmt.Sprintf("cannot read the caller's address %q", r.RemoteAddr)
	default:
		wantAddr, err := netip.ParseAddr(want)
		if err != nil || wantAddr.Unmap() != from {
			reason = fmt.Sprintf("pod %s has IP %s; this call comes from %s: calls are accepted only from the pod they name", ref, want, from)
		}
	}
	if reason == "" {
		return ref, true
	}
	if h.refused != nil {
		h.refused.Inc()
	}
	// The answer says nothing of the node's pods or their IPs; the log says
	// why, a few lines a minute at most (any client can cause these).
	h.quiet.Warn("sidecar call refused", "pod", ref.String(), "remote_addr", r.RemoteAddr, "reason", reason)
	http.Error(w, "forbidden: calls are accepted only from the pod they name", http.StatusForbidden)
	return ref, false
}

func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.WithZone("").Unmap()
}

// subscriber returns the entry of ref, creating it. Call with h.mu held.
func (h *Hub) subscriber(ref PodRef, now time.Time) *subscriber {
	s, ok := h.subs[ref]
	if ok {
		return s
	}
	if now.Sub(h.lastSweep) > time.Minute {
		h.lastSweep = now
		for r, old := range h.subs {
			if old.open == 0 && now.Sub(old.lastSeen) > forgetAfter {
				delete(h.subs, r)
			}
		}
	}
	s = &subscriber{lastSeen: now}
	h.subs[ref] = s
	return s
}

// progressed wakes publish. Call with h.mu held.
func (h *Hub) progressed() {
	close(h.progress)
	h.progress = make(chan struct{})
}

func (h *Hub) serveState(w http.ResponseWriter, r *http.Request) {
	ref, ok := h.authorize(w, r)
	if !ok {
		return
	}
	q, err := wire.ParsePollQuery(r.URL.Query().Get)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var timeout <-chan time.Time
	if q.Wait > 0 {
		t := time.NewTimer(q.Wait)
		defer t.Stop()
		timeout = t.C
	}

	h.mu.Lock()
	s := h.subscriber(ref, h.now())
	if s.open >= maxPollsPerPod {
		h.mu.Unlock()
		http.Error(w, "too many long-polls for this pod", http.StatusTooManyRequests)
		return
	}
	s.open++
	s.lastSeen = h.now()
	if q.Generation == h.viewLocked(ref).Generation {
		s.told = max(s.told, q.Generation) // it has the current state
	}
	h.progressed()
wait:
	for q.Wait > 0 && (q.Generation == h.viewLocked(ref).Generation || h.state.Phase == "") && !h.closed {
		changed := h.changed
		h.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			h.mu.Lock()
			break wait
		case <-r.Context().Done():
			h.mu.Lock()
			break wait
		}
		h.mu.Lock()
	}
	st := h.viewLocked(ref)
	h.mu.Unlock()

	if st.Phase == "" {
		// Nothing to tell yet: the sidecar keeps what it was told and asks
		// again.
		http.Error(w, "agent starting", http.StatusServiceUnavailable)
		err = errors.New("no state yet")
	} else {
		err = writeJSON(w, st)
	}
	h.mu.Lock()
	s.open--
	s.lastSeen = h.now()
	if err == nil {
		s.told = max(s.told, st.Generation)
	}
	h.progressed()
	h.mu.Unlock()
}

func (h *Hub) serveReport(w http.ResponseWriter, r *http.Request) {
	ref, ok := h.authorize(w, r)
	if !ok {
		return
	}
	var rep wire.Report
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&rep); err != nil {
		http.Error(w, "report: "+err.Error(), http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	s := h.subscriber(ref, h.now())
	wasDone := s.report.Done
	s.report = rep
	h.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
	switch {
	case rep.Done:
		if !wasDone {
			h.log.Info("pod reported done", "pod", ref.String(), "inflight", rep.InFlight)
		}
		if h.onDone != nil {
			h.onDone(ref)
		}
	case wasDone:
		h.log.Info("pod took its done report back", "pod", ref.String(), "inflight", rep.InFlight)
		if h.onUndone != nil {
			h.onUndone(ref)
		}
	}
}

// writeJSON writes v and flushes it, returning the first error.
func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if _, err := w.Write(append(b, '\n')); err != nil {
		return err
	}
	return http.NewResponseController(w).Flush()
}

package wire

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Phase is what workers should be doing.
type Phase string

// The phases. Running: pull and work. Draining: pull nothing new, finish
// what fits before the deadline and hand back the rest. Unknown: the
// sidecar cannot reach the node agent and has never been told to drain;
// workers keep working (fail open).
const (
	PhaseRunning  Phase = "running"
	PhaseDraining Phase = "draining"
	PhaseUnknown  Phase = "unknown"
)

// ReasonPodTerminating is the reason of a drain that the pod's own deletion
// started (preStop hook or SIGTERM to the sidecar), not a node notice.
const ReasonPodTerminating = "pod-terminating"

// MaxWait bounds the wait of a long-poll.
const MaxWait = 2 * time.Minute

// NodeState is what the Hub hands every sidecar on its node.
type NodeState struct {
	// Generation changes with every change of state. A Hub starts from
	// its clock in microseconds, so generations grow across agent restarts.
	Generation uint64 `json:"generation"`
	// Phase is running or draining.
	Phase Phase `json:"phase"`
	// Reason is the notice kind (preemption, spot-interruption, …), or
	// the tool taking the node away when Source is "node" (karpenter,
	// cordon, …); empty while running.
	Reason string `json:"reason,omitempty"`
	// Source is the notice's source (gce, aws, azure, sim), or "node":
	// another tool is taking the node away, seen on the Node object.
	Source string `json:"source,omitempty"`
	// NoticeID is the notice's stable ID.
	NoticeID string `json:"notice_id,omitempty"`
	// Deadline is when the workers' time ends: while draining, the
	// machine's end or, earlier, PodDeadline; zero while running, and zero
	// while draining when nothing says when the node goes (another tool
	// drains it, with no cloud notice): see State.Deadline.
	Deadline time.Time `json:"deadline,omitzero"`
	// PodDeadline is when this pod's containers are stopped at the latest,
	// as the agent knows it: the end of the grace period the drain will give
	// it (its plan), or of its deletion once it is being deleted; zero when
	// nothing is known. It is per pod: the kubelet stops a pod when its
	// eviction's grace runs out, which can be well before the machine goes
	// (a node with critical pods evicts the workloads first). A sidecar
	// never tells its workers a deadline later than this.
	PodDeadline time.Time `json:"pod_deadline,omitzero"`
}

// Report is what a sidecar tells the Hub about its pod. It is the whole
// report, not a change, so that it can be sent again after a reconnect.
type Report struct {
	// Done says the pod's workers have finished or handed back their work.
	Done bool `json:"done"`
	// InFlight is how many messages the workers last said they hold.
	InFlight int `json:"inflight"`
}

// State is what the sidecar shows its workers, over HTTP and in
// <dir>/state.json.
type State struct {
	// Phase is running, draining or unknown.
	Phase Phase `json:"phase"`
	// Reason is why the pod drains: a notice kind, ReasonPodTerminating,
	// or the tool taking the node away.
	Reason string `json:"reason,omitempty"`
	// Source is the notice's source, or "node" for another tool's drain,
	// when the node's drain started it.
	Source string `json:"source,omitempty"`
	// Deadline is when the work must be finished or handed back. Zero
	// while draining means no one says when (another tool is taking the
	// node away, no cloud notice holds): not "now" and not "never": pull
	// nothing new, finish the current work promptly, hand back what
	// cannot finish soon; the pod's own termination brings a deadline.
	Deadline time.Time `json:"deadline,omitzero"`
	// RemainingSeconds is the time left before Deadline when the state was
	// produced; absent without a deadline. In state.json it is stale: read
	// the deadline.
	RemainingSeconds *float64 `json:"remaining_seconds,omitempty"`
	// Generation changes with every change of this state (it grows across
	// sidecar restarts); use it for the long-poll.
	Generation uint64 `json:"generation"`
	// AgentGeneration is the last generation the node agent sent; it is
	// kept while the agent cannot be reached.
	AgentGeneration uint64 `json:"agent_generation"`
	// AgentConnected says whether the sidecar's subscription to the node
	// agent currently works.
	AgentConnected bool `json:"agent_connected"`
	// Done says the workers reported they are done.
	Done bool `json:"done"`
	// InFlight is the count the workers last reported.
	InFlight int `json:"inflight"`
}

// FormatTime formats t the way the sidecar shows workers every timestamp:
// RFC 3339 in UTC with exactly three fractional digits and a numeric offset,
// "2026-12-02T01:13:29.120+00:00". Python 3.9+'s datetime.fromisoformat
// (which refuses "Z" before 3.11, and more than six fractional digits),
// JavaScript's Date and Go's time.RFC3339 all read it. The fraction is cut,
// not rounded, so a deadline never moves later.
func FormatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000") + "+00:00"
}

// MarshalJSON encodes s with its deadline in FormatTime's format.
func (s State) MarshalJSON() ([]byte, error) {
	type plain State // without this method
	v := struct {
		plain
		Deadline string `json:"deadline,omitempty"`
	}{plain: plain(s)}
	if !s.Deadline.IsZero() {
		v.Deadline = FormatTime(s.Deadline)
	}
	return json.Marshal(v)
}

// Remaining returns the time left before the deadline as seen at now, or 0
// without a deadline.
func (s State) Remaining(now time.Time) time.Duration {
	if s.Deadline.IsZero() {
		return 0
	}
	return s.Deadline.Sub(now)
}

// Draining reports whether workers must stop pulling.
func (s State) Draining() bool { return s.Phase == PhaseDraining }

// StatePath is the path of the Hub's long-poll for pod namespace/name.
func StatePath(namespace, name string) string {
	return "/v1/pods/" + namespace + "/" + name + "/state"
}

// ReportPath is the path of a pod's report to the Hub.
func ReportPath(namespace, name string) string {
	return "/v1/pods/" + namespace + "/" + name + "/report"
}

// PollQuery holds the parameters of a long-poll.
type PollQuery struct {
	// Generation is the generation the caller has; 0: none.
	Generation uint64
	// Wait is how long to hold the request when nothing changes; 0: answer
	// at once.
	Wait time.Duration
}

// Encode returns the URL query of q.
func (q PollQuery) Encode() string {
	return "generation=" + strconv.FormatUint(q.Generation, 10) + "&wait=" + q.Wait.String()
}

// ParsePollQuery reads generation and wait from a request's query values.
// wait accepts a Go duration ("30s") or seconds ("30"), and is capped at
// MaxWait.
func ParsePollQuery(get func(string) string) (PollQuery, error) {
	var q PollQuery
	if g := get("generation"); g != "" {
		n, err := strconv.ParseUint(g, 10, 64)
		if err != nil {
			return q, fmt.Errorf("generation %q: %w", g, err)
		}
		q.Generation = n
	}
	if w := get("wait"); w != "" {
		d, err := ParseDuration(w)
		if err != nil {
			return q, fmt.Errorf("wait: %w", err)
		}
		q.Wait = min(d, MaxWait)
	}
	return q, nil
}

// ParseDuration reads a Go duration ("30s") or a number of seconds ("30",
// "2.5"). Negative durations are refused.
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0, fmt.Errorf("%q is neither a duration nor seconds", s)
		}
		d = time.Duration(f * float64(time.Second))
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return d, nil
}

// NextGeneration returns a generation after prev: prev+1, or the clock in
// microseconds when that is later, so that a restarted process continues
// above what it handed out before.
func NextGeneration(prev uint64, now time.Time) uint64 {
	return max(prev+1, uint64(max(now.UnixMicro(), 0)))
}

// MarshalIndent encodes v as indented JSON with a trailing newline.
func MarshalIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

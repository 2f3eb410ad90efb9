package agent

import (
	"cmp"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
	"github.com/lastcall-dev/lastcall/watcher"
)

// Tracked is an active notice and the action its kind's policy asks for
// (never ActionNone: those are not tracked).
type Tracked struct {
	Notice watcher.Notice
	Action Action
}

// Observed is everything the agent's decisions depend on: what the
// metadata shows now, what is on the node, and the clock. The agent keeps it
// up to date from its inputs; Decide reads nothing else.
type Observed struct {
	// Now is the time of the decision.
	Now time.Time
	// Synced says the watcher has read every value it watches once, so
	// Notices is all that is active, not only what has been seen so far.
	Synced bool
	// Notices are the active notices, by ID, as the watcher reported them
	// (Detected: when this agent first saw each). Decide gives them their
	// deadlines (withDeadline).
	Notices map[string]Tracked
	// Node is the agent's Node as last seen by its watch; nil until the
	// watch has listed it. lastcall's cordon record and condition are read
	// from it, never assumed from the reply of a write.
	Node *corev1.Node
	// Foreign says which signs on Node count as another tool taking the
	// node away (Config.Foreign).
	Foreign ForeignConfig
	// Lead is how long before its deadline a drain starts (Config.DrainLead):
	// a drain notice further ahead cordons the node, but the workers are
	// told and the pods evicted only from then on. Zero: at once.
	Lead time.Duration
}

// Desired is what the node and the sidecars should be, given Observed.
type Desired struct {
	// Cordon says lastcall's cordon should be on the node: some notice is
	// active whose action is cordon or drain.
	Cordon bool
	// Seen are the first sightings of the active notices, which
	// lastcall's cordon record keeps (drainer.Record.Seen), sorted by ID.
	Seen []drainer.Sighting
	// Uncordon says lastcall's cordon, if any, should be undone and the
	// node condition cleared: the metadata confirms no notice is active.
	Uncordon bool
	// Drain is the notice whose deadline the drain works to, the earliest
	// among the active drain notices within Lead of their deadline; nil:
	// no drain.
	Drain *watcher.Notice
	// Condition is the notice the node condition names while notices are
	// active: Drain, or else the earliest other notice; nil: none.
	Condition *watcher.Notice
	// Tell is what every sidecar should be told; nil: nothing yet (the
	// agent does not know the node's state, and sidecars keep what they
	// were told before).
	Tell *wire.NodeState
	// Wake is when this decision changes by the clock alone (a drain
	// notice comes within Lead); zero: never.
	Wake time.Time
	// Foreign are the signs on the node that another tool is taking it
	// away (ForeignSignals). They tell the workers to drain when no drain
	// notice of lastcall's own does; lastcall neither cordons nor evicts
	// for them.
	Foreign []Foreign
	// ForeignCondition, when no notice of lastcall's own is active and
	// another tool takes the node, is what the node condition says: which
	// tool (reason DrainBy<Tool>) and what was seen; nil otherwise.
	ForeignCondition *ForeignLabel
}

// Decide is the agent's one decision: from everything observed to what the
// node and the sidecars should be. It is pure. See the package
// documentation for the lifecycle it implements and its invariants.
func Decide(o Observed) Desired {
	var rec *drainer.Record
	if o.Node != nil {
		if r, ok := drainer.RecordOf(o.Node); ok {
			rec = &r
		}
	}
	var d Desired
	var drains, others, later []watcher.Notice
	for _, t := range o.Notices {
		n := withDeadline(t.Notice, rec)
		d.Seen = append(d.Seen, drainer.Sighting{ID: n.ID, Detected: n.Detected})
		switch t.Action {
		case ActionDrain:
			if o.Lead > 0 && n.Deadline.Sub(o.Now) > o.Lead {
				later = append(later, n)
				continue
			}
			drains = append(drains, n)
		case ActionCordon:
			others = append(others, n)
		}
	}
	slices.SortFunc(d.Seen, func(a, b drainer.Sighting) int { return cmp.Compare(a.ID, b.ID) })
	d.Cordon = len(d.Seen) > 0
	d.Uncordon = o.Synced && !d.Cordon
	d.Drain = earliest(drains)
	if next := earliest(later); next != nil {
		d.Wake = next.Deadline.Add(-o.Lead)
	}
	d.Condition = d.Drain
	if d.Condition == nil {
		d.Condition = earliest(append(later, others...))
	}
	d.Foreign = ForeignSignals(o.Node, o.Foreign)
	switch {
	case d.Drain != nil:
		st := wire.NodeState{
			Phase: wire.PhaseDraining, Reason: string(d.Drain.Kind), Source: string(d.Drain.Source),
			NoticeID: d.Drain.ID, Deadline: d.Drain.Deadline,
		}
		d.Tell = &st
	case len(d.Foreign) > 0:
		// Another tool drains the node: its evictions will come, with no
		// time known in advance (each pod's sidecar is handed its own stop
		// time once its deletion starts). The first sign, in a stable
		// order, names the tool.
		l := o.Foreign.Label(d.Foreign[0])
		d.Tell = &wire.NodeState{Phase: wire.PhaseDraining, Reason: l.Reason, Source: l.Source, NoticeID: "node:" + d.Foreign[0].Signal}
		if d.Condition == nil {
			d.ForeignCondition = &l
		}
	case o.Synced:
		// Cordon-only notices are advisory (an AWS rebalance
		// recommendation), and a drain notice far ahead (an AWS scheduled
		// event days away) is not due yet: workers keep working; the
		// cordon keeps new pods away.
		d.Tell = &wire.NodeState{Phase: wire.PhaseRunning}
	}
	return d
}

// PodDeadlines returns, for each pod on the node, when it is stopped at the
// latest, where that is known: the plan's StopBy for a pod the drain of
// plan (nil: none) evicts, or the end of the pod's deletion
// (deletionTimestamp) once it is being deleted, by lastcall or by anyone,
// whichever is first. A pod the drain leaves (DaemonSet, mirror) has none:
// it runs until the machine stops, the node's deadline. It is pure.
func PodDeadlines(plan *drainer.Plan, pods []corev1.Pod, self types.NamespacedName) map[types.UID]time.Time {
	out := make(map[types.UID]time.Time, len(pods))
	for i := range pods {
		p := &pods[i]
		var t time.Time
		if _, skip := drainer.SkipReasonOf(p, self); plan != nil && !skip {
			t = plan.StopBy(p)
		}
		if del := p.DeletionTimestamp; del != nil && (t.IsZero() || del.Time.Before(t)) {
			t = del.Time
		}
		if !t.IsZero() {
			out[p.UID] = t
		}
	}
	return out
}

// earliest returns the notice with the earliest deadline (ties broken by
// ID, so the choice is stable), or nil.
func earliest(ns []watcher.Notice) *watcher.Notice {
	if len(ns) == 0 {
		return nil
	}
	n := slices.MinFunc(ns, func(a, b watcher.Notice) int {
		if c := a.Deadline.Compare(b.Deadline); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return &n
}

// sameWord reports whether two states tell sidecars the same thing,
// generations aside.
func sameWord(a, b wire.NodeState) bool {
	a.Generation, b.Generation = 0, 0
	return a.Phase == b.Phase && a.Reason == b.Reason && a.Source == b.Source &&
		a.NoticeID == b.NoticeID && a.Deadline.Equal(b.Deadline)
}

// withDeadline returns n with the deadline the agent works to. A notice
// seen before, by this agent or an earlier run, counts from its first
// sighting (rec.Seen, kept in lastcall's cordon record on the node): a GCE
// notice's deadline is its detection plus the window, and an advisory
// notice's (no deadline of its own) detection plus advisoryTimeout. A
// sighting older than the notice's window is not this notice's (a
// maintenance event that passed while its record stayed) and is ignored.
func withDeadline(n watcher.Notice, rec *drainer.Record) watcher.Notice {
	window := advisoryTimeout
	relative := n.Deadline.IsZero() || n.Source == watcher.SourceGCE
	if !n.Deadline.IsZero() {
		window = n.Deadline.Sub(n.Detected)
	}
	if rec != nil {
		seen, ok := rec.Seen[n.ID]
		if !ok && rec.Seen == nil && n.Source == watcher.SourceGCE && rec.Source == string(n.Source) {
			seen, ok = rec.Time, !rec.Time.IsZero() // a record of an earlier version: its cordon's time
		}
		if age := n.Detected.Sub(seen); ok && age > 0 && (!relative || age < window) {
			n.Detected = seen
		}
	}
	if relative {
		n.Deadline = n.Detected.Add(window)
	}
	return n
}

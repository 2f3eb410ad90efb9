package agent

import (
	"cmp"
	"slices"
	"time"

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
	// Notices are the active notices, by ID. Their deadlines are set:
	// notices without one (AWS rebalance) get Detected + advisoryTimeout.
	Notices map[string]Tracked
	// RecordKnown says the node has been read (at start, or written since),
	// so Record says whether lastcall's cordon is on it.
	RecordKnown bool
	// Record is lastcall's cordon on the node, nil when there is none.
	Record *drainer.Record
}

// Desired is what the node and the sidecars should be, given Observed.
type Desired struct {
	// Cordon says lastcall's cordon should be on the node: some notice is
	// active whose action is cordon or drain.
	Cordon bool
	// Uncordon says lastcall's cordon, if any, should be undone and the
	// node condition cleared: the metadata confirms no notice is active.
	Uncordon bool
	// Drain is the notice whose deadline the drain works to, the earliest
	// among the active drain notices; nil: no drain.
	Drain *watcher.Notice
	// Condition is the notice the node condition names while notices are
	// active: Drain, or else the earliest cordon notice; nil: none.
	Condition *watcher.Notice
	// Tell is what every sidecar should be told; nil: nothing yet (the
	// agent does not know the node's state, and sidecars keep what they
	// were told before).
	Tell *wire.NodeState
}

// Decide is the agent's one decision: from everything observed to what the
// node and the sidecars should be. It is pure. See the package
// documentation for the lifecycle it implements and its invariants.
func Decide(o Observed) Desired {
	var drains, cordons []watcher.Notice
	for _, t := range o.Notices {
		switch t.Action {
		case ActionDrain:
			drains = append(drains, t.Notice)
		case ActionCordon:
			cordons = append(cordons, t.Notice)
		}
	}
	var d Desired
	d.Cordon = len(drains)+len(cordons) > 0
	d.Uncordon = o.Synced && !d.Cordon
	d.Drain = earliest(drains)
	d.Condition = d.Drain
	if d.Condition == nil {
		d.Condition = earliest(cordons)
	}
	switch {
	case d.Drain != nil:
		st := wire.NodeState{
			Phase: wire.PhaseDraining, Reason: string(d.Drain.Kind), Source: string(d.Drain.Source),
			NoticeID: d.Drain.ID, Deadline: d.Drain.Deadline,
		}
		d.Tell = &st
	case o.Synced:
		// Cordon-only notices are advisory (an AWS rebalance
		// recommendation): the machine may live for hours, so workers keep
		// working; the cordon keeps new pods away.
		d.Tell = &wire.NodeState{Phase: wire.PhaseRunning}
	}
	return d
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

// withDeadline returns n with the deadline the agent works to: a notice
// without one (advisory) gets detected + advisoryTimeout; a GCE notice seen
// again by a restarted agent keeps the deadline its first sighting gave, if
// rec (the cordon record the earlier run left) is recent enough to be that
// sighting.
func withDeadline(n watcher.Notice, rec *drainer.Record) watcher.Notice {
	if n.Deadline.IsZero() {
		n.Deadline = n.Detected.Add(advisoryTimeout)
	}
	if rec == nil || rec.Time.IsZero() || n.Source != watcher.SourceGCE || rec.Source != string(n.Source) {
		return n
	}
	// GCE gives no time of its own: the deadline is detection + window.
	// The record is that of this preemption only if it is younger than the
	// window; an older one is left from an earlier notice (a maintenance
	// event that passed) and would put the deadline in the past.
	window := n.Deadline.Sub(n.Detected)
	if age := n.Detected.Sub(rec.Time); age >= 0 && age < window {
		n.Deadline = rec.Time.Add(window)
	}
	return n
}

package watcher

import (
	"fmt"
	"time"
)

// Source names where a Notice came from.
type Source string

// The metadata sources lastcall understands.
const (
	SourceGCE   Source = "gce"
	SourceAWS   Source = "aws"
	SourceAzure Source = "azure"
	SourceSim   Source = "sim"
)

// Kind says what is about to happen to the machine.
type Kind string

// The kinds of notice. Preemption, SpotInterruption and Termination end the
// machine at the deadline; Rebalance is advisory (the interruption may never
// follow); Maintenance may end or pause the machine and may be canceled.
const (
	KindPreemption       Kind = "preemption"
	KindSpotInterruption Kind = "spot-interruption"
	KindRebalance        Kind = "rebalance"
	KindMaintenance      Kind = "maintenance"
	KindTermination      Kind = "termination"
)

// State is the lifecycle of one notice, identified by its ID.
type State string

// A notice is Active when first seen. Canceled withdraws an earlier Active
// notice with the same ID (an AWS scheduled event canceled or completed, a GCE
// maintenance event back to NONE): lastcall undoes what it did for it.
// Informational notices ask for nothing (GCE live migration).
//
// StateSynced is not the state of a notice but a marker a Watcher sends
// once, after its first complete read of every value it watches: every
// notice active at that read was sent before it. Only Source is set. Until
// the marker, a consumer knows what the metadata announced, not what it does
// not: a cordon left by an earlier run may be undone only after it.
const (
	StateActive        State = "active"
	StateCanceled      State = "canceled"
	StateInformational State = "informational"
	StateSynced        State = "synced"
)

// Synced returns the StateSynced marker of source.
func Synced(source Source) Notice {
	return Notice{Source: source, State: StateSynced}
}

// Notice is one termination notice from a metadata source. Every later step
// works from Deadline, never from a fixed timeout.
type Notice struct {
	// Source is the metadata service the notice came from.
	Source Source
	// Kind says what will happen to the machine.
	Kind Kind
	// State says whether the notice is new, withdrawn or only informational.
	State State
	// ID is stable across repeated reads of the same event, so consumers can
	// de-duplicate; a restarted agent computes the same ID for the same event.
	ID string
	// Action is the source's own word for what will happen, when it gives one
	// (AWS: terminate, stop, hibernate; GCE: TERMINATE_ON_HOST_MAINTENANCE).
	Action string
	// Detected is when this process first saw the notice.
	Detected time.Time
	// Deadline is when the machine is expected to go away. It is zero when
	// the source gives none: an AWS rebalance recommendation (advisory) and
	// most Canceled notices.
	Deadline time.Time
	// Raw is the metadata payload the notice was built from.
	Raw []byte
}

// String formats the notice for logs.
func (n Notice) String() string {
	return fmt.Sprintf("%s/%s %s id=%s deadline=%s", n.Source, n.Kind, n.State, n.ID, n.Deadline.Format(time.RFC3339Nano))
}

// Remaining returns the time left before the deadline as seen at now;
// negative once the deadline has passed.
func (n Notice) Remaining(now time.Time) time.Duration {
	return n.Deadline.Sub(now)
}

package worker

import "github.com/lastcall-dev/lastcall/sidecar/wire"

// State is what the sidecar shows its workers; see wire.State.
type State = wire.State

// Phase is what workers should be doing; see wire.Phase.
type Phase = wire.Phase

// The phases; see wire.PhaseRunning and the others.
const (
	PhaseRunning  = wire.PhaseRunning
	PhaseDraining = wire.PhaseDraining
	PhaseUnknown  = wire.PhaseUnknown
)

// ReasonPodTerminating is the reason of a drain started by the pod's own
// deletion rather than by a node notice.
const ReasonPodTerminating = wire.ReasonPodTerminating

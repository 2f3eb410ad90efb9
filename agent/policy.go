package agent

import (
	"fmt"
	"strings"

	"github.com/lastcall-dev/lastcall/watcher"
)

// Action is what the agent does for a notice of some kind.
type Action string

// The actions, from most to least.
const (
	// ActionDrain cordons the node, tells the sidecars and evicts the pods.
	ActionDrain Action = "drain"
	// ActionCordon cordons the node and tells the sidecars, evicting nothing.
	ActionCordon Action = "cordon"
	// ActionNone only logs and records an Event.
	ActionNone Action = "none"
)

// ParseAction parses a flag value.
func ParseAction(s string) (Action, error) {
	switch a := Action(strings.ToLower(strings.TrimSpace(s))); a {
	case ActionDrain, ActionCordon, ActionNone:
		return a, nil
	}
	return "", fmt.Errorf("unknown action %q: want drain, cordon or none", s)
}

// Policies maps a notice kind to the action the agent takes.
type Policies map[watcher.Kind]Action

// DefaultPolicies drains on every notice that ends the machine or may
// (maintenance), and only cordons on an AWS rebalance recommendation, which
// is advisory: the interruption may never follow.
func DefaultPolicies() Policies {
	return Policies{
		watcher.KindPreemption:       ActionDrain,
		watcher.KindSpotInterruption: ActionDrain,
		watcher.KindTermination:      ActionDrain,
		watcher.KindMaintenance:      ActionDrain,
		watcher.KindRebalance:        ActionCordon,
	}
}

// For returns the action for kind: the policy's, else drain, because an
// unknown notice is most likely one more way for the machine to go away.
func (p Policies) For(kind watcher.Kind) Action {
	if a, ok := p[kind]; ok {
		return a
	}
	return ActionDrain
}

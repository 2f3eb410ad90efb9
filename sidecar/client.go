package sidecar

import (
	"context"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/worker"
)

// DefaultAddr is where the sidecar serves its workers unless told otherwise.
const DefaultAddr = worker.DefaultAddr

// Client talks to the sidecar of the worker's pod; see worker.Client.
// Workers should import package sidecar/worker, which has no agent-side
// dependencies.
type Client = worker.Client

// DrainingError is the cause of a context returned by Client.Draining.
type DrainingError = worker.DrainingError

// ErrDraining and ErrDeadline are worker.ErrDraining and worker.ErrDeadline.
var (
	ErrDraining = worker.ErrDraining
	ErrDeadline = worker.ErrDeadline
)

// NewClient is worker.NewClient.
func NewClient(addr string) (*Client, error) { return worker.NewClient(addr) }

// DrainingState is worker.DrainingState.
func DrainingState(ctx context.Context) (State, bool) { return worker.DrainingState(ctx) }

// WaitResumed is worker.WaitResumed.
func WaitResumed(ctx, drain context.Context) error { return worker.WaitResumed(ctx, drain) }

// UntilDeadline is worker.UntilDeadline.
func UntilDeadline(ctx, drain context.Context, margin time.Duration) (context.Context, context.CancelFunc) {
	return worker.UntilDeadline(ctx, drain, margin)
}

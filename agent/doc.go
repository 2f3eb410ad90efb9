// Package agent is the node agent's core: notices in, then, for each one,
// at once and in parallel, tell the sidecars, cordon and taint the node,
// record an Event and the PreemptionImminent node condition, and send the
// optional webhook; then drain against the notice's deadline.
//
// The package declares the interfaces it consumes (Drainer, Notifier);
// drainer.Drainer and the sidecar package provide them. It holds no flags
// and reads no environment: cmd/node-agent parses those and passes values
// in.
package agent

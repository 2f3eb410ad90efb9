// Package drainer empties a node before a deadline.
//
// Cordon marks the node unschedulable, taints it with lastcall.dev/draining
// and labels it out of external load balancers, recording on the node which
// of those changes lastcall made, so that Uncordon undoes exactly those and
// nothing an operator did. Drain evicts the node's pods through the Eviction
// API in tiers (ordinary workloads first, system-critical pods last), gives
// each pod a grace period that ends before the deadline, retries evictions
// that a PodDisruptionBudget refuses until a cut-off, then deletes or leaves
// those pods as the Policy says. Every wait is bounded by the deadline; Drain
// can be run again on the same node and carries on from where an earlier run
// stopped.
//
// The drainer uses the client it is given as it is: build that client
// without a client-side rate limit (rest.Config QPS -1), or the limiter, not
// the apiserver, decides how long a drain takes.
package drainer

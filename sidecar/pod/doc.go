// Package pod is the sidecar process that runs in every worker pod: it
// subscribes to the node agent's Hub (package sidecar) from the pod's IP,
// and shows the workers beside it whether to run or drain, through
//
//   - a localhost HTTP API with a long-poll (see package wire),
//   - <dir>/state.json, written atomically, and <dir>/draining, present only
//     while draining, in a shared emptyDir for shell and cron workers,
//   - an optional signal (for example SIGTSTP, Sidekiq's "quiet") to the
//     worker process, found by name in /proc (needs shareProcessNamespace).
//
// It forwards the workers' reports (done, messages in flight) to the Hub so
// that the agent can evict the pod early. Pod deletion for any reason drains
// too: the workers' preStop hook (GET /v1/prestop, or the binary's prestop
// subcommand) and SIGTERM to the sidecar both call Terminate, which drains
// with reason pod-terminating and waits until the workers are done or the
// timeout runs out.
//
// It fails open: when the agent cannot be reached the state is unknown, not
// draining, and workers keep working; a drain the agent announced stays on
// until the agent says otherwise. The package imports nothing outside the
// standard library and package wire, so the binary stays small.
package pod

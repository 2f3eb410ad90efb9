// Package sidecar holds both ends of lastcall's node-local path from the
// node agent to the workers:
//
//   - Hub, the node agent's endpoint that the sidecar in every worker pod
//     on the node subscribes to (long-poll over HTTP on the node's IP). It
//     satisfies agent.Notifier: Draining and Resumed hand the new state to
//     every waiting sidecar at once, with no apiserver on the path, and
//     block until each has it. It takes the pods' reports (workers done,
//     messages in flight) only from the pod they name.
//   - Client, for Go workers: a context cancelled when draining starts,
//     and the calls that report done and in-flight counts. It lives in
//     package sidecar/worker, which has none of this package's
//     dependencies; workers should import that one.
//
// The sidecar process itself (subscription, the workers' localhost API, the
// state file, the signal, the preStop hook) is package sidecar/pod, and the
// wire format is package sidecar/wire; both stay free of this package's
// dependencies (Prometheus, watcher) so that the sidecar binary stays small.
//
// State, Phase and the phase constants are aliases of sidecar/wire's, so
// that workers need only this package.
package sidecar

// Package wire is the node-local protocol of lastcall's sidecars: the
// messages the node agent's Hub and the sidecar in each worker pod exchange,
// the state the sidecar shows its workers, and the paths both serve.
//
// It is a leaf package with no dependencies outside the standard library, so
// that the sidecar binary, which imports it, stays small: the Hub's end lives
// in package sidecar, the sidecar's end in package sidecar/pod.
//
// # Agent ↔ sidecar
//
// The agent serves, on the node's IP (hostNetwork):
//
//	GET /v1/pods/{namespace}/{name}/state?generation=N&wait=30s
//
// answers at once with a NodeState when the Hub's generation differs from N
// (N absent or 0: always), else holds the request until the state changes,
// wait runs out (then it answers with the unchanged state) or the Hub
// closes. wait is at most MaxWait.
//
//	PUT /v1/pods/{namespace}/{name}/report   body: Report
//
// records the pod's own report (its workers are done, how many messages
// they hold); 204 on success. Every call must come from the named pod's IP:
// anything else is refused with 403 and a plain-text reason.
//
// # Sidecar ↔ workers
//
// The sidecar serves its workers on a loopback address (the full
// specification is sidecar/openapi.yaml, checked against the server by the
// tests of package sidecar/pod):
//
//	GET  /v1/state?generation=N&wait=30s   State, long-poll as above
//	POST /v1/done                          the pod's workers are done; 204
//	POST /v1/inflight?count=N              (or body {"inflight": N}) messages held; 204
//	GET  /v1/prestop?timeout=25s           preStop: drain, wait until done or timeout
//	GET  /healthz
//
// and mirrors State to <dir>/state.json, with <dir>/draining present only
// while draining. The timestamps workers see are in FormatTime's format.
package wire

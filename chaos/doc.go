// Package chaos holds the end-to-end chaos test: simulated nodes (real
// node-agent and sidecar processes, a real control plane) with workers
// consuming a NATS JetStream work queue, 30 % of the nodes preempted at
// once, and every message accounted for. The package has no code of its
// own; the cluster is internal/demo's, shared with `make demo`.
//
//	go test ./chaos/ -chaos.nodes=10 -chaos.scale=0.5
package chaos

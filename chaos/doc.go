// Package chaos holds the end-to-end chaos tests: simulated nodes (real
// node-agent and sidecar processes, a real control plane) with workers
// consuming a NATS JetStream work queue, and every message accounted for.
// TestPreemptManyAtOnce preempts 30 % of the nodes at once, with notice;
// TestAbruptKill kills nodes with none (agent, sidecars and workers at
// once, SIGKILL) while their workers hold messages, which the server
// redelivers after the consumer's AckWait (5 s here, -chaos.ackwait;
// JetStream's default is 30 s) to the surviving nodes. The package has no
// code of its own; the cluster is internal/demo's, shared with `make demo`.
//
//	go test ./chaos/ -chaos.nodes=10 -chaos.scale=0.5
//	go test ./chaos/ -run TestAbruptKill -chaos.kill=2
package chaos

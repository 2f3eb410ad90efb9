// Package demo runs a whole simulated spot cluster on one machine: a real
// control plane (internal/kubetest), an embedded NATS JetStream server with
// a work queue, and simulated nodes, each with the real node-agent process
// (--cloud=sim), a fake kubelet handing out its own loopback pod IPs, and
// worker pods made of the real sidecar process and workers (goroutines of
// this process) that pull from the stream through the sidecar contract.
//
// Both `make demo` (cmd/demo) and the chaos test (chaos/) use it: Start
// builds the cluster, Preempt sends a node its notice, and the Ledger says
// what happened to every message.
package demo

// Package examples holds workers that follow lastcall's sidecar contract
// (sidecar/openapi.yaml), one per directory: pubsub (Google Cloud Pub/Sub),
// sqs (AWS SQS), jetstream (NATS JetStream) with real queue clients, and
// python (standard library only), node (Node.js, no dependencies) and shell
// (curl and the flag file). Each stops pulling the moment its pod starts
// draining, finishes what fits before the deadline, hands back the rest at
// once, and tells the sidecar it is done. pod.yaml shows the pod they run in.
//
// The Go workers' tests run them against real servers with a real sidecar:
// the official Pub/Sub fake (pstest), fauxqs for SQS (make test installs it
// with npm from sqs/emulator) and an embedded NATS server. The Python, Node
// and shell workers are run by the tests of package sidecar.
//
// This is a module of its own so that lastcall's module does not depend on
// the queue SDKs.
package examples

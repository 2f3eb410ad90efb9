// Package examples holds workers that follow lastcall's sidecar contract
// with real queue clients, one per directory: pubsub (Google Cloud Pub/Sub),
// sqs (AWS SQS), jetstream (NATS JetStream) and shell (curl and the flag
// file). Each stops pulling the moment its node starts draining, finishes
// what fits before the deadline, hands back the rest, and tells the sidecar
// it is done. pod.yaml shows the pod they run in.
//
// This is a module of its own so that lastcall's module does not depend on
// the queue SDKs.
package examples

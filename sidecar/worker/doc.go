// Package worker is the Go client of the sidecar's workers' API (see
// sidecar/openapi.yaml): a context cancelled when draining starts, a
// context for work already pulled that ends before the drain's deadline,
// and the calls that report done and messages in flight.
//
// It imports only the standard library and package sidecar/wire, so a
// worker that uses it builds in no Prometheus, Kubernetes or NATS server
// code. Package sidecar re-exports it for code that already has the agent's
// side.
package worker

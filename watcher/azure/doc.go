// Package azure watches Azure Scheduled Events in the instance metadata
// service and turns the events that name this VM into watcher.Notices:
// Preempt (Spot eviction) is a preemption, Terminate a termination, Reboot
// and Redeploy maintenance, Freeze an informational pause. It also lets the
// agent acknowledge an event (Acknowledge) once the node is drained, so
// Azure may start it before NotBefore.
//
// It uses the standard library's HTTP client. Azure's metadata service has no
// long poll; events are polled (every second by default).
package azure

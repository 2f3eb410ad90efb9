// Package sim is a simulated metadata source for demos and tests. It sends
// the same watcher.Notices a cloud would, from a notice file it watches
// and/or from a small HTTP trigger (POST /notice) on an address the caller
// chooses.
//
// A notice is written as JSON, one object or an array of them:
//
//	{"kind": "preemption", "seconds": 30, "id": "demo-1"}
//	{"kind": "maintenance", "state": "canceled", "id": "demo-2"}
//	{"kind": "spot-interruption", "deadline": "2026-03-01T12:02:00Z", "source": "aws", "action": "terminate"}
//
// kind is required; state defaults to active; the deadline is either an
// RFC 3339 time or seconds from detection; id defaults to a hash of the
// object, so the same object always has the same ID; source defaults to sim.
package sim

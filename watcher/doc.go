// Package watcher turns a cloud's instance metadata into Notices: the one
// event type that tells the rest of lastcall that this machine is going away,
// why, and by when.
//
// The package holds the Notice type and the small Watcher contract only; it
// has no cloud code and no Kubernetes types. Each cloud lives in its own
// subpackage (gce, ec2, azure) and so does the simulated source used by demos
// and tests.
package watcher

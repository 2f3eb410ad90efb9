// Package detect finds out which cloud this node runs on, by asking the GCE,
// EC2 and Azure metadata services at once with one quick request each, and
// builds the matching watcher. The endpoints are options, so tests point the
// probes at loopback fakes; the cloud can also be forced, or the simulated
// source chosen, without probing.
package detect

// Package fleet simulates a spot fleet on one machine for `make fleet`: a
// real control plane (etcd, kube-apiserver with its default API Priority
// and Fairness, kube-controller-manager, kube-scheduler), nodes and pods
// kept alive by KWOK, a GCE or EC2 metadata server per node, and an
// observer that times what happens to each node after its notice.
//
// The agents themselves are not started here: the caller runs one real
// node-agent per node (cmd/node-agent's BenchmarkFleet) against the
// addresses this package hands out. The package is for that benchmark only.
package fleet

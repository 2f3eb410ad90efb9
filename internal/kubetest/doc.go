// Package kubetest runs a real Kubernetes control plane for lastcall's tests:
// etcd and kube-apiserver through controller-runtime's envtest, plus
// kube-controller-manager with only the disruption controller, so that
// PodDisruptionBudget status is computed and the Eviction API enforces it.
//
// A small Kubelet stands in for the node: it marks the pods bound to its node
// Running and Ready with an IP, and finishes each graceful deletion after the
// pod's grace period, or sooner when the test says so.
//
// The binaries come from `make testbin` (.testbin/ at the repository root, or
// the directory named by KUBEBUILDER_ASSETS). The package is for tests only.
package kubetest

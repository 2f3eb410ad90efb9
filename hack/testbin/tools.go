//go:build tools

// Package testbin records the main packages built into .testbin/ by
// hack/testbin.sh, so that go mod tidy keeps their requirements: the
// control plane the tests run, and the node components of the one-node
// cluster that make e2e runs, with the kubectl its scenarios drain it with.
package testbin

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

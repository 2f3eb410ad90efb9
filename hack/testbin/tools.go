//go:build tools

// Package testbin records the main packages built into .testbin/ by
// hack/testbin.sh, so that go mod tidy keeps their requirements.
package testbin

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)

//go:build tools

// Package testbin records the main packages that hack/testbin.sh builds
// into .testbin/v1.30.14/, so that go mod tidy keeps their requirements.
package testbin

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)

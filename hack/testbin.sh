#!/usr/bin/env bash
# Builds the control plane the tests run (etcd, kube-apiserver,
# kube-controller-manager) from the Go module proxy into .testbin/, unless the
# binaries of the pinned release are already there. Tests find them through
# KUBEBUILDER_ASSETS=.testbin.
set -euo pipefail

cd "$(dirname "$0")/.."
out=.testbin
kube_version=v1.34.4
stamp="$out/.built-$kube_version"

if [[ -f "$stamp" && -x "$out/etcd" && -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" ]]; then
	exit 0
fi

echo "testbin: building etcd, kube-apiserver and kube-controller-manager $kube_version (about 10 minutes on 2 cores, once)" >&2
start=$(date +%s)
mkdir -p "$out"
rm -f "$out"/.built-*

major=${kube_version#v}; major=${major%%.*}
minor=${kube_version#v*.}; minor=${minor%%.*}
ver=k8s.io/component-base/version
ldflags="-s -w -X $ver.gitVersion=$kube_version -X $ver.gitMajor=$major -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$kube_version -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(
	cd hack/testbin
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
)
mv "$tmp/kube-apiserver" "$tmp/kube-controller-manager" "$tmp/etcd" "$out/"
touch "$stamp"
echo "testbin: built in $(( $(date +%s) - start ))s" >&2

#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests run from the Go module proxy into
# .testbin/, unless those of the pinned release are already there.
#
#   hack/testbin.sh        etcd, kube-apiserver, kube-controller-manager: the
#                          control plane of `make test` (KUBEBUILDER_ASSETS)
#   hack/testbin.sh node   kubelet, kube-scheduler, kube-proxy as well: the
#                          one-node cluster of `make e2e`; and kubectl, whose
#                          drain its scenarios run
#   hack/testbin.sh oldest kube-apiserver and kube-controller-manager of the
#                          oldest Kubernetes minor the chart supports, into
#                          .testbin/$oldest_version/ (with a link to the etcd
#                          above): `make test-oldest` (module hack/testbin/v1.30)
set -euo pipefail

cd "$(dirname "$0")/.."
out=.testbin
module=hack/testbin
kube_version=v1.34.4
oldest_version=v1.30.14

if [[ ${1:-} == oldest ]]; then
	out=.testbin/$oldest_version
	module=hack/testbin/v1.30
	kube_version=$oldest_version
fi

major=${kube_version#v}; major=${major%%.*}
minor=${kube_version#v*.}; minor=${minor%%.*}
ver=k8s.io/component-base/version
ldflags="-s -w -X $ver.gitVersion=$kube_version -X $ver.gitMajor=$major -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$kube_version -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"

# build STAMP BINARY... builds the k8s.io/kubernetes commands BINARY... into
# $out unless STAMP and each of them are there.
build() {
	local stamp="$out/$1"; shift
	local have=1 b
	for b in "$@"; do [[ -x "$out/$b" ]] || have=0; done
	if [[ -f "$stamp" && $have == 1 ]]; then
		return 0
	fi
	echo "testbin: building $* $kube_version (a few minutes on 2 cores, once)" >&2
	local start tmp pkgs=()
	start=$(date +%s)
	mkdir -p "$out"
	rm -f "$stamp"
	tmp=$(mktemp -d)
	for b in "$@"; do
		[[ $b == etcd ]] || pkgs+=("k8s.io/kubernetes/cmd/$b")
	done
	(
		cd "$module"
		CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}"
		if [[ " $* " == *" etcd "* ]]; then
			CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
		fi
	) || { rm -rf "$tmp"; exit 1; }
	for b in "$@"; do mv "$tmp/$b" "$out/"; done
	rm -rf "$tmp"
	touch "$stamp"
	echo "testbin: built in $(( $(date +%s) - start ))s" >&2
}

if [[ ${1:-} == oldest ]]; then
	# etcd is that of the current release: the API of etcd 3.6 is the one
	# the older apiserver's etcd 3.5 client speaks.
	build ".built-$kube_version" kube-apiserver kube-controller-manager
	ln -sf ../etcd "$out/etcd"
	exit 0
fi
build ".built-$kube_version" etcd kube-apiserver kube-controller-manager
if [[ ${1:-} == node ]]; then
	build ".built-node-$kube_version" kubelet kube-scheduler kube-proxy
	build ".built-kubectl-$kube_version" kubectl
fi

#!/usr/bin/env bash
# make e2e: brings the one-node cluster up (hack/cluster.sh), pushes the
# images and the chart to its registry on loopback (`make push`), runs the
# e2e tests on it, and brings it down again whatever happens (trap).
# Images and binaries come from `make image e2e-images` and hack/testbin.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${LASTCALL_CLUSTER_DIR:-/var/lib/lastcall-e2e}
registry=${LASTCALL_REGISTRY:?LASTCALL_REGISTRY must be set (make e2e sets it)}
images=bin/images
start=$SECONDS

./hack/cluster.sh down
trap './hack/cluster.sh down' EXIT
./hack/cluster.sh up "$images/pause.tar" "$images/e2e-worker.tar" "$images/e2e-nth.tar"
make --no-print-directory push REGISTRY="$registry"
LASTCALL_E2E_KUBECONFIG=$dir/admin.kubeconfig \
LASTCALL_E2E_KUBELET_LOG=$dir/log/kubelet.log \
LASTCALL_E2E_AUDIT_LOG=$dir/log/audit.log \
LASTCALL_E2E_REGISTRY=$registry \
	go test -count=1 -v -timeout 25m ./e2e/ "$@"
echo "e2e: passed; cluster up, tests and teardown took $((SECONDS - start))s" >&2

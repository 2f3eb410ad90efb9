#!/usr/bin/env bash
# make e2e: brings the one-node cluster up (hack/cluster.sh), runs the e2e
# tests on it, and brings it down again whatever happens (trap).
# Images and binaries come from `make image e2e-images` and hack/testbin.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${LASTCALL_CLUSTER_DIR:-/var/lib/lastcall-e2e}
images=bin/images
start=$SECONDS

./hack/cluster.sh down
trap './hack/cluster.sh down' EXIT
./hack/cluster.sh up "$images/pause.tar" "$images/lastcall.tar" "$images/sidecar.tar" "$images/e2e-worker.tar" "$images/e2e-nth.tar"
LASTCALL_E2E_KUBECONFIG=$dir/admin.kubeconfig \
LASTCALL_E2E_KUBELET_LOG=$dir/log/kubelet.log \
LASTCALL_E2E_AUDIT_LOG=$dir/log/audit.log \
	go test -count=1 -v -timeout 25m ./e2e/ "$@"
echo "e2e: passed; cluster up, tests and teardown took $((SECONDS - start))s" >&2

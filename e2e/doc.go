// Package e2e holds the end-to-end test of lastcall on a real node: a
// one-node cluster with a real kubelet, containerd and runc that
// hack/cluster.sh brings up, the chart installed with helm, worker pods
// injected by the real webhook, and real preemptions.
//
// `make e2e` brings the cluster up, runs the test and brings it down; it
// sets LASTCALL_E2E_KUBECONFIG. Without it (`go test ./...`) the test is
// skipped, and says so.
//
// The worker of the test's pods is e2e/worker.
package e2e

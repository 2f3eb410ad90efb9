// Package charts holds lastcall's Helm chart, in lastcall/, and its tests;
// it has no Go code of its own.
//
// The tests run a helm built from the Go module proxy (`make test` builds it
// into .tools/helm; the environment variable LASTCALL_HELM names another
// one): `helm lint` and `helm template` of the default values and of the
// documented variants in testdata/, values the schema must refuse, the
// ClusterRole compared with agent.Permissions, the README's table of values
// compared with values.yaml, and the rendered objects applied to a real
// kube-apiserver (internal/kubetest), where the node-restriction admission
// policy is shown to confine the agent's token to its own node.
package charts

// Package drain holds only a benchmark: the same 110-pod drain done by
// k8s.io/kubectl/pkg/drain at client-go's default rate limits (QPS 5,
// burst 10, what aws-node-termination-handler uses) and by lastcall's
// drainer, side by side against the same real apiserver. kubectl is a
// test-only requirement of this package; no other package imports it.
package drain

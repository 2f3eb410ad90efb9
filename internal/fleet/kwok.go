package fleet

import _ "embed"

// kwokStages are KWOK's configuration (64 pods handled in parallel, not
// its default 4: a thousand kubelets act at once) and its stages for the
// simulated nodes and pods, from KWOK v0.8.0's kustomize/stage:
// node-initialize (fast), the node heartbeat with a lease, pod-ready
// (fast), and a pod-delete of our own. A pod asked to leave is gone at a
// random time between its annotation fleet.lastcall.dev/stop-after (its
// workers finishing their task; 1 s if none) and the end of its grace
// period, and at the end of its grace period at the latest, when a kubelet
// would kill it.
//
//go:embed kwok-stages.yaml
var kwokStages string

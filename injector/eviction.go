package injector

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// NodeNameExtra is the user-info key under which the apiserver puts the
// node of a pod-bound service-account token (Kubernetes >= 1.30).
const NodeNameExtra = "authentication.kubernetes.io/node-name"

// EvictionGuard is the admission step that confines the node agent's
// evictions to the pods bound to its own node, as the chart's admission
// policies confine its node updates and pod deletions. A policy cannot do
// it: an Eviction does not name its pod's node, so the guard reads the pod.
// The chart sends it only the agent's evictions (matchConditions on its
// service account).
//
// Anything in the cluster can reach the guard's port, not only the
// apiserver, and post a review it made up. The guard therefore acts only
// for the user it guards: any other user's eviction is allowed at once,
// without reading anything, and what it answers for the agent's says no
// more than the apiserver's own answer to the eviction would.
type EvictionGuard struct {
	client kubernetes.Interface
	user   string
	log    *slog.Logger
}

// NewEvictionGuard returns the guard of user's evictions (the agent's
// service account, system:serviceaccount:NAMESPACE:NAME); client reads
// pods. An empty user guards every eviction sent to it.
func NewEvictionGuard(client kubernetes.Interface, user string, log *slog.Logger) *EvictionGuard {
	return &EvictionGuard{client: client, user: user, log: log}
}

// ServeHTTP implements http.Handler.
func (g *EvictionGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveReview(w, r, g.log, func(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		return g.review(ctx, req)
	})
}

func (g *EvictionGuard) review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Resource.Resource != "pods" || req.SubResource != "eviction" || req.Operation != admissionv1.Create {
		return allow
	}
	if g.user != "" && req.UserInfo.Username != g.user {
		return allow // not the agent: its evictions are not the guard's
	}
	nodes := req.UserInfo.Extra[NodeNameExtra]
	if len(nodes) != 1 || nodes[0] == "" {
		return deny(http.StatusForbidden, "lastcall: the agent's token names no node; it may evict only with the pod-bound token the kubelet mounts")
	}
	node := nodes[0]
	pod, err := g.client.CoreV1().Pods(req.Namespace).Get(ctx, req.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return allow // the eviction answers 404 itself
	case err != nil:
		// Unavailable, not refused: the agent retries until its deadline.
		g.log.Warn("cannot read the pod of an eviction", "namespace", req.Namespace, "name", req.Name, "err", err)
		return deny(http.StatusServiceUnavailable, fmt.Sprintf("lastcall: cannot read pod %s/%s to check its node: %v", req.Namespace, req.Name, err))
	case pod.Spec.NodeName != node:
		g.log.Warn("eviction of a pod on another node refused", "node", node, "namespace", req.Namespace, "name", req.Name, "pod_node", pod.Spec.NodeName)
		return deny(http.StatusForbidden, fmt.Sprintf("lastcall: the agent on node %s may evict only pods bound to it, not %s/%s", node, req.Namespace, req.Name))
	}
	return allow
}

package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	authv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastcall-dev/lastcall/kubeclient"
)

// Permission is one thing the agent asks the apiserver to do.
type Permission struct {
	// Verb, Group, Resource and Subresource name the request.
	Verb, Group, Resource, Subresource string
	// Why says what the agent needs it for.
	Why string
}

// String formats p like an RBAC rule.
func (p Permission) String() string {
	r := p.Resource
	if p.Subresource != "" {
		r += "/" + p.Subresource
	}
	if p.Group != "" {
		r += "." + p.Group
	}
	return p.Verb + " " + r
}

// Permissions lists what the agent needs; the Helm chart's ClusterRole
// grants exactly these.
func Permissions() []Permission {
	return []Permission{
		{Verb: "get", Resource: "nodes", Why: "read its node"},
		{Verb: "list", Resource: "nodes", Why: "watch its node (field selector metadata.name)"},
		{Verb: "watch", Resource: "nodes", Why: "watch its node (field selector metadata.name)"},
		{Verb: "update", Resource: "nodes", Why: "cordon, taint and label its node"},
		{Verb: "patch", Resource: "nodes", Subresource: "status", Why: "set the PreemptionImminent condition"},
		{Verb: "list", Resource: "pods", Why: "list the pods on its node"},
		{Verb: "watch", Resource: "pods", Why: "watch the pods on its node"},
		{Verb: "create", Resource: "pods", Subresource: "eviction", Why: "evict pods"},
		{Verb: "delete", Resource: "pods", Why: "delete pods a budget still blocks at the cut-off"},
		{Verb: "create", Resource: "events", Why: "record Events on its node"},
		{Verb: "patch", Resource: "events", Why: "record repeated Events on its node"},
	}
}

// CheckAccess asks the apiserver (SelfSubjectAccessReview) whether the
// agent's identity may do each of Permissions on node, and returns an error
// naming every one it may not.
func CheckAccess(ctx context.Context, client kubeclient.Interface, node string) error {
	var missing []string
	for _, p := range Permissions() {
		attrs := &authv1.ResourceAttributes{Verb: p.Verb, Group: p.Group, Resource: p.Resource, Subresource: p.Subresource}
		if p.Resource == "nodes" {
			attrs.Name = node
		}
		review, err := client.CreateSelfSubjectAccessReview(ctx, &authv1.SelfSubjectAccessReview{
			Spec: authv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("check access %s: %w", p, err)
		}
		if !review.Status.Allowed {
			missing = append(missing, fmt.Sprintf("%s (to %s)", p, p.Why))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("RBAC: the agent may not %s", strings.Join(missing, "; "))
	}
	return nil
}

// CheckUntilOK runs check until it passes or ctx ends, and reports each
// result (nil once it passes). The first run waits a random time below
// spread, so that a fleet of agents starting together (a new install, a
// rollout, a control-plane restart) does not ask the apiserver all at once;
// a failed run, whether refused or timed out in a busy apiserver, is run
// again with jittered backoff from one second up to max: an RBAC fix or an
// apiserver that recovers makes the agent ready without a restart.
func CheckUntilOK(ctx context.Context, spread, max time.Duration, check func(context.Context) error, report func(error)) {
	wait := time.Duration(0)
	if spread > 0 {
		wait = rand.N(spread)
	}
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		err := check(ctx)
		if ctx.Err() != nil {
			return
		}
		report(err)
		if err == nil {
			return
		}
		wait = backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, max)
	}
}

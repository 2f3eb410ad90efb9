package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/kubeclient"
	"github.com/lastcall-dev/lastcall/watcher"
)

// ConditionType is the node condition the agent sets while a notice is
// active, for autoscalers and dashboards.
const ConditionType corev1.NodeConditionType = "PreemptionImminent"

// setCondition sets (or clears) the PreemptionImminent condition with a
// strategic merge patch of the node's status, retrying transient errors
// until ctx is done.
func (a *Agent) setCondition(ctx context.Context, n watcher.Notice, imminent bool) error {
	patch, err := conditionPatch(n, imminent, a.Now())
	if err != nil {
		return err
	}
	return a.patchStatus(ctx, patch)
}

// patchCondition sets the node's PreemptionImminent condition to cond.
func (a *Agent) patchCondition(ctx context.Context, cond corev1.NodeCondition) error {
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return err
	}
	return a.patchStatus(ctx, patch)
}

// foreignCondition is the PreemptionImminent condition while another tool
// takes the node away: True, its reason naming the tool (DrainByKarpenter).
func foreignCondition(l ForeignLabel, at time.Time) corev1.NodeCondition {
	now := metav1.NewTime(at)
	return corev1.NodeCondition{Type: ConditionType, Status: corev1.ConditionTrue, Reason: l.ConditionReason, Message: l.Message,
		LastHeartbeatTime: now, LastTransitionTime: now}
}

// patchStatus sends a status patch of the node, retrying transient errors
// while ctx lasts.
func (a *Agent) patchStatus(ctx context.Context, patch []byte) error {
	backoff := wait.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 12, Cap: 2 * time.Second}
	// retry.OnError returns nil when the last error is a context error
	// (wait.Interrupted); keep the last error to not lose it.
	var last error
	err := retry.OnError(backoff, transient(ctx), func() error {
		// As long as a drain's calls: a shorter timeout cancels a
		// patch waiting its turn in the apiserver's queues
		// (drainer.DefaultCallTimeout).
		cctx, cancel := context.WithTimeout(ctx, drainer.DefaultCallTimeout)
		defer cancel()
		_, last = a.Client.PatchNode(cctx, a.cfg.Node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
		return last
	})
	if err != nil {
		return err
	}
	return last
}

// CheckCondition sends the patch that clears the PreemptionImminent
// condition of node as a server-side dry run (dryRun: All), which changes
// nothing: RBAC, admission policies and webhooks that would refuse the
// condition refuse it now.
func CheckCondition(ctx context.Context, client kubeclient.Interface, node string) error {
	patch, err := conditionPatch(watcher.Notice{}, false, time.Now())
	if err != nil {
		return err
	}
	_, err = client.PatchNode(ctx, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}, "status")
	if err != nil {
		return fmt.Errorf("check node condition of %s (dry run): %w", node, err)
	}
	return nil
}

// conditionPatch is the status patch that sets the PreemptionImminent
// condition for n, or clears it.
func conditionPatch(n watcher.Notice, imminent bool, at time.Time) ([]byte, error) {
	now := metav1.NewTime(at)
	cond := corev1.NodeCondition{
		Type:               ConditionType,
		Status:             corev1.ConditionTrue,
		Reason:             conditionReason(n.Kind),
		Message:            conditionMessage(n),
		LastHeartbeatTime:  now,
		LastTransitionTime: now,
	}
	if !imminent {
		cond.Status = corev1.ConditionFalse
		cond.Reason = "NoNotice"
		cond.Message = "no termination notice is active"
	}
	return json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
}

// transient says which errors are worth another try while ctx lasts.
func transient(ctx context.Context) func(error) bool {
	return func(err error) bool {
		if ctx.Err() != nil {
			return false
		}
		return !(apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsNotFound(err) ||
			apierrors.IsInvalid(err) || apierrors.IsBadRequest(err))
	}
}

func conditionReason(k watcher.Kind) string {
	switch k {
	case watcher.KindPreemption:
		return "Preemption"
	case watcher.KindSpotInterruption:
		return "SpotInterruption"
	case watcher.KindRebalance:
		return "RebalanceRecommendation"
	case watcher.KindMaintenance:
		return "Maintenance"
	case watcher.KindTermination:
		return "Termination"
	}
	return "Notice"
}

// NodeWatch is the agent's watch on its own Node: one object (field
// selector metadata.name), kept in an informer's cache. What lastcall
// applied to the node (its cordon record, taint, condition) is read from
// it, not assumed from the replies of its writes: a write can apply while
// its reply is lost, and other tools and operators change the node too.
type NodeWatch struct {
	node     string
	informer cache.SharedIndexInformer
}

// NewNodeWatch returns the watch of node; Run starts it.
func NewNodeWatch(client kubeclient.Interface, node string) *NodeWatch {
	only := fields.OneTermEqualSelector("metadata.name", node).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = only
			return client.ListNodes(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = only
			return client.WatchNodes(ctx, o)
		},
	}
	return &NodeWatch{node: node, informer: cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})}
}

// Run keeps the cache until ctx is done. It returns an error if the first
// list cannot complete before ctx is done.
func (w *NodeWatch) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.informer.RunWithContext(ctx)
	}()
	defer func() { <-done }()
	if !cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced) {
		return fmt.Errorf("node %s: cache never synced: %w", w.node, context.Cause(ctx))
	}
	<-ctx.Done()
	return nil
}

// Node returns the node as last seen, or nil before the first list (or if
// the node does not exist). The caller must not modify it.
func (w *NodeWatch) Node() *corev1.Node {
	if !w.informer.HasSynced() {
		return nil
	}
	obj, ok, err := w.informer.GetStore().GetByKey(w.node)
	if err != nil || !ok {
		return nil
	}
	return obj.(*corev1.Node)
}

// OnChange calls f, which must not block, whenever the node changes.
func (w *NodeWatch) OnChange(f func()) {
	_, _ = w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { f() },
		UpdateFunc: func(any, any) { f() },
		DeleteFunc: func(any) { f() },
	})
}

// conditionMessage is the PreemptionImminent condition's message for n.
func conditionMessage(n watcher.Notice) string {
	return fmt.Sprintf("%s notice %s from %s; node goes away at %s", n.Kind, n.ID, n.Source, n.Deadline.UTC().Format(time.RFC3339))
}

// conditionOf returns the node's PreemptionImminent condition, if any.
func conditionOf(node *corev1.Node) (corev1.NodeCondition, bool) {
	for _, c := range node.Status.Conditions {
		if c.Type == ConditionType {
			return c, true
		}
	}
	return corev1.NodeCondition{}, false
}

package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/lastcall-dev/lastcall/drainer"
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
	backoff := wait.Backoff{Duration: 50 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 12, Cap: 2 * time.Second}
	// retry.OnError returns nil when the last error is a context error
	// (wait.Interrupted); keep the last error to not lose it.
	var last error
	err = retry.OnError(backoff, transient(ctx), func() error {
		// As long as a drain's calls: a shorter timeout cancels a
		// patch waiting its turn in the apiserver's queues
		// (drainer.DefaultCallTimeout).
		cctx, cancel := context.WithTimeout(ctx, drainer.DefaultCallTimeout)
		defer cancel()
		_, last = a.Client.CoreV1().Nodes().Patch(cctx, a.cfg.Node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
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
func CheckCondition(ctx context.Context, client kubernetes.Interface, node string) error {
	patch, err := conditionPatch(watcher.Notice{}, false, time.Now())
	if err != nil {
		return err
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}, "status")
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
		Message:            fmt.Sprintf("%s notice %s from %s; node goes away at %s", n.Kind, n.ID, n.Source, n.Deadline.UTC().Format(time.RFC3339)),
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

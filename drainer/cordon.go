package drainer

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

const (
	// TaintKey is the taint lastcall puts on a node it drains (effect
	// Options.TaintEffect, NoSchedule by default); its value is the notice
	// source and kind, e.g. aws.spot-interruption (TaintValue).
	TaintKey = "lastcall.dev/draining"
	// OutOfServiceKey is Kubernetes' out-of-service taint: with it on a
	// node that is shut down, the volumes of its pods detach at once
	// instead of after six minutes.
	OutOfServiceKey = "node.kubernetes.io/out-of-service"
	// ExcludeLBLabel takes the node out of external load balancers.
	ExcludeLBLabel = "node.kubernetes.io/exclude-from-external-load-balancers"
	// RecordAnnotation holds, as JSON, which changes lastcall made to the
	// node, so that Uncordon reverts those and only those.
	RecordAnnotation = "lastcall.dev/cordon"
)

// Record is what lastcall changed on a node when it cordoned it. It is
// stored in RecordAnnotation.
type Record struct {
	// Unschedulable is true when lastcall set spec.unschedulable.
	Unschedulable bool `json:"unschedulable,omitempty"`
	// Taint is true when lastcall added the TaintKey taint.
	Taint bool `json:"taint,omitempty"`
	// Label is true when lastcall added ExcludeLBLabel.
	Label bool `json:"label,omitempty"`
	// OutOfService is true when lastcall added the OutOfServiceKey taint.
	OutOfService bool `json:"outOfService,omitempty"`
	// Source is the notice source that caused the cordon.
	Source string `json:"source"`
	// Time is when lastcall first cordoned the node.
	Time time.Time `json:"time"`
	// Seen holds, by notice ID, when each notice the cordon is for was
	// first detected, so that an agent that restarts works to the deadline
	// the first sighting gave (a GCE notice carries no time of its own),
	// not to one counted from its own start or from another notice's.
	Seen map[string]time.Time `json:"seen,omitempty"`
}

// Sighting is a notice's first detection, kept in Record.Seen.
type Sighting struct {
	// ID is the notice's stable ID.
	ID string
	// Detected is when the notice was first detected.
	Detected time.Time
}

// RecordOf returns the record lastcall left on node, and whether there is
// one. A record that does not parse counts as none.
func RecordOf(node *corev1.Node) (Record, bool) {
	raw, ok := node.Annotations[RecordAnnotation]
	if !ok {
		return Record{}, false
	}
	var r Record
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return Record{}, false
	}
	return r, true
}

// TaintValue is the TaintKey taint's value for a notice of kind from
// source: "source.kind", or source alone when kind is empty.
func TaintValue(source, kind string) string {
	if kind == "" {
		return source
	}
	return source + "." + kind
}

// Cordon marks node unschedulable, adds the TaintKey taint (value
// TaintValue(source, kind)) and ExcludeLBLabel, and records which of them
// lastcall added; what was already there is left alone and not recorded.
// It is safe to call again: a second call re-applies anything removed since
// and keeps the first record. seen, when given, are the first sightings of
// the notices the cordon is for, as the caller knows them (it reads them
// back from the record, and tells a notice that ended from one that came
// again under the same ID): Record.Seen becomes exactly those. It retries conflicts and transient
// apiserver errors until ctx is done. changed reports whether the node was
// updated.
func (d *Drainer) Cordon(ctx context.Context, node, source, kind string, seen ...Sighting) (changed bool, err error) {
	changed, err = d.updateNode(ctx, node, func(n *corev1.Node) bool { return d.cordon(n, source, kind, seen) })
	if err != nil {
		return false, fmt.Errorf("cordon node %s: %w", node, err)
	}
	return changed, nil
}

// cordon applies a cordon to n and reports whether it changed anything.
func (d *Drainer) cordon(n *corev1.Node, source, kind string, seen []Sighting) bool {
	rec, _ := RecordOf(n)
	mutated := false
	if rec.Source == "" {
		rec.Source = source
		rec.Time = d.now().UTC()
		mutated = true // the record itself is news
	}
	if len(seen) > 0 {
		next := make(map[string]time.Time, len(seen))
		for _, s := range seen {
			next[s.ID] = s.Detected.UTC()
		}
		if !maps.EqualFunc(next, rec.Seen, time.Time.Equal) {
			rec.Seen = next
			mutated = true
		}
	}
	if !n.Spec.Unschedulable {
		n.Spec.Unschedulable = true
		rec.Unschedulable = true
		mutated = true
	}
	if !hasTaint(n, TaintKey, d.effect) {
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: TaintKey, Value: TaintValue(source, kind), Effect: d.effect})
		rec.Taint = true
		mutated = true
	}
	if _, ok := n.Labels[ExcludeLBLabel]; !ok {
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels[ExcludeLBLabel] = "true"
		rec.Label = true
		mutated = true
	}
	if !mutated {
		return false
	}
	raw, _ := json.Marshal(rec)
	if n.Annotations == nil {
		n.Annotations = map[string]string{}
	}
	n.Annotations[RecordAnnotation] = string(raw)
	return true
}

// CheckCordon sends the update Cordon would make to node as a server-side
// dry run (dryRun: All), which changes nothing: RBAC, admission policies and
// webhooks that would refuse the cordon refuse it now, before a notice
// does. A node that is cordoned already is sent unchanged, and admitted the
// same way.
func (d *Drainer) CheckCordon(ctx context.Context, node, source, kind string) error {
	cctx, cancel := d.callContext(ctx)
	defer cancel()
	n, err := d.client.GetNode(cctx, node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("check cordon of node %s: %w", node, err)
	}
	d.cordon(n, source, kind, nil)
	if _, err := d.client.UpdateNode(cctx, n, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		return fmt.Errorf("check cordon of node %s (dry run): %w", node, err)
	}
	return nil
}

// Uncordon reverts what Cordon recorded on node and removes the record. A
// node without a record is left untouched: lastcall never undoes a cordon it
// did not make. changed reports whether the node was updated.
func (d *Drainer) Uncordon(ctx context.Context, node string) (changed bool, err error) {
	changed, err = d.updateNode(ctx, node, func(n *corev1.Node) bool {
		if _, ok := n.Annotations[RecordAnnotation]; !ok {
			return false
		}
		rec, _ := RecordOf(n)
		if rec.Unschedulable {
			n.Spec.Unschedulable = false
		}
		if rec.Taint || rec.OutOfService {
			kept := n.Spec.Taints[:0]
			for _, t := range n.Spec.Taints {
				if !(rec.Taint && t.Key == TaintKey) && !(rec.OutOfService && t.Key == OutOfServiceKey) {
					kept = append(kept, t)
				}
			}
			n.Spec.Taints = kept
		}
		if rec.Label {
			delete(n.Labels, ExcludeLBLabel)
		}
		delete(n.Annotations, RecordAnnotation)
		return true
	})
	if err != nil {
		return false, fmt.Errorf("uncordon node %s: %w", node, err)
	}
	return changed, nil
}

// OutOfService adds the OutOfServiceKey taint (NoExecute, value
// nodeshutdown) to node, which lastcall has cordoned, and records it so that
// Uncordon removes it. A node without lastcall's record is left alone:
// the taint is only for a node lastcall drained. changed reports whether
// the node was updated.
func (d *Drainer) OutOfService(ctx context.Context, node string) (changed bool, err error) {
	changed, err = d.updateNode(ctx, node, func(n *corev1.Node) bool {
		rec, ok := RecordOf(n)
		if !ok || hasTaint(n, OutOfServiceKey, corev1.TaintEffectNoExecute) {
			return false
		}
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: OutOfServiceKey, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute})
		rec.OutOfService = true
		raw, _ := json.Marshal(rec)
		n.Annotations[RecordAnnotation] = string(raw)
		return true
	})
	if err != nil {
		return false, fmt.Errorf("taint node %s out of service: %w", node, err)
	}
	return changed, nil
}

func hasTaint(n *corev1.Node, key string, effect corev1.TaintEffect) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key && t.Effect == effect {
			return true
		}
	}
	return false
}

// updateNode reads node, applies mutate and writes it back when mutate says
// it changed something, retrying conflicts (client-go's retry helper) and
// transient errors until ctx is done.
func (d *Drainer) updateNode(ctx context.Context, name string, mutate func(*corev1.Node) bool) (changed bool, err error) {
	err = d.retryTransient(ctx, "update node", func(ctx context.Context) error {
		// retry.RetryOnConflict returns nil when the last error is a context
		// error (wait.Interrupted); keep the last error to not lose it.
		var last error
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			last = func() error {
				changed = false
				cctx, cancel := d.callContext(ctx)
				defer cancel()
				n, err := d.client.GetNode(cctx, name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if !mutate(n) {
					return nil
				}
				if _, err := d.client.UpdateNode(cctx, n, metav1.UpdateOptions{}); err != nil {
					return err
				}
				changed = true
				return nil
			}()
			return last
		})
		if err != nil {
			return err
		}
		return last
	})
	return changed, err
}

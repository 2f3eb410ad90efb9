package agent

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// The foreign sources lastcall recognises by default (DefaultForeignConfig).
const (
	// ForeignKarpenter: Karpenter's disruption (consolidation, expiry,
	// drift, its own spot interruption handling) taints the node
	// karpenter.sh/disrupted:NoSchedule (v1) or
	// karpenter.sh/disruption=disrupting:NoSchedule (before v1), then its
	// termination controller evicts.
	ForeignKarpenter = "karpenter"
	// ForeignClusterAutoscaler: a scale-down taints the node
	// ToBeDeletedByClusterAutoscaler:NoSchedule, then evicts. Its
	// DeletionCandidateOfClusterAutoscaler taint (PreferNoSchedule) marks a
	// candidate only and is never a signal.
	ForeignClusterAutoscaler = "cluster-autoscaler"
	// ForeignNTH: aws-node-termination-handler with taintNode on taints
	// aws-node-termination-handler/spot-itn, /scheduled-maintenance or
	// /asg-lifecycle-termination, cordons, then evicts.
	ForeignNTH = "aws-node-termination-handler"
	// ForeignCordon: a plain cordon (spec.unschedulable) that lastcall did
	// not make: kubectl drain, node-pool upgrades and auto-repair. Off by
	// default (ForeignConfig.Cordon).
	ForeignCordon = "cordon"
	// ForeignKubeletShutdown: the kubelet's graceful node shutdown has
	// begun; it reports the node NotReady with the message "node is
	// shutting down" and terminates the pods itself
	// (ForeignConfig.KubeletShutdown).
	ForeignKubeletShutdown = "kubelet-shutdown"
)

// Signals that are not taints.
const (
	// SignalUnschedulable is the Signal of a ForeignCordon.
	SignalUnschedulable = "spec.unschedulable"
	// SignalShuttingDown is the Signal of a ForeignKubeletShutdown.
	SignalShuttingDown = "Ready=False: node is shutting down"
)

// ForeignSource is the Source of what sidecars are told, and the source
// label of metrics, for a drain another tool started: lastcall saw it on the
// Node object, not in the cloud's metadata.
const ForeignSource = "node"

// ForeignOther names, in labels, a source that is not configured (it
// cannot happen with ForeignSignals' output; it keeps label values bounded
// whatever a caller passes).
const ForeignOther = "other"

// shuttingDownMessage is what the kubelet's node shutdown manager makes
// the Ready condition's message say (k8s.io/kubernetes
// pkg/kubelet/nodeshutdown, ShutdownStatus; the kubelet aggregates it into
// the KubeletNotReady message) from the moment the shutdown starts.
const shuttingDownMessage = "node is shutting down"

// Foreign is a sign on the agent's Node that another tool is taking the
// node away.
type Foreign struct {
	// Source names the tool: ForeignKarpenter, ForeignClusterAutoscaler,
	// ForeignNTH, ForeignCordon (kubectl drain, node-pool upgrades),
	// ForeignKubeletShutdown, or a source of ForeignConfig.Taints.
	Source string
	// Signal is what was seen: the taint key, SignalUnschedulable or
	// SignalShuttingDown.
	Signal string
	// Since is when the signal appeared, if the Node says: the taint's
	// TimeAdded (set by the tool that added it, if at all: the apiserver
	// does not fill it in), the Ready condition's transition time for a
	// shutdown; zero otherwise.
	Since time.Time
}

// ForeignConfig says which signs on the Node count as another tool taking
// the node away.
type ForeignConfig struct {
	// Taints maps a taint key to the source it stands for. Only taints
	// with effect NoSchedule or NoExecute count, never PreferNoSchedule (a
	// preference, as cluster-autoscaler's deletion candidates, is no
	// drain); the taint's value is not read.
	Taints map[string]string
	// Cordon says that a plain cordon (spec.unschedulable) lastcall did not
	// make counts, as source ForeignCordon. Default false: an operator's
	// cordon for a look must not stop the workers.
	Cordon bool
	// KubeletShutdown says that the kubelet's graceful node shutdown counts,
	// as source ForeignKubeletShutdown.
	KubeletShutdown bool
}

// DefaultForeignConfig recognises Karpenter (v1 and earlier),
// cluster-autoscaler's scale-down and aws-node-termination-handler's
// spot, scheduled-maintenance and ASG-termination taints, and the kubelet's
// graceful shutdown; not a plain cordon, and not NTH's
// rebalance-recommendation taint (advisory: the instance may run for hours,
// and lastcall's own AWS watcher gives rebalance recommendations the
// policy of --on-rebalance).
func DefaultForeignConfig() ForeignConfig {
	return ForeignConfig{
		Taints:          DefaultForeignTaints(),
		KubeletShutdown: true,
	}
}

// DefaultForeignTaints returns the taints of DefaultForeignConfig, by
// source.
func DefaultForeignTaints() map[string]string {
	return map[string]string{
		"karpenter.sh/disrupted":                                 ForeignKarpenter,
		"karpenter.sh/disruption":                                ForeignKarpenter,
		"ToBeDeletedByClusterAutoscaler":                         ForeignClusterAutoscaler,
		"aws-node-termination-handler/spot-itn":                  ForeignNTH,
		"aws-node-termination-handler/scheduled-maintenance":     ForeignNTH,
		"aws-node-termination-handler/asg-lifecycle-termination": ForeignNTH,
	}
}

// ForeignTaintSources are the sources DefaultForeignTaints knows, in the
// order flags and the chart name them.
var ForeignTaintSources = []string{ForeignKarpenter, ForeignClusterAutoscaler, ForeignNTH}

// ForeignTaintsOf returns the default taints of the named sources (a subset
// of ForeignTaintSources), or an error naming a source it does not know.
func ForeignTaintsOf(sources []string) (map[string]string, error) {
	out := map[string]string{}
	for _, src := range sources {
		if !slices.Contains(ForeignTaintSources, src) {
			return nil, fmt.Errorf("foreign source %q: want one of %s", src, strings.Join(ForeignTaintSources, ", "))
		}
		for key, s := range DefaultForeignTaints() {
			if s == src {
				out[key] = s
			}
		}
	}
	return out, nil
}

// sourceName is what a source may be: it becomes a metric label value and
// part of an Event reason, so it is short and plain.
var sourceName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Validate says what is wrong with c, if anything: a taint key that is
// empty or lastcall's own (which must never count), the taint the node
// lifecycle controller mirrors spec.unschedulable with (use Cordon), or a
// source that is not a short lower-case name.
func (c ForeignConfig) Validate() error {
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(c.Taints)) {
		src := c.Taints[key]
		switch key {
		case "":
			errs = append(errs, errors.New("foreign taint: empty key"))
		case drainer.TaintKey, drainer.OutOfServiceKey:
			errs = append(errs, fmt.Errorf("foreign taint %s: lastcall sets it itself", key))
		case corev1.TaintNodeUnschedulable:
			errs = append(errs, fmt.Errorf("foreign taint %s: it mirrors every cordon, lastcall's own too; count cordons with the cordon setting", key))
		}
		if !sourceName.MatchString(src) || src == ForeignOther {
			errs = append(errs, fmt.Errorf("foreign taint %s: source %q must be a lower-case name of letters, digits and '-' (not %q)", key, src, ForeignOther))
		}
	}
	return errors.Join(errs...)
}

// Sources returns the sources c can report, sorted: the label values
// Label gives (ForeignOther aside), so metrics stay bounded.
func (c ForeignConfig) Sources() []string {
	set := map[string]bool{}
	for _, s := range c.Taints {
		set[s] = true
	}
	if c.Cordon {
		set[ForeignCordon] = true
	}
	if c.KubeletShutdown {
		set[ForeignKubeletShutdown] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// ForeignSignals returns the signs on node, per cfg, that another tool is
// taking it away, sorted by source and signal, each once. lastcall's own
// cordon never counts: its taint (drainer.TaintKey, drainer.OutOfServiceKey)
// and the spec.unschedulable its record (drainer.RecordOf) says it set. A
// nil node has none.
func ForeignSignals(node *corev1.Node, cfg ForeignConfig) []Foreign {
	if node == nil {
		return nil
	}
	at := map[Foreign]int{} // index in out, by source and signal
	var out []Foreign
	add := func(f Foreign) {
		key := Foreign{Source: f.Source, Signal: f.Signal}
		if i, ok := at[key]; ok {
			// One key with two effects: keep the time one of them has.
			if out[i].Since.IsZero() {
				out[i].Since = f.Since
			}
			return
		}
		at[key] = len(out)
		out = append(out, f)
	}
	for _, t := range node.Spec.Taints {
		if t.Key == drainer.TaintKey || t.Key == drainer.OutOfServiceKey || t.Key == corev1.TaintNodeUnschedulable {
			continue
		}
		if t.Effect != corev1.TaintEffectNoSchedule && t.Effect != corev1.TaintEffectNoExecute {
			continue
		}
		src, ok := cfg.Taints[t.Key]
		if !ok {
			continue
		}
		f := Foreign{Source: src, Signal: t.Key}
		if t.TimeAdded != nil {
			f.Since = t.TimeAdded.Time
		}
		add(f)
	}
	if cfg.Cordon && node.Spec.Unschedulable {
		if rec, ok := drainer.RecordOf(node); !ok || !rec.Unschedulable {
			add(Foreign{Source: ForeignCordon, Signal: SignalUnschedulable})
		}
	}
	if cfg.KubeletShutdown {
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, shuttingDownMessage) {
				add(Foreign{Source: ForeignKubeletShutdown, Signal: SignalShuttingDown, Since: c.LastTransitionTime.Time})
			}
		}
	}
	slices.SortFunc(out, func(a, b Foreign) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Signal, b.Signal))
	})
	return out
}

// ForeignLabel is how a foreign drain is named wherever lastcall reports
// it: metrics, Events, the node condition and the webhook.
type ForeignLabel struct {
	// Source is ForeignSource, the source label beside the notices'
	// clouds.
	Source string
	// Reason is the tool: one of ForeignConfig.Sources, or ForeignOther.
	// It is the reason label, the reason sidecars are told, and the
	// webhook's kind.
	Reason string
	// ConditionReason is the node condition's and the Event's reason,
	// CamelCase: "DrainBy" and the tool ("DrainByKarpenter",
	// "DrainByAwsNodeTerminationHandler").
	ConditionReason string
	// Message says what was seen, for the condition and the Event.
	Message string
}

// Label returns the labels of f under c. A source c does not configure is
// named ForeignOther, so label values stay those of c.Sources.
func (c ForeignConfig) Label(f Foreign) ForeignLabel {
	reason := f.Source
	if !slices.Contains(c.Sources(), reason) {
		reason = ForeignOther
	}
	msg := fmt.Sprintf("%s is taking the node away (%s)", reason, f.Signal)
	if !f.Since.IsZero() {
		msg += " since " + f.Since.UTC().Format(time.RFC3339)
	}
	return ForeignLabel{Source: ForeignSource, Reason: reason, ConditionReason: "DrainBy" + camel(reason), Message: msg}
}

// ForeignState is what the sidecars are told while fs (ForeignSignals'
// output) hold and no cloud notice gives a deadline: draining, the reason
// naming the first signal's tool, no deadline (the workers' contract: finish
// the current work promptly, pull nothing new, hand back what cannot finish
// soon; the pod's own termination brings a deadline). ok is false when fs
// is empty.
func (c ForeignConfig) ForeignState(fs []Foreign) (st wire.NodeState, ok bool) {
	if len(fs) == 0 {
		return wire.NodeState{}, false
	}
	l := c.Label(fs[0])
	return wire.NodeState{
		Phase: wire.PhaseDraining, Reason: l.Reason, Source: l.Source,
		NoticeID: ForeignSource + "/" + fs[0].Source + "/" + fs[0].Signal,
	}, true
}

// camel turns "aws-node-termination-handler" into "AwsNodeTerminationHandler".
func camel(s string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(s, "-") {
		if part == "" {
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

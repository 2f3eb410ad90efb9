package agent

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// foreignNode returns a node with taints, cordoned or not, with lastcall's
// cordon record rec (nil: none).
func foreignNode(unschedulable bool, rec *drainer.Record, taints ...corev1.Taint) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	n.Spec.Unschedulable = unschedulable
	n.Spec.Taints = taints
	if rec != nil {
		raw, _ := json.Marshal(rec)
		n.Annotations = map[string]string{drainer.RecordAnnotation: string(raw)}
	}
	return n
}

func taint(key, value string, effect corev1.TaintEffect) corev1.Taint {
	return corev1.Taint{Key: key, Value: value, Effect: effect}
}

func TestForeignSignals(t *testing.T) {
	at := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	def := DefaultForeignConfig()
	withCordon := DefaultForeignConfig()
	withCordon.Cordon = true
	lastcallCordon := &drainer.Record{Unschedulable: true, Taint: true, Source: "aws", Time: at}
	ownTaint := taint(drainer.TaintKey, "aws.spot-interruption", corev1.TaintEffectNoSchedule)
	unschedTaint := taint(corev1.TaintNodeUnschedulable, "", corev1.TaintEffectNoSchedule)
	shutdown := func(msg string, status corev1.ConditionStatus) *corev1.Node {
		n := foreignNode(false, nil)
		n.Status.Conditions = []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: status, Reason: "KubeletNotReady", Message: msg,
			LastTransitionTime: metav1.NewTime(at),
		}}
		return n
	}
	for _, tc := range []struct {
		name string
		node *corev1.Node
		cfg  ForeignConfig
		want []Foreign
	}{
		{"nil node", nil, withCordon, nil},
		{"nothing", foreignNode(false, nil), withCordon, nil},
		{"karpenter v1 as its docs describe", foreignNode(false, nil, taint("karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule)), def,
			[]Foreign{{Source: ForeignKarpenter, Signal: "karpenter.sh/disrupted"}}},
		{"karpenter before v1", foreignNode(false, nil, taint("karpenter.sh/disruption", "disrupting", corev1.TaintEffectNoSchedule)), def,
			[]Foreign{{Source: ForeignKarpenter, Signal: "karpenter.sh/disruption"}}},
		{"cluster-autoscaler scale-down", foreignNode(false, nil, taint("ToBeDeletedByClusterAutoscaler", "1764882000", corev1.TaintEffectNoSchedule)), def,
			[]Foreign{{Source: ForeignClusterAutoscaler, Signal: "ToBeDeletedByClusterAutoscaler"}}},
		{"cluster-autoscaler candidate only (PreferNoSchedule)", foreignNode(false, nil, taint("DeletionCandidateOfClusterAutoscaler", "1764882000", corev1.TaintEffectPreferNoSchedule)), def, nil},
		{"a configured key with PreferNoSchedule", foreignNode(false, nil, taint("ToBeDeletedByClusterAutoscaler", "1", corev1.TaintEffectPreferNoSchedule)), def, nil},
		{"NTH spot with its cordon, cordon not counted", foreignNode(true, nil, taint("aws-node-termination-handler/spot-itn", "evt-1", corev1.TaintEffectNoSchedule), unschedTaint), def,
			[]Foreign{{Source: ForeignNTH, Signal: "aws-node-termination-handler/spot-itn"}}},
		{"NTH spot with its cordon, cordon counted", foreignNode(true, nil, taint("aws-node-termination-handler/spot-itn", "evt-1", corev1.TaintEffectNoSchedule), unschedTaint), withCordon,
			[]Foreign{{Source: ForeignNTH, Signal: "aws-node-termination-handler/spot-itn"}, {Source: ForeignCordon, Signal: SignalUnschedulable}}},
		{"NTH rebalance recommendation is advisory", foreignNode(false, nil, taint("aws-node-termination-handler/rebalance-recommendation", "e", corev1.TaintEffectNoSchedule)), def, nil},
		{"NTH scheduled maintenance, NoExecute with its time", foreignNode(false, nil, corev1.Taint{Key: "aws-node-termination-handler/scheduled-maintenance", Effect: corev1.TaintEffectNoExecute, TimeAdded: &metav1.Time{Time: at}}), def,
			[]Foreign{{Source: ForeignNTH, Signal: "aws-node-termination-handler/scheduled-maintenance", Since: at}}},
		{"NTH ASG termination", foreignNode(false, nil, taint("aws-node-termination-handler/asg-lifecycle-termination", "e", corev1.TaintEffectNoSchedule)), def,
			[]Foreign{{Source: ForeignNTH, Signal: "aws-node-termination-handler/asg-lifecycle-termination"}}},
		{"an operator's cordon, default config", foreignNode(true, nil, unschedTaint), def, nil},
		{"kubectl drain's cordon, cordon counted", foreignNode(true, nil, unschedTaint), withCordon,
			[]Foreign{{Source: ForeignCordon, Signal: SignalUnschedulable}}},
		{"lastcall's own cordon never counts", foreignNode(true, lastcallCordon, ownTaint, unschedTaint), withCordon, nil},
		{"lastcall's own taint never counts, even if configured", foreignNode(false, nil, ownTaint),
			ForeignConfig{Taints: map[string]string{drainer.TaintKey: "lastcall"}}, nil},
		{"a cordon that was there before lastcall's record", foreignNode(true, &drainer.Record{Taint: true, Source: "aws", Time: at}, ownTaint), withCordon,
			[]Foreign{{Source: ForeignCordon, Signal: SignalUnschedulable}}},
		{"lastcall's cordon with Karpenter's taint on top", foreignNode(true, lastcallCordon, ownTaint, taint("karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule)), withCordon,
			[]Foreign{{Source: ForeignKarpenter, Signal: "karpenter.sh/disrupted"}}},
		{"every source at once, sorted", foreignNode(true, nil,
			taint("ToBeDeletedByClusterAutoscaler", "1", corev1.TaintEffectNoSchedule),
			taint("karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule),
			taint("aws-node-termination-handler/spot-itn", "", corev1.TaintEffectNoSchedule),
			taint("karpenter.sh/disruption", "disrupting", corev1.TaintEffectNoSchedule)), withCordon,
			[]Foreign{
				{Source: ForeignNTH, Signal: "aws-node-termination-handler/spot-itn"},
				{Source: ForeignClusterAutoscaler, Signal: "ToBeDeletedByClusterAutoscaler"},
				{Source: ForeignCordon, Signal: SignalUnschedulable},
				{Source: ForeignKarpenter, Signal: "karpenter.sh/disrupted"},
				{Source: ForeignKarpenter, Signal: "karpenter.sh/disruption"},
			}},
		{"one key with two effects counts once, with the time one has", foreignNode(false, nil,
			taint("karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule),
			corev1.Taint{Key: "karpenter.sh/disrupted", Effect: corev1.TaintEffectNoExecute, TimeAdded: &metav1.Time{Time: at}}), def,
			[]Foreign{{Source: ForeignKarpenter, Signal: "karpenter.sh/disrupted", Since: at}}},
		{"an extra taint", foreignNode(false, nil, taint("example.com/draining", "x", corev1.TaintEffectNoExecute)),
			ForeignConfig{Taints: map[string]string{"example.com/draining": "in-house"}},
			[]Foreign{{Source: "in-house", Signal: "example.com/draining"}}},
		{"nothing configured", foreignNode(true, nil, taint("karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule)), ForeignConfig{}, nil},
		// The kubelet's message during graceful shutdown, as
		// pkg/kubelet/nodestatus aggregates the shutdown manager's error.
		{"kubelet graceful shutdown", shutdown("node is shutting down", corev1.ConditionFalse), def,
			[]Foreign{{Source: ForeignKubeletShutdown, Signal: SignalShuttingDown, Since: at}}},
		{"kubelet graceful shutdown among other errors", shutdown("[container runtime is down, node is shutting down]", corev1.ConditionFalse), def,
			[]Foreign{{Source: ForeignKubeletShutdown, Signal: SignalShuttingDown, Since: at}}},
		{"kubelet graceful shutdown, not configured", shutdown("node is shutting down", corev1.ConditionFalse), ForeignConfig{Taints: DefaultForeignTaints()}, nil},
		{"NotReady for another reason", shutdown("container runtime network not ready", corev1.ConditionFalse), def, nil},
		{"Ready", shutdown("kubelet is posting ready status", corev1.ConditionTrue), def, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ForeignSignals(tc.node, tc.cfg)
			if !slices.Equal(got, tc.want) {
				t.Errorf("ForeignSignals:\n got %+v\nwant %+v", got, tc.want)
			}
			// Stable: the taints' order on the node does not matter.
			if tc.node != nil && len(tc.node.Spec.Taints) > 1 {
				rev := tc.node.DeepCopy()
				slices.Reverse(rev.Spec.Taints)
				if again := ForeignSignals(rev, tc.cfg); !slices.Equal(again, got) {
					t.Errorf("taints reversed: got %+v, want %+v", again, got)
				}
			}
		})
	}
}

func TestForeignConfigValidate(t *testing.T) {
	if err := DefaultForeignConfig().Validate(); err != nil {
		t.Fatalf("the default: %v", err)
	}
	for _, tc := range []struct {
		taints map[string]string
		want   string
	}{
		{map[string]string{drainer.TaintKey: "lastcall"}, "lastcall sets it itself"},
		{map[string]string{drainer.OutOfServiceKey: "oos"}, "lastcall sets it itself"},
		{map[string]string{corev1.TaintNodeUnschedulable: "cordon"}, "cordon setting"},
		{map[string]string{"": "x"}, "empty key"},
		{map[string]string{"example.com/t": "In House"}, "lower-case name"},
		{map[string]string{"example.com/t": ""}, "lower-case name"},
		{map[string]string{"example.com/t": ForeignOther}, "lower-case name"},
	} {
		err := ForeignConfig{Taints: tc.taints}.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%v) = %v, want an error saying %q", tc.taints, err, tc.want)
		}
	}
}

func TestForeignLabels(t *testing.T) {
	cfg := DefaultForeignConfig()
	if got, want := cfg.Sources(), []string{ForeignNTH, ForeignClusterAutoscaler, ForeignKarpenter, ForeignKubeletShutdown}; !slices.Equal(got, want) {
		t.Errorf("Sources() = %v, want %v", got, want)
	}
	cfg.Cordon = true
	for _, tc := range []struct {
		f                    Foreign
		reason, conditionWhy string
		messageHas           string
	}{
		{Foreign{Source: ForeignKarpenter, Signal: "karpenter.sh/disrupted"}, "karpenter", "DrainByKarpenter", "karpenter is taking the node away (karpenter.sh/disrupted)"},
		{Foreign{Source: ForeignNTH, Signal: "aws-node-termination-handler/spot-itn"}, ForeignNTH, "DrainByAwsNodeTerminationHandler", "spot-itn"},
		{Foreign{Source: ForeignCordon, Signal: SignalUnschedulable}, "cordon", "DrainByCordon", "spec.unschedulable"},
		{Foreign{Source: ForeignKubeletShutdown, Signal: SignalShuttingDown, Since: time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)},
			"kubelet-shutdown", "DrainByKubeletShutdown", "since 2026-12-04T21:00:00Z"},
		// Not configured: bounded to "other".
		{Foreign{Source: "surprise", Signal: "x"}, ForeignOther, "DrainByOther", "other is taking"},
	} {
		l := cfg.Label(tc.f)
		if l.Source != ForeignSource || l.Reason != tc.reason || l.ConditionReason != tc.conditionWhy || !strings.Contains(l.Message, tc.messageHas) {
			t.Errorf("Label(%+v) = %+v, want source %q reason %q condition reason %q, message with %q",
				tc.f, l, ForeignSource, tc.reason, tc.conditionWhy, tc.messageHas)
		}
	}
}

func TestForeignState(t *testing.T) {
	cfg := DefaultForeignConfig()
	if _, ok := cfg.ForeignState(nil); ok {
		t.Error("ForeignState(nil) says draining")
	}
	fs := ForeignSignals(foreignNode(false, nil,
		taint("karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule),
		taint("ToBeDeletedByClusterAutoscaler", "1", corev1.TaintEffectNoSchedule)), cfg)
	st, ok := cfg.ForeignState(fs)
	want := wire.NodeState{Phase: wire.PhaseDraining, Reason: ForeignClusterAutoscaler, Source: ForeignSource,
		NoticeID: "node/cluster-autoscaler/ToBeDeletedByClusterAutoscaler"}
	if !ok || st != want {
		t.Errorf("ForeignState = %+v, %v; want %+v", st, ok, want)
	}
	if !st.Deadline.IsZero() {
		t.Errorf("a foreign drain has no deadline of its own, got %v", st.Deadline)
	}
}

func TestForeignTaintsOf(t *testing.T) {
	all, err := ForeignTaintsOf(ForeignTaintSources)
	if err != nil || !maps.Equal(all, DefaultForeignTaints()) {
		t.Errorf("ForeignTaintsOf(every source) = %v, %v; want the defaults", all, err)
	}
	nth, err := ForeignTaintsOf([]string{ForeignNTH})
	if err != nil || len(nth) != 3 {
		t.Errorf("ForeignTaintsOf(nth) = %v, %v; want its three taints", nth, err)
	}
	if _, err := ForeignTaintsOf([]string{"cordon"}); err == nil {
		t.Error("ForeignTaintsOf(cordon): no error; a cordon is no taint source")
	}
}

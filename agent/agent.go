package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/kubeclient"
	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
	"github.com/lastcall-dev/lastcall/watcher"
)

// Drainer empties the node. *drainer.Drainer implements it.
type Drainer interface {
	// Cordon cordons and taints node for a notice of kind from source, and
	// records the notices' first sightings; see drainer.Drainer.Cordon.
	Cordon(ctx context.Context, node, source, kind string, seen ...drainer.Sighting) (bool, error)
	// OutOfService adds node.kubernetes.io/out-of-service to the node it
	// cordoned; see drainer.Drainer.OutOfService.
	OutOfService(ctx context.Context, node string) (bool, error)
	// Uncordon undoes what Cordon recorded; see drainer.Drainer.Uncordon.
	Uncordon(ctx context.Context, node string) (bool, error)
	// Plan says what Drain would do, changing nothing.
	Plan(ctx context.Context, node string, deadline time.Time, p drainer.Policy) (drainer.Plan, error)
	// DrainPlan evicts the node's pods as plan says, before its deadline.
	DrainPlan(ctx context.Context, node string, plan drainer.Plan) (drainer.Report, error)
}

var _ Drainer = (*drainer.Drainer)(nil)

// PodSource is what the agent knows of the pods on its node. *NodePods
// implements it from an informer's cache.
type PodSource interface {
	drainer.PodLister
	// Synced reports whether the first list has completed.
	Synced() bool
	// OnChange calls f, which must not block, whenever the pods on the
	// node change.
	OnChange(f func())
}

// NodeSource is the agent's view of its own Node. *NodeWatch implements it
// from an informer's cache.
type NodeSource interface {
	// Node returns the node as last seen, or nil when it is not known
	// yet. The caller must not modify it.
	Node() *corev1.Node
	// OnChange calls f, which must not block, whenever the node changes.
	OnChange(f func())
}

var (
	_ PodSource  = (*NodePods)(nil)
	_ NodeSource = (*NodeWatch)(nil)
)

// Notifier tells the workers on the node, through their sidecars, what the
// node is doing. *sidecar.Hub implements it.
type Notifier interface {
	// Tell makes st what every sidecar is handed from now on, at once, and
	// returns its generation. Calls are ordered: the last one wins.
	Tell(st wire.NodeState) (generation uint64)
	// Told blocks until every connected sidecar has generation gen or a
	// later one, or ctx is done, and returns how many have it.
	Told(ctx context.Context, gen uint64) (told int, err error)
	// SetPodDeadlines tells each pod's sidecar when its pod will be
	// stopped at the latest; pods not named have no such time. Each call
	// replaces the last. It never blocks.
	SetPodDeadlines(deadlines map[sidecar.PodRef]time.Time)
}

// noSidecars is the Notifier of a node agent that serves no sidecars.
type noSidecars struct{}

func (noSidecars) Tell(wire.NodeState) uint64                   { return 0 }
func (noSidecars) Told(context.Context, uint64) (int, error)    { return 0, nil }
func (noSidecars) SetPodDeadlines(map[sidecar.PodRef]time.Time) {}

// Config is what the agent needs to know, parsed from flags by cmd/node-agent.
type Config struct {
	// Node is the name of the node the agent runs on.
	Node string
	// Self is the agent's own pod; its drain never evicts it.
	Self types.NamespacedName
	// Policies maps notice kinds to actions. Default DefaultPolicies.
	Policies Policies
	// Drain is the drain policy (cut-off, reserve, what to do with pods a
	// budget blocks).
	Drain drainer.Policy
	// DryRun logs what the agent would do and changes nothing.
	DryRun bool
	// Webhook, when its URL is set, is told of every notice as it arrives.
	Webhook Webhook
	// OutOfService adds node.kubernetes.io/out-of-service:NoExecute once a
	// drain has ended and its deadline has passed (the machine is stopping:
	// Kubernetes asks for the taint only on a node that is shut down), so
	// that the volumes of pods left behind detach at once; the uncordon
	// removes it.
	OutOfService bool
	// DrainLead is how long before its deadline a drain starts: a drain
	// notice further ahead (an AWS scheduled event days away) cordons the
	// node at once, but its workers keep working and its pods stay until
	// then. Default 10 min (DefaultDrainLead); it must leave room for the
	// longest grace period of the node's pods.
	DrainLead time.Duration
	// CordonWait is how long a drain waits for the cordon, from the
	// notice's detection: the drain starts once the cordon is done or
	// failed, or when CordonWait has passed, whichever is first. The cordon
	// keeps the evicted pods' replacements off the node, so it goes first;
	// but when a zone drains at once it can queue in the apiserver behind
	// other nodes' evictions, and a drain that waits for it loses the
	// window (found at 300 drains at once: cordons took up to 64 s and
	// most GCE drains started after their deadline). Default 2 s.
	CordonWait time.Duration
	// Foreign says which signs on the Node count as another tool taking
	// it away (ForeignSignals). The zero value counts none;
	// cmd/node-agent starts from DefaultForeignConfig.
	Foreign ForeignConfig
}

// DefaultCordonWait is Config.CordonWait's default.
const DefaultCordonWait = 2 * time.Second

// DefaultDrainLead is Config.DrainLead's default.
const DefaultDrainLead = 10 * time.Minute

// Deps are the agent's collaborators.
type Deps struct {
	// Client talks to the apiserver. Build it without a client-side rate
	// limit.
	Client kubeclient.Interface
	// Drainer cordons and drains.
	Drainer Drainer
	// Notifier tells the sidecars; nil tells none.
	Notifier Notifier
	// Holds, if set, learns which pods are on the node, so that done
	// reports of pods that are gone are forgotten.
	Holds *Holds
	// Pods lists the pods on the node from the agent's watch of them
	// (*NodePods).
	Pods PodSource
	// Node is the agent's view of its own node; nil: New makes a NodeWatch
	// from Client, and Run runs it.
	Node NodeSource
	// Events records Kubernetes Events on the node.
	Events record.EventRecorder
	// Metrics records the agent's metrics; nil records none.
	Metrics *Metrics
	// Logger receives the agent's log. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Acknowledger, if set, is told once a drain for one of its notices
	// has emptied the node, so the platform may go ahead early (Azure
	// scheduled events).
	Acknowledger Acknowledger
}

// Acknowledger tells the platform that the node is ready for an event.
// The Azure watcher implements it.
type Acknowledger interface {
	// Source is the notice source whose events it acknowledges.
	Source() watcher.Source
	// Acknowledge approves event id; it blocks until the platform answers
	// or ctx is done.
	Acknowledge(ctx context.Context, id string) error
}

// advisoryTimeout is the deadline given to a notice without one (an AWS
// rebalance recommendation), counted from its detection.
const advisoryTimeout = 2 * time.Minute

// Retry pauses for node updates that failed; they are tried again while
// what they are for still holds.
const (
	minRetry = 200 * time.Millisecond
	maxRetry = 5 * time.Second
)

// Agent turns notices into drains. Create it with New and run it with Run.
//
// It is level-triggered: notices, pod changes and the ends of its own work
// only update what it observes; one function, Decide, says from all of it
// what the node and the sidecars should be, and reconcile makes it so. See
// the package documentation.
type Agent struct {
	cfg Config
	Deps

	ownNode *NodeWatch // the watch New made, which Run runs; nil: the caller's

	// Fields below are owned by the Run goroutine.
	obs         Observed
	cordonTry   bool                    // a cordon for the current notices ended (done or failed)
	nodeBusy    bool                    // a node update (cordon, uncordon, condition) is under way
	wroteRV     string                  // the node's resourceVersion before the last successful update
	wroteAt     time.Time               // when that update ended
	cordonTimer *time.Timer             // pokes when a drain waiting for the cordon may start anyway
	wakeTimer   *time.Timer             // pokes at Desired.Wake or a drain's deadline
	wakeAt      time.Time               // when wakeTimer fires
	retryAt     time.Time               // no node update before this (after a failure)
	failures    int                     // node updates failed in a row
	noSidecar   map[types.UID]bool      // pods seen without the sidecar they asked for
	told        *wire.NodeState         // what sidecars were last told
	plan        *drainer.Plan           // the plan of the drain towards the current target, told to the sidecars
	planFor     string                  // the ID of that target
	podTold     map[types.UID]time.Time // each pod's stop time as told, while a drain holds: it only moves earlier
	run         *drainRun               // the drain under way or last finished
	acked       map[string]bool         // Azure events acknowledged
	synced      bool                    // the pod cache has synced (Holds was told)
	foreignKey  string                  // the foreign signals last reported
	foreignTool string                  // the tool the last foreign drain counted was by
	inbox       chan func()             // results of the work started by reconcile
	kick        chan struct{}           // buffered(1): something observed changed

	wg sync.WaitGroup // work started by reconcile
}

// drainRun is one run of the drainer towards a notice's deadline.
type drainRun struct {
	notice   watcher.Notice
	plan     drainer.Plan
	cancel   context.CancelFunc
	finished bool
	// covered holds the pods the run acted on or skipped: a pod that
	// lands later gets another run.
	covered map[types.UID]bool
}

// New returns an Agent.
func New(cfg Config, deps Deps) (*Agent, error) {
	if cfg.Node == "" {
		return nil, errors.New("agent: node name is empty")
	}
	if deps.Client == nil || deps.Drainer == nil || deps.Pods == nil || deps.Events == nil {
		return nil, errors.New("agent: Client, Drainer, Pods and Events are required")
	}
	if cfg.Policies == nil {
		cfg.Policies = DefaultPolicies()
	}
	cfg.Drain = cfg.Drain.WithDefaults()
	if cfg.CordonWait <= 0 {
		cfg.CordonWait = DefaultCordonWait
	}
	if cfg.DrainLead <= 0 {
		cfg.DrainLead = DefaultDrainLead
	}
	var own *NodeWatch
	if deps.Node == nil {
		own = NewNodeWatch(deps.Client, cfg.Node)
		deps.Node = own
	}
	if deps.Notifier == nil {
		deps.Notifier = noSidecars{}
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	deps.Logger = deps.Logger.With("node", cfg.Node)
	return &Agent{
		cfg: cfg, Deps: deps, ownNode: own,
		obs:   Observed{Notices: map[string]Tracked{}, Lead: cfg.DrainLead, Foreign: cfg.Foreign},
		acked: map[string]bool{}, noSidecar: map[types.UID]bool{}, podTold: map[types.UID]time.Time{},
		inbox: make(chan func()),
		kick:  make(chan struct{}, 1),
	}, nil
}

// Run handles notices until ctx is done or notices is closed, then cancels
// and waits for the work it started. It watches its node, whose cordon
// record says whether an earlier run left a cordon, and changes nothing on
// it before that watch has listed it; it tells the sidecars nothing until
// a drain notice is active or the watcher has sent watcher.StateSynced. It
// returns nil when ctx is canceled.
func (a *Agent) Run(ctx context.Context, notices <-chan watcher.Notice) error {
	ctx, cancel := context.WithCancel(ctx)
	defer a.wg.Wait()
	defer cancel()
	a.Pods.OnChange(a.poke)
	a.Node.OnChange(a.poke)
	if a.ownNode != nil {
		a.wg.Go(func() {
			if err := a.ownNode.Run(ctx); err != nil && ctx.Err() == nil {
				a.Logger.Error("watching own node failed", "err", err)
			}
		})
	}
	for {
		a.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case n, ok := <-notices:
			if !ok {
				return nil
			}
			a.observe(ctx, n)
		case f := <-a.inbox:
			f()
		case <-a.kick:
		}
	}
}

// poke asks for a reconcile; it never blocks.
func (a *Agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// post runs f on the Run goroutine.
func (a *Agent) post(ctx context.Context, f func()) {
	select {
	case a.inbox <- f:
	case <-ctx.Done():
	}
}

// observe records one notice from the watcher.
func (a *Agent) observe(ctx context.Context, n watcher.Notice) {
	if n.Detected.IsZero() {
		n.Detected = a.Now()
	}
	log := a.Logger.With("source", n.Source, "kind", n.Kind, "state", n.State, "id", n.ID)
	switch n.State {
	case watcher.StateSynced:
		if !a.obs.Synced {
			log.Info("metadata read: the node's state is known", "active_notices", len(a.obs.Notices))
		}
		a.obs.Synced = true
	case watcher.StateInformational:
		log.Info("informational notice")
		a.event(corev1.EventTypeNormal, "MaintenanceScheduled", "%s notice %s from %s: %s", n.Kind, n.ID, n.Source, n.Action)
	case watcher.StateCanceled:
		a.Metrics.notice(n, "")
		if _, ok := a.obs.Notices[n.ID]; !ok {
			log.Info("notice canceled that was not active")
			return
		}
		delete(a.obs.Notices, n.ID)
		log.Info("notice canceled", "other_active_notices", len(a.obs.Notices))
		if a.cfg.DryRun {
			log.Info("dry run: would undo the cordon once no notice holds")
			return
		}
		a.event(corev1.EventTypeNormal, EventReason(n.Kind)+"Canceled", "%s notice %s from %s canceled", n.Kind, n.ID, n.Source)
	default:
		action := a.cfg.Policies.For(n.Kind)
		prev, seen := a.obs.Notices[n.ID]
		if seen && (prev.Notice.Deadline.Equal(n.Deadline) || n.Source == watcher.SourceGCE) {
			return // GCE deadlines are ours: the first sighting's holds
		}
		if seen {
			n.Detected = prev.Notice.Detected // moved, not new
		}
		a.Metrics.notice(n, action)
		log = log.With("action", action, "deadline_in", n.Deadline.Sub(a.Now()).Round(time.Millisecond).String())
		log.Info("notice received", "rescheduled", seen)
		if a.cfg.DryRun {
			a.dryRun(ctx, log, n, action)
			return
		}
		if action == ActionNone {
			// The machine may still go away: the pods on it are told so.
			a.eventAll(ctx, corev1.EventTypeWarning, "NoticeIgnored", "%s notice %s from %s ignored by policy (action none): no drain; the node goes away at %s",
				n.Kind, n.ID, n.Source, n.Deadline.UTC().Format(time.RFC3339))
			return
		}
		a.obs.Notices[n.ID] = Tracked{Notice: n, Action: action}
		a.cordonTry = false // a new notice waits for its cordon (CordonWait at most)
		a.event(corev1.EventTypeWarning, EventReason(n.Kind), "%s notice from %s (id %s): node goes away at %s; action %s",
			n.Kind, n.Source, n.ID, n.Deadline.UTC().Format(time.RFC3339), action)
		if a.cfg.Webhook.Enabled() {
			a.wg.Go(func() { a.sendWebhook(ctx, log, n, action) })
		}
	}
}

// reconcile makes the node and the sidecars what Decide says they should
// be. It starts work and never waits for it: results come back through
// inbox and lead to the next reconcile.
func (a *Agent) reconcile(ctx context.Context) {
	if ctx.Err() != nil || a.cfg.DryRun {
		return
	}
	a.obs.Now = a.Now()
	if node := a.Node.Node(); node != nil && a.obs.Node == nil {
		if rec, ok := drainer.RecordOf(node); ok {
			a.Logger.Info("node was cordoned by an earlier run; kept until the metadata says whether the notice still holds",
				"source", rec.Source, "cordoned_at", rec.Time, "notices", len(rec.Seen))
		}
	}
	a.obs.Node = a.Node.Node()
	d := Decide(a.obs)
	a.Metrics.deadlines(a.obs.Notices)
	if !a.synced && a.Pods.Synced() {
		a.synced = true
		if a.Holds != nil {
			a.Holds.Synced(a.Now())
		}
	}
	a.reconcileForeign(ctx, d)
	a.reconcilePlan(ctx, d)
	a.reconcileSidecars(ctx, d)
	a.reconcileNode(ctx, d)
	a.reconcileDrain(ctx, d)
	a.reconcilePods(ctx)
	a.wakeFor(ctx, d)
}

// reconcileForeign logs and records an Event, once per change, when
// another tool starts or stops taking the node away; it counts the drain
// and posts the webhook once per tool.
func (a *Agent) reconcileForeign(ctx context.Context, d Desired) {
	key := ""
	for _, f := range d.Foreign {
		key += f.Source + "/" + f.Signal + ";"
	}
	if key == a.foreignKey {
		return
	}
	a.foreignKey = key
	if len(d.Foreign) == 0 {
		a.foreignTool = ""
		a.Logger.Info("no other tool is taking the node away any more")
		a.event(corev1.EventTypeNormal, "ForeignDrainEnded", "no other tool is taking the node away any more")
		return
	}
	l := a.cfg.Foreign.Label(d.Foreign[0])
	if a.foreignTool != l.Reason {
		a.foreignTool = l.Reason
		a.Metrics.foreignDrain(l)
		if a.cfg.Webhook.Enabled() {
			var deadline time.Time
			if d.Drain != nil {
				deadline = d.Drain.Deadline
			}
			f, log := d.Foreign[0], a.Logger.With("tool", l.Reason)
			a.wg.Go(func() { a.sendForeignWebhook(ctx, log, f, l, deadline) })
		}
	}
	a.Logger.Info("another tool is taking the node away: workers told to finish", "tool", l.Reason, "signals", len(d.Foreign))
	a.event(corev1.EventTypeNormal, "ForeignDrain", "%s; lastcall tells the workers to finish and neither cordons nor evicts for it", l.Message)
}

// wakeFor pokes the loop at the next moment the decision changes by the
// clock alone: a drain notice coming within DrainLead, or the drain's
// deadline (the out-of-service taint waits for it).
func (a *Agent) wakeFor(ctx context.Context, d Desired) {
	at := d.Wake
	if d.Drain != nil && a.cfg.OutOfService && d.Drain.Deadline.After(a.obs.Now) && (at.IsZero() || d.Drain.Deadline.Before(at)) {
		at = d.Drain.Deadline
	}
	if at.IsZero() || at.Equal(a.wakeAt) {
		return
	}
	if a.wakeTimer != nil {
		a.wakeTimer.Stop()
	}
	a.wakeAt = at
	a.wakeTimer = time.AfterFunc(at.Sub(a.Now()), func() {
		a.post(ctx, func() { a.wakeAt = time.Time{} })
	})
}

// reconcilePlan keeps the drain plan of Desired.Drain, made once per
// target, and tells each pod's sidecar when the pod will be stopped: the
// plan's StopBy for the pods it evicts, or the end of the pod's deletion
// once it is being deleted (by lastcall or by anyone), whichever is first
// (PodDeadlines). The drain runs with this very plan, so no worker is told
// a later time than its pod gets. While a drain holds, a pod's time only
// moves earlier: a target that changes does not undo what an earlier one
// may already have set in motion.
func (a *Agent) reconcilePlan(ctx context.Context, d Desired) {
	if !a.Pods.Synced() {
		return
	}
	pods, err := a.Pods.ListPods(ctx, a.cfg.Node)
	if err != nil {
		return
	}
	switch {
	case d.Drain == nil:
		a.plan, a.planFor = nil, ""
	case a.plan == nil || a.planFor != d.Drain.ID || !a.plan.Deadline.Equal(d.Drain.Deadline):
		p := drainer.NewPlan(pods, a.cfg.Self, d.Drain.Deadline, a.cfg.Drain)
		a.plan, a.planFor = &p, d.Drain.ID
	}
	deadlines := PodDeadlines(a.plan, pods, a.cfg.Self)
	told := make(map[types.UID]time.Time, len(pods))
	out := make(map[sidecar.PodRef]time.Time, len(pods))
	for i := range pods {
		p := &pods[i]
		t, ok := deadlines[p.UID]
		if prev, was := a.podTold[p.UID]; was && a.plan != nil && (!ok || prev.Before(t)) {
			t, ok = prev, true
		}
		if !ok {
			continue
		}
		if a.plan != nil {
			told[p.UID] = t
		}
		out[sidecar.PodRef{Namespace: p.Namespace, Name: p.Name}] = t
	}
	a.podTold = told
	a.Notifier.SetPodDeadlines(out)
}

func (a *Agent) reconcileSidecars(ctx context.Context, d Desired) {
	if d.Tell == nil || (a.told != nil && sameWord(*a.told, *d.Tell)) {
		return
	}
	st := *d.Tell
	a.told = &st
	gen := a.Notifier.Tell(st)
	log := a.Logger.With("phase", st.Phase, "notice", st.NoticeID)
	var drain watcher.Notice
	if d.Drain != nil {
		drain = *d.Drain
	}
	a.wg.Go(func() {
		tctx, cancel := context.WithTimeout(ctx, advisoryTimeout)
		if !st.Deadline.IsZero() && st.Deadline.After(a.Now()) {
			tctx, cancel = context.WithDeadline(ctx, st.Deadline)
		}
		defer cancel()
		told, err := a.Notifier.Told(tctx, gen)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("not every sidecar told", "told", told, "err", err)
				a.Metrics.fail("notify_sidecars")
			}
			return
		}
		if !drain.Detected.IsZero() {
			a.Metrics.sidecarsTold(drain, a.Now().Sub(drain.Detected))
		}
		log.Info("sidecars told", "told", told)
	})
}

// reconcileNode runs at most one node update at a time: cordon, then the
// condition, or, once the metadata confirms no notice holds, uncordon and
// clear the condition. What is on the node is read from the node's watch
// (Observed.Node), never assumed from a write's reply: an update applied
// whose reply was lost is seen there, and undone when no longer wanted.
// Nothing is changed before the watch has listed the node.
func (a *Agent) reconcileNode(ctx context.Context, d Desired) {
	node := a.obs.Node
	if node == nil || a.nodeBusy || a.Now().Before(a.retryAt) {
		return
	}
	if a.wroteRV != "" {
		// The last update succeeded: wait for the watch to show it (or a
		// second, if another update raced it and won).
		if node.ResourceVersion == a.wroteRV && a.Now().Sub(a.wroteAt) < time.Second {
			time.AfterFunc(time.Second, a.poke)
			return
		}
		a.wroteRV = ""
	}
	rec, recorded := drainer.RecordOf(node)
	cond, _ := conditionOf(node)
	seen := d.Seen
	if !a.obs.Synced {
		seen = withRecorded(seen, rec) // notices not read again yet keep their sightings
	}
	if recorded && sameSightings(rec, seen) {
		a.cordonTry = true
	}
	switch {
	case d.Cordon && (!recorded || !sameSightings(rec, seen)):
		n := d.Condition
		a.nodeOp(ctx, node, "cordon", func(ctx context.Context) error {
			_, err := a.Drainer.Cordon(ctx, a.cfg.Node, string(n.Source), string(n.Kind), seen...)
			return err
		}, func(err error) {
			a.cordonTry = true
			if err == nil && !recorded {
				took := a.Now().Sub(n.Detected)
				a.Metrics.cordoned(*n, took)
				a.Logger.Info("node cordoned", "since_notice", took.Round(time.Millisecond).String())
			}
		})
	case d.Condition != nil && (cond.Status != corev1.ConditionTrue || cond.Message != conditionMessage(*d.Condition)):
		n := *d.Condition
		a.nodeOp(ctx, node, "condition", func(ctx context.Context) error {
			return a.setCondition(ctx, n, true)
		}, nil)
	case a.cfg.OutOfService && d.Drain != nil && recorded && !rec.OutOfService && a.run != nil && a.run.finished &&
		a.run.notice.ID == d.Drain.ID && !a.Now().Before(d.Drain.Deadline):
		a.nodeOp(ctx, node, "out_of_service", func(ctx context.Context) error {
			_, err := a.Drainer.OutOfService(ctx, a.cfg.Node)
			return err
		}, func(err error) {
			if err == nil {
				a.Logger.Info("node tainted out of service: the machine is stopping, volumes detach at once")
			}
		})
	case d.Uncordon && recorded:
		changed := false // set by the operation, read once it is done
		a.nodeOp(ctx, node, "uncordon", func(ctx context.Context) error {
			var err error
			changed, err = a.Drainer.Uncordon(ctx, a.cfg.Node)
			if err == nil && changed {
				a.event(corev1.EventTypeNormal, "Uncordoned", "no notice is active: lastcall's cordon undone")
			}
			return err
		}, func(err error) {
			if err == nil {
				a.cordonTry = false
				if changed {
					a.Logger.Info("no notice is active: lastcall's cordon undone")
				}
			}
		})
	case d.ForeignCondition != nil && (cond.Status != corev1.ConditionTrue || cond.Reason != d.ForeignCondition.ConditionReason ||
		cond.Message != d.ForeignCondition.Message):
		l := *d.ForeignCondition
		a.nodeOp(ctx, node, "condition", func(ctx context.Context) error {
			return a.patchCondition(ctx, foreignCondition(l, a.Now()))
		}, nil)
	case d.Uncordon && d.ForeignCondition == nil && cond.Status == corev1.ConditionTrue:
		a.nodeOp(ctx, node, "condition", func(ctx context.Context) error {
			return a.setCondition(ctx, watcher.Notice{}, false)
		}, nil)
	}
}

// withRecorded returns seen with the sightings of rec that seen lacks.
func withRecorded(seen []drainer.Sighting, rec drainer.Record) []drainer.Sighting {
	out := slices.Clone(seen)
	for id, t := range rec.Seen {
		if !slices.ContainsFunc(seen, func(s drainer.Sighting) bool { return s.ID == id }) {
			out = append(out, drainer.Sighting{ID: id, Detected: t})
		}
	}
	return out
}

// sameSightings reports whether rec holds exactly the sightings seen.
func sameSightings(rec drainer.Record, seen []drainer.Sighting) bool {
	if len(rec.Seen) != len(seen) {
		return false
	}
	for _, s := range seen {
		if t, ok := rec.Seen[s.ID]; !ok || !t.Equal(s.Detected) {
			return false
		}
	}
	return true
}

// nodeOp runs do in the background, then done (if set) on the Run
// goroutine with its error; a failure is logged, counted and retried with
// backoff. node is the node as seen when the update was decided.
func (a *Agent) nodeOp(ctx context.Context, node *corev1.Node, op string, do func(context.Context) error, done func(error)) {
	a.nodeBusy = true
	rv := node.ResourceVersion
	a.wg.Go(func() {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := do(cctx)
		cancel()
		a.post(ctx, func() {
			a.nodeBusy = false
			if done != nil {
				done(err)
			}
			if err == nil {
				a.failures = 0
				a.wroteRV, a.wroteAt = rv, a.Now()
				return
			}
			a.failures++
			a.Logger.Error(op+" failed", "err", err, "failures", a.failures)
			a.Metrics.fail(op)
			if a.failures == 1 && op == "cordon" {
				a.eventAll(ctx, corev1.EventTypeWarning, "CordonFailed", "cordon of node %s refused or failed, retried with backoff: %v", a.cfg.Node, err)
			}
			wait := min(maxRetry, minRetry<<min(a.failures-1, 5))
			a.retryAt = a.Now().Add(wait)
			time.AfterFunc(wait, a.poke)
		})
	})
}

// reconcileDrain keeps one drain running towards Desired.Drain's deadline:
// it starts one when none runs, restarts it for another deadline, stops it
// when no drain notice holds, and runs it again when pods land on the node
// after it finished.
func (a *Agent) reconcileDrain(ctx context.Context, d Desired) {
	cur := a.run
	if d.Drain == nil {
		if cur != nil {
			cur.cancel()
			a.run = nil
		}
		return
	}
	want := *d.Drain
	if !a.cordonTry && cur == nil {
		// The drain starts once the cordon is done (or failed), or
		// CordonWait after the notice, whichever is first.
		if wait := want.Detected.Add(a.cfg.CordonWait).Sub(a.Now()); wait > 0 {
			if a.cordonTimer == nil {
				a.cordonTimer = time.AfterFunc(wait, func() {
					a.post(ctx, func() { a.cordonTimer = nil })
				})
			}
			return
		}
		a.Logger.Warn("cordon not done yet: draining without waiting for it", "waited", a.cfg.CordonWait.String())
	}
	if a.plan == nil {
		return // the pod cache has not synced: nothing to plan with yet
	}
	plan := *a.plan
	switch {
	case cur == nil:
	case cur.notice.ID != want.ID || !cur.notice.Deadline.Equal(want.Deadline):
		a.Logger.Info("drain target changed: restarting the drain", "was", cur.notice.ID, "now", want.ID)
		cur.cancel()
	case !cur.finished:
		return
	case !a.newPods(ctx, cur):
		return
	default:
		a.Logger.Info("pods landed on the node after the drain: draining again")
		pods, err := a.Pods.ListPods(ctx, a.cfg.Node)
		if err != nil {
			return
		}
		plan = plan.Refresh(pods, a.cfg.Self)
	}
	a.startDrain(ctx, want, plan)
}

// newPods reports whether the node has pods to evict that run did not
// cover, while the drain can still act on them.
func (a *Agent) newPods(ctx context.Context, run *drainRun) bool {
	if a.Now().After(run.notice.Deadline.Add(a.cfg.Drain.Overtime)) {
		return false
	}
	pods, err := a.Pods.ListPods(ctx, a.cfg.Node)
	if err != nil {
		return false
	}
	plan := run.plan.Refresh(pods, a.cfg.Self)
	for _, tier := range plan.Tiers {
		for _, p := range tier {
			if !run.covered[p.UID] {
				return true
			}
		}
	}
	return false
}

func (a *Agent) startDrain(ctx context.Context, n watcher.Notice, plan drainer.Plan) {
	dctx, cancel := context.WithCancel(ctx)
	run := &drainRun{notice: n, plan: plan, cancel: cancel}
	a.run = run
	log := a.Logger.With("source", n.Source, "kind", n.Kind, "id", n.ID)
	a.wg.Go(func() {
		defer cancel()
		rep, err := a.Drainer.DrainPlan(dctx, a.cfg.Node, plan)
		stopped := dctx.Err() != nil
		a.post(ctx, func() {
			run.finished = true
			run.covered = map[types.UID]bool{}
			for _, p := range rep.Pods {
				run.covered[p.UID] = true
			}
			for _, s := range rep.Skipped {
				run.covered[s.UID] = true
			}
			a.drained(ctx, log, n, rep, err, stopped)
		})
	})
}

// drained records the end of a drain run, on the Run goroutine.
func (a *Agent) drained(ctx context.Context, log *slog.Logger, n watcher.Notice, rep drainer.Report, err error, stopped bool) {
	switch {
	case stopped && ctx.Err() != nil:
		log.Info("drain interrupted: the agent is stopping")
		return
	case stopped:
		log.Info("drain stopped: canceled or superseded")
		return
	case err != nil:
		log.Error("drain failed", "err", err)
		a.Metrics.fail("drain")
		return
	}
	left := n.Deadline.Sub(rep.Finished)
	a.Metrics.drained(n, rep, rep.Finished.Sub(n.Detected), left)
	kind := corev1.EventTypeNormal
	if !rep.Drained {
		kind = corev1.EventTypeWarning
	}
	a.event(kind, "Drained", "drain for %s notice %s: drained=%v late=%v evicted=%d deleted=%d blocked=%d failed=%d, %s before the deadline",
		n.Kind, n.ID, rep.Drained, rep.Late, rep.Count(drainer.Evicted), rep.Count(drainer.Deleted), rep.Count(drainer.Blocked),
		rep.Count(drainer.Failed), left.Round(time.Millisecond))
	if !rep.Drained {
		a.podsLeft(ctx, n, rep)
	}
	ack := a.Acknowledger
	if ack == nil || ack.Source() != n.Source || a.acked[n.ID] {
		return
	}
	if !rep.Drained {
		log.Warn("drain incomplete: the event is not acknowledged, the platform waits for its NotBefore")
		return
	}
	a.acked[n.ID] = true
	a.wg.Go(func() {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := ack.Acknowledge(actx, n.ID); err != nil {
			log.Error("acknowledging the event failed", "err", err)
			a.Metrics.fail("acknowledge")
			return
		}
		log.Info("event acknowledged: the platform may go ahead")
	})
}

// reconcilePods reads the pods on the node once: it drops the done reports
// of pods that left, and records a Warning Event SidecarNotInjected, once,
// on each pod that asked for the sidecar (label lastcall.dev/inject=enabled)
// and has none: the injector was down or too slow, and its failurePolicy
// Ignore let the pod in without it. Such a pod's workers are never told.
func (a *Agent) reconcilePods(ctx context.Context) {
	if !a.Pods.Synced() {
		return
	}
	pods, err := a.Pods.ListPods(ctx, a.cfg.Node)
	if err != nil {
		return
	}
	present := make(map[types.UID]bool, len(pods))
	for i := range pods {
		present[pods[i].UID] = true
	}
	if a.Holds != nil {
		a.Holds.Forget(present)
	}
	for i := range pods {
		p := &pods[i]
		if p.Labels[injectLabel] != "enabled" || p.Annotations[injectedAnnotation] != "" || a.noSidecar[p.UID] {
			continue
		}
		a.noSidecar[p.UID] = true
		a.Metrics.podWithoutSidecar()
		a.Logger.Warn("pod asked for the sidecar and has none: the injector missed it", "pod", p.Namespace+"/"+p.Name)
		if why := p.Annotations[notInjectedAnnotation]; why != "" {
			a.podEvent(p, corev1.EventTypeWarning, "SidecarNotInjected",
				"the pod is labelled %s=enabled but the injector does not inject such a pod (%s): its workers will not be told of a preemption", injectLabel, why)
			continue
		}
		a.podEvent(p, corev1.EventTypeWarning, "SidecarNotInjected",
			"the pod is labelled %s=enabled but has no lastcall sidecar (the injector was unavailable): its workers will not be told of a preemption; recreate the pod", injectLabel)
	}
	for uid := range a.noSidecar {
		if !present[uid] {
			delete(a.noSidecar, uid)
		}
	}
}

// The injector's label and annotation (package injector), repeated here so
// that the agent does not import the injector.
const (
	injectLabel           = "lastcall.dev/inject"
	injectedAnnotation    = "lastcall.dev/injected"
	notInjectedAnnotation = "lastcall.dev/not-injected"
)

func (a *Agent) dryRun(ctx context.Context, log *slog.Logger, n watcher.Notice, action Action) {
	if action != ActionDrain {
		log.Info("dry run: would cordon the node", "would_drain", false)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	plan, err := a.Drainer.Plan(ctx, a.cfg.Node, n.Deadline, a.cfg.Drain)
	if err != nil {
		log.Error("dry run: planning failed", "err", err)
		return
	}
	now := a.Now()
	for tier, pods := range plan.Tiers {
		for _, p := range pods {
			log.Info("dry run: would evict", "pod", p.Namespace+"/"+p.Name, "tier", drainer.Tier(tier).String(), "grace_seconds", plan.Grace(&p, now))
		}
	}
	for _, s := range plan.Skipped {
		log.Info("dry run: would leave", "pod", s.Pod, "reason", s.Reason)
	}
	log.Info("dry run: plan done", "would_evict", plan.Len(), "would_leave", len(plan.Skipped))
}

func (a *Agent) event(kind, reason, format string, args ...any) {
	ref := &corev1.ObjectReference{Kind: "Node", Name: a.cfg.Node, UID: types.UID(a.cfg.Node)}
	a.Events.Eventf(ref, kind, reason, format, args...)
}

// podEvent records an Event on pod p.
func (a *Agent) podEvent(p *corev1.Pod, kind, reason, format string, args ...any) {
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: p.UID}
	a.Events.Eventf(ref, kind, reason, format, args...)
}

// eventAll records an Event on the node and on each pod on it but the
// agent's own.
func (a *Agent) eventAll(ctx context.Context, kind, reason, format string, args ...any) {
	a.event(kind, reason, format, args...)
	pods, err := a.Pods.ListPods(ctx, a.cfg.Node)
	if err != nil {
		return
	}
	for i := range pods {
		if p := &pods[i]; p.Namespace != a.cfg.Self.Namespace || p.Name != a.cfg.Self.Name {
			a.podEvent(p, kind, reason, format, args...)
		}
	}
}

// EvictionRefused records a Warning Event EvictionRefused on pod and on the
// node, the first time in a drain that the pod's eviction is refused: a
// PodDisruptionBudget allows no disruption (the drain retries until the
// cut-off), or the apiserver refuses it for good. Pass it as
// drainer.Options.Refused; it is safe for concurrent use and never blocks.
func (a *Agent) EvictionRefused(pod *corev1.Pod, err error) {
	a.podEvent(pod, corev1.EventTypeWarning, "EvictionRefused", "eviction refused: %v", err)
	a.event(corev1.EventTypeWarning, "EvictionRefused", "eviction of pod %s/%s refused: %v", pod.Namespace, pod.Name, err)
}

// podsLeft records a Warning Event on each pod an incomplete drain acted
// on that is still on the node: its eviction failed, a budget blocked it,
// or it had not stopped by the end of the drain.
func (a *Agent) podsLeft(ctx context.Context, n watcher.Notice, rep drainer.Report) {
	pods, err := a.Pods.ListPods(ctx, a.cfg.Node)
	if err != nil {
		return
	}
	results := make(map[types.UID]drainer.PodResult, len(rep.Pods))
	for _, r := range rep.Pods {
		results[r.UID] = r
	}
	for i := range pods {
		p := &pods[i]
		r, ok := results[p.UID]
		if !ok {
			continue
		}
		switch r.Outcome {
		case drainer.Failed:
			a.podEvent(p, corev1.EventTypeWarning, "EvictionFailed", "%s notice %s: eviction failed after %d attempts: %v; the node goes away at %s",
				n.Kind, n.ID, r.Attempts, r.Err, n.Deadline.UTC().Format(time.RFC3339))
		case drainer.Blocked:
			a.podEvent(p, corev1.EventTypeWarning, "EvictionBlocked", "%s notice %s: a PodDisruptionBudget refused the eviction until the cut-off (%v); left on a node that goes away at %s",
				n.Kind, n.ID, r.Err, n.Deadline.UTC().Format(time.RFC3339))
		default:
			a.podEvent(p, corev1.EventTypeWarning, "DrainIncomplete", "%s notice %s: %s, but the pod had not stopped when the drain ended; the node goes away at %s",
				n.Kind, n.ID, r.Outcome, n.Deadline.UTC().Format(time.RFC3339))
		}
	}
}

// EventReason is the reason of the Event recorded when a notice of kind
// arrives: SpotInterruption, Preemption, Rebalance, Maintenance or
// Termination.
func EventReason(k watcher.Kind) string {
	switch k {
	case watcher.KindRebalance:
		return "Rebalance"
	default:
		return conditionReason(k)
	}
}

// String describes the agent in logs.
func (a *Agent) String() string { return fmt.Sprintf("agent(%s)", a.cfg.Node) }

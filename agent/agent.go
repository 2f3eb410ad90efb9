package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/watcher"
)

// Drainer empties the node. *drainer.Drainer implements it.
type Drainer interface {
	// Cordon cordons and taints node; see drainer.Drainer.Cordon.
	Cordon(ctx context.Context, node, source string) (bool, error)
	// Uncordon undoes what Cordon recorded; see drainer.Drainer.Uncordon.
	Uncordon(ctx context.Context, node string) (bool, error)
	// Plan says what Drain would do, changing nothing.
	Plan(ctx context.Context, node string, deadline time.Time, p drainer.Policy) (drainer.Plan, error)
	// Drain evicts the node's pods before deadline.
	Drain(ctx context.Context, node string, deadline time.Time, p drainer.Policy) (drainer.Report, error)
}

var _ Drainer = (*drainer.Drainer)(nil)

// Notifier tells the workers on the node, through their sidecars, that the
// node is draining, or that it no longer is.
type Notifier interface {
	// Draining hands every sidecar on the node the news that n drains it.
	// It blocks until every connected sidecar has it, or ctx is done, and
	// returns how many sidecars were told.
	Draining(ctx context.Context, n watcher.Notice) (told int, err error)
	// Resumed tells every sidecar that the drain announced for n is off.
	Resumed(ctx context.Context, n watcher.Notice) (told int, err error)
}

// noSidecars is the Notifier of a node agent that serves no sidecars.
type noSidecars struct{}

func (noSidecars) Draining(context.Context, watcher.Notice) (int, error) { return 0, nil }
func (noSidecars) Resumed(context.Context, watcher.Notice) (int, error)  { return 0, nil }

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
}

// Deps are the agent's collaborators.
type Deps struct {
	// Client talks to the apiserver. Build it without a client-side rate
	// limit.
	Client kubernetes.Interface
	// Drainer cordons and drains.
	Drainer Drainer
	// Notifier tells the sidecars; nil tells none.
	Notifier Notifier
	// Pods lists the pods on the node from the agent's one watch.
	Pods *NodePods
	// Events records Kubernetes Events on the node.
	Events record.EventRecorder
	// Metrics records the agent's metrics; nil records none.
	Metrics *Metrics
	// Logger receives the agent's log. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Acknowledger, if set, is told once a drain for one of its notices is
	// over, so the platform may go ahead early (Azure scheduled events).
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

// Agent turns notices into drains. Create it with New and run it with Run.
type Agent struct {
	cfg Config
	Deps

	mu      sync.Mutex                // guards active, drain and earlier
	active  map[string]watcher.Notice // active notices whose action is not none, by ID
	drain   *drainRun                 // the drain under way, or nil
	earlier *drainer.Record           // the cordon an earlier run of the agent left, if any

	wg sync.WaitGroup // drains and webhook calls under way
}

type drainRun struct {
	id       string
	deadline time.Time
	cancel   context.CancelFunc
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
	return &Agent{cfg: cfg, Deps: deps, active: map[string]watcher.Notice{}}, nil
}

// Run handles notices until ctx is done or notices is closed, then waits
// for the drains and webhook calls it started. It first reads its node once
// to find a cordon an earlier run left, so that a restarted agent carries on
// with the deadline it had. It returns nil when ctx is canceled.
func (a *Agent) Run(ctx context.Context, notices <-chan watcher.Notice) error {
	defer a.wg.Wait()
	a.findEarlierRun(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case n, ok := <-notices:
			if !ok {
				return nil
			}
			a.handle(ctx, n)
		}
	}
}

func (a *Agent) findEarlierRun(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	node, err := a.Client.CoreV1().Nodes().Get(cctx, a.cfg.Node, metav1.GetOptions{})
	if err != nil {
		a.Logger.Warn("cannot read own node at start", "err", err)
		a.Metrics.fail("read_node")
		return
	}
	if rec, ok := drainer.RecordOf(node); ok {
		a.mu.Lock()
		a.earlier = &rec
		a.mu.Unlock()
		a.Logger.Info("node was cordoned by an earlier run; carrying on when the notice is seen again",
			"source", rec.Source, "cordoned_at", rec.Time)
	}
}

func (a *Agent) handle(ctx context.Context, n watcher.Notice) {
	if n.Detected.IsZero() {
		n.Detected = a.Now()
	}
	log := a.Logger.With("source", n.Source, "kind", n.Kind, "state", n.State, "id", n.ID)
	switch n.State {
	case watcher.StateInformational:
		log.Info("informational notice")
		a.event(corev1.EventTypeNormal, "MaintenanceScheduled", "%s notice %s from %s: %s", n.Kind, n.ID, n.Source, n.Action)
		return
	case watcher.StateCanceled:
		a.canceled(ctx, log, n)
		return
	}
	n = a.resumeDeadline(n)
	if n.Deadline.IsZero() {
		// Advisory notices (AWS rebalance) carry no deadline; a policy that
		// drains on them drains to this one.
		n.Deadline = n.Detected.Add(advisoryTimeout)
	}
	action := a.cfg.Policies.For(n.Kind)
	a.Metrics.notice(n, action)
	log = log.With("action", action, "deadline_in", n.Deadline.Sub(a.Now()).Round(time.Millisecond).String())
	log.Info("notice received")
	if a.cfg.DryRun {
		a.dryRun(ctx, log, n, action)
		return
	}
	if action == ActionNone {
		a.event(corev1.EventTypeNormal, "NoticeIgnored", "%s notice from %s ignored by policy", n.Kind, n.Source)
		return
	}
	a.mu.Lock()
	a.active[n.ID] = n
	a.mu.Unlock()

	// At once and in parallel: sidecars, cordon, Event and condition,
	// webhook. The drain starts once the cordon is done, so that nothing
	// new is scheduled onto the node while it empties.
	cordoned := make(chan struct{})
	a.wg.Go(func() { a.tellSidecars(ctx, log, n) })
	a.wg.Go(func() {
		defer close(cordoned)
		a.cordon(ctx, log, n)
	})
	a.wg.Go(func() { a.announce(ctx, log, n, action) })
	if a.cfg.Webhook.URL != "" {
		a.wg.Go(func() { a.sendWebhook(ctx, log, n, action) })
	}
	if action == ActionDrain {
		a.startDrain(ctx, log, n, cordoned)
	}
}

// advisoryTimeout bounds the work done for a notice without a deadline
// (an AWS rebalance recommendation), or whose deadline has passed.
const advisoryTimeout = 2 * time.Minute

// noticeContext bounds the work for n by its deadline, or by
// advisoryTimeout when n has none or it has passed: the machine may still be
// there, and a cordon late is better than none.
func (a *Agent) noticeContext(ctx context.Context, n watcher.Notice) (context.Context, context.CancelFunc) {
	if n.Deadline.After(a.Now()) {
		return context.WithDeadline(ctx, n.Deadline)
	}
	return context.WithTimeout(ctx, advisoryTimeout)
}

// resumeDeadline keeps the deadline a restarted agent first worked to: a
// GCE preemption seen again after a restart is detected later than it
// happened, and its computed deadline would be too late.
func (a *Agent) resumeDeadline(n watcher.Notice) watcher.Notice {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.earlier == nil || a.earlier.Source != string(n.Source) || a.earlier.Time.IsZero() {
		return n
	}
	window := n.Deadline.Sub(n.Detected)
	if first := a.earlier.Time.Add(window); first.Before(n.Deadline) && n.Source == watcher.SourceGCE {
		a.Logger.Info("deadline taken from the earlier run", "deadline", first)
		n.Deadline = first
	}
	a.earlier = nil
	return n
}

func (a *Agent) tellSidecars(ctx context.Context, log *slog.Logger, n watcher.Notice) {
	ctx, cancel := a.noticeContext(ctx, n)
	defer cancel()
	told, err := a.Notifier.Draining(ctx, n)
	if err != nil {
		log.Error("telling sidecars failed", "told", told, "err", err)
		a.Metrics.fail("notify_sidecars")
		return
	}
	a.Metrics.sidecarsTold(a.Now().Sub(n.Detected))
	log.Info("sidecars told", "told", told)
}

func (a *Agent) cordon(ctx context.Context, log *slog.Logger, n watcher.Notice) {
	ctx, cancel := a.noticeContext(ctx, n)
	defer cancel()
	changed, err := a.Drainer.Cordon(ctx, a.cfg.Node, string(n.Source))
	if err != nil {
		log.Error("cordon failed", "err", err)
		a.Metrics.fail("cordon")
		return
	}
	took := a.Now().Sub(n.Detected)
	a.Metrics.cordoned(took)
	log.Info("node cordoned", "changed", changed, "since_notice", took.Round(time.Millisecond).String())
}

func (a *Agent) announce(ctx context.Context, log *slog.Logger, n watcher.Notice, action Action) {
	a.event(corev1.EventTypeWarning, "PreemptionImminent", "%s notice from %s (id %s): node goes away at %s; action %s",
		n.Kind, n.Source, n.ID, n.Deadline.UTC().Format(time.RFC3339), action)
	ctx, cancel := a.noticeContext(ctx, n)
	defer cancel()
	if err := a.setCondition(ctx, n, true); err != nil {
		log.Error("setting node condition failed", "err", err)
		a.Metrics.fail("condition")
	}
}

func (a *Agent) startDrain(ctx context.Context, log *slog.Logger, n watcher.Notice, cordoned <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur := a.drain; cur != nil {
		if !n.Deadline.Before(cur.deadline) {
			log.Info("drain already under way to an earlier deadline", "draining_for", cur.id)
			return
		}
		log.Info("earlier deadline: restarting the drain", "was_draining_for", cur.id)
		cur.cancel()
	}
	dctx, cancel := context.WithCancel(ctx)
	run := &drainRun{id: n.ID, deadline: n.Deadline, cancel: cancel}
	a.drain = run
	a.wg.Go(func() {
		defer cancel()
		select {
		case <-cordoned:
		case <-dctx.Done():
		}
		rep, err := a.Drainer.Drain(dctx, a.cfg.Node, n.Deadline, a.cfg.Drain)
		a.mu.Lock()
		if a.drain == run {
			a.drain = nil
		}
		a.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				log.Info("drain interrupted: the agent is stopping", "err", err)
				return
			}
			if dctx.Err() != nil {
				log.Info("drain stopped: canceled or superseded", "err", err)
				return
			}
			log.Error("drain failed", "err", err)
			a.Metrics.fail("drain")
			return
		}
		left := n.Deadline.Sub(rep.Finished)
		a.Metrics.drained(rep, rep.Finished.Sub(n.Detected), left)
		if ack := a.Acknowledger; ack != nil && ack.Source() == n.Source {
			if err := ack.Acknowledge(dctx, n.ID); err != nil {
				log.Error("acknowledging the event failed", "err", err)
				a.Metrics.fail("acknowledge")
			} else {
				log.Info("event acknowledged: the platform may go ahead")
			}
		}
		a.event(corev1.EventTypeNormal, "Drained", "drain for %s notice %s: drained=%v evicted=%d deleted=%d blocked=%d failed=%d, %s before the deadline",
			n.Kind, n.ID, rep.Drained, rep.Count(drainer.Evicted), rep.Count(drainer.Deleted), rep.Count(drainer.Blocked),
			rep.Count(drainer.Failed), left.Round(time.Millisecond))
	})
}

func (a *Agent) canceled(ctx context.Context, log *slog.Logger, n watcher.Notice) {
	a.Metrics.notice(n, "")
	a.mu.Lock()
	delete(a.active, n.ID)
	remaining := len(a.active)
	if a.drain != nil && a.drain.id == n.ID {
		a.drain.cancel()
		a.drain = nil
	}
	a.mu.Unlock()
	log.Info("notice canceled", "other_active_notices", remaining)
	if remaining > 0 {
		return
	}
	if a.cfg.DryRun {
		log.Info("dry run: would uncordon the node")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	changed, err := a.Drainer.Uncordon(ctx, a.cfg.Node)
	if err != nil {
		log.Error("uncordon failed", "err", err)
		a.Metrics.fail("uncordon")
	} else {
		log.Info("node uncordoned", "changed", changed)
	}
	if _, err := a.Notifier.Resumed(ctx, n); err != nil {
		log.Error("telling sidecars of the cancellation failed", "err", err)
		a.Metrics.fail("notify_sidecars")
	}
	if err := a.setCondition(ctx, n, false); err != nil {
		log.Error("clearing node condition failed", "err", err)
		a.Metrics.fail("condition")
	}
	a.event(corev1.EventTypeNormal, "PreemptionCanceled", "%s notice %s from %s canceled; lastcall's cordon undone", n.Kind, n.ID, n.Source)
}

func (a *Agent) dryRun(ctx context.Context, log *slog.Logger, n watcher.Notice, action Action) {
	if action != ActionDrain {
		log.Info("dry run: would cordon the node and tell the sidecars", "would_drain", false)
		return
	}
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

// String describes the agent in logs.
func (a *Agent) String() string { return fmt.Sprintf("agent(%s)", a.cfg.Node) }

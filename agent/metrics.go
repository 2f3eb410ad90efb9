package agent

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/watcher"
)

// Metrics are the agent's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	notices       *prometheus.CounterVec
	toCordon      *prometheus.HistogramVec
	toSidecars    *prometheus.HistogramVec
	toDrained     *prometheus.HistogramVec
	deadlineLeft  *prometheus.HistogramVec
	drains        *prometheus.CounterVec
	errors        *prometheus.CounterVec
	webhookStatus *prometheus.CounterVec
	deadline      *prometheus.GaugeVec
	buildInfo     *prometheus.GaugeVec
	uninjected    prometheus.Counter
	foreign       *prometheus.CounterVec
}

// Operations counted by lastcall_agent_errors_total; each is initialised
// at 0.
var errorOps = []string{"read_node", "cordon", "uncordon", "condition", "out_of_service", "drain", "notify_sidecars", "acknowledge"}

// Results counted by lastcall_webhook_requests_total: sent (a 2xx),
// refused (another status, after the retries), error (no answer, after the
// retries), retried (an attempt that will be tried again).
var webhookResults = []string{"sent", "refused", "error", "retried"}

// noticeLabels label the latency histograms by the notice's source (gce,
// aws, azure, sim) and kind (preemption, spot-interruption, ...): both are
// closed sets, so a node has at most a few dozen series per histogram, and
// only for the notices it has seen (none is created up front).
var noticeLabels = []string{"source", "kind"}

// latencyBuckets spans a cordon in milliseconds to a two-minute AWS window.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 20, 30, 60, 120}

// NewMetrics creates the agent's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_notices_handled_total",
			Help: "Notices the agent acted on, by source, kind, state and action.",
		}, []string{"source", "kind", "state", "action"}),
		toCordon: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lastcall_notice_to_cordon_seconds", Help: "Time from detecting a notice to the node being cordoned.", Buckets: latencyBuckets,
		}, noticeLabels),
		toSidecars: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lastcall_notice_to_sidecars_told_seconds", Help: "Time from detecting a notice to every connected sidecar being told.", Buckets: latencyBuckets,
		}, noticeLabels),
		toDrained: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lastcall_notice_to_drained_seconds", Help: "Time from detecting a notice to the end of the drain.", Buckets: latencyBuckets,
		}, noticeLabels),
		deadlineLeft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lastcall_drain_deadline_left_seconds", Help: "Time left before the deadline when a drain ended.", Buckets: []float64{0, 1, 2, 5, 10, 15, 20, 30, 60, 90, 120},
		}, noticeLabels),
		drains: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_drains_total", Help: "Drains finished, by result: drained (every evicted pod gone) or incomplete.",
		}, []string{"result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_agent_errors_total", Help: "Errors the agent handled, by operation.",
		}, []string{"op"}),
		webhookStatus: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_webhook_requests_total", Help: "Webhook notifications, by result: sent, refused, error (after the retries) and retried.",
		}, []string{"result"}),
		deadline: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lastcall_notice_deadline_timestamp_seconds",
			Help: "Deadline (unix seconds) of the earliest active notice of each kind; no series when none is active.",
		}, []string{"kind"}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lastcall_build_info", Help: "Always 1; the labels say the binary's version and Go version.",
		}, []string{"version", "goversion"}),
		uninjected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lastcall_pods_without_sidecar_total",
			Help: "Pods that asked for the sidecar (label lastcall.dev/inject=enabled) and landed on the node without it: the injector missed them.",
		}),
		foreign: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_foreign_drains_total",
			Help: "Drains by another tool (source node) the workers were told of, by the tool (reason: a configured source or other).",
		}, []string{"source", "reason"}),
	}
	for _, r := range []string{"drained", "incomplete"} {
		m.drains.WithLabelValues(r)
	}
	for _, op := range errorOps {
		m.errors.WithLabelValues(op)
	}
	for _, r := range webhookResults {
		m.webhookStatus.WithLabelValues(r)
	}
	reg.MustRegister(m.notices, m.toCordon, m.toSidecars, m.toDrained, m.deadlineLeft, m.drains, m.errors, m.webhookStatus,
		m.deadline, m.buildInfo, m.uninjected, m.foreign)
	return m
}

// SetBuildInfo sets lastcall_build_info for version.
func (m *Metrics) SetBuildInfo(version string) {
	if m != nil {
		m.buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	}
}

// Watching initialises the notice counter at 0 for every kind of source
// with the action policies give it, so that the first notice of a kind is
// an increase that rate() sees.
func (m *Metrics) Watching(source watcher.Source, p Policies) {
	if m == nil {
		return
	}
	for kind := range DefaultPolicies() {
		m.notices.WithLabelValues(string(source), string(kind), string(watcher.StateActive), string(p.For(kind)))
	}
}

// deadlines sets the deadline gauge from the active notices: one series per
// kind, the earliest deadline, and none for kinds without an active notice.
func (m *Metrics) deadlines(notices map[string]Tracked) {
	if m == nil {
		return
	}
	earliest := map[watcher.Kind]time.Time{}
	for _, t := range notices {
		if d, ok := earliest[t.Notice.Kind]; !ok || t.Notice.Deadline.Before(d) {
			earliest[t.Notice.Kind] = t.Notice.Deadline
		}
	}
	for kind := range DefaultPolicies() {
		if _, ok := earliest[kind]; !ok {
			m.deadline.DeleteLabelValues(string(kind))
		}
	}
	for kind, d := range earliest {
		m.deadline.WithLabelValues(string(kind)).Set(float64(d.UnixNano()) / 1e9)
	}
}

func (m *Metrics) foreignDrain(l ForeignLabel) {
	if m != nil {
		m.foreign.WithLabelValues(l.Source, l.Reason).Inc()
	}
}

func (m *Metrics) podWithoutSidecar() {
	if m != nil {
		m.uninjected.Inc()
	}
}

func (m *Metrics) notice(n watcher.Notice, a Action) {
	if m != nil {
		m.notices.WithLabelValues(string(n.Source), string(n.Kind), string(n.State), string(a)).Inc()
	}
}

func (m *Metrics) cordoned(n watcher.Notice, d time.Duration) {
	if m != nil {
		m.toCordon.WithLabelValues(string(n.Source), string(n.Kind)).Observe(d.Seconds())
	}
}

func (m *Metrics) sidecarsTold(n watcher.Notice, d time.Duration) {
	if m != nil {
		m.toSidecars.WithLabelValues(string(n.Source), string(n.Kind)).Observe(d.Seconds())
	}
}

func (m *Metrics) drained(n watcher.Notice, rep drainer.Report, took, left time.Duration) {
	if m == nil {
		return
	}
	m.toDrained.WithLabelValues(string(n.Source), string(n.Kind)).Observe(took.Seconds())
	m.deadlineLeft.WithLabelValues(string(n.Source), string(n.Kind)).Observe(max(0, left.Seconds()))
	result := "incomplete"
	if rep.Drained {
		result = "drained"
	}
	m.drains.WithLabelValues(result).Inc()
}

func (m *Metrics) fail(op string) {
	if m != nil {
		m.errors.WithLabelValues(op).Inc()
	}
}

func (m *Metrics) webhook(result string) {
	if m != nil {
		m.webhookStatus.WithLabelValues(result).Inc()
	}
}

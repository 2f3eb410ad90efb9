package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/watcher"
)

// Metrics are the agent's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	notices       *prometheus.CounterVec
	toCordon      prometheus.Histogram
	toSidecars    prometheus.Histogram
	toDrained     prometheus.Histogram
	deadlineLeft  prometheus.Histogram
	drains        *prometheus.CounterVec
	errors        *prometheus.CounterVec
	webhookStatus *prometheus.CounterVec
}

// latencyBuckets spans a cordon in milliseconds to a two-minute AWS window.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 20, 30, 60, 120}

// NewMetrics creates the agent's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		notices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_notices_handled_total",
			Help: "Notices the agent acted on, by source, kind, state and action.",
		}, []string{"source", "kind", "state", "action"}),
		toCordon: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lastcall_notice_to_cordon_seconds", Help: "Time from detecting a notice to the node being cordoned.", Buckets: latencyBuckets,
		}),
		toSidecars: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lastcall_notice_to_sidecars_told_seconds", Help: "Time from detecting a notice to every connected sidecar being told.", Buckets: latencyBuckets,
		}),
		toDrained: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lastcall_notice_to_drained_seconds", Help: "Time from detecting a notice to the end of the drain.", Buckets: latencyBuckets,
		}),
		deadlineLeft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lastcall_drain_deadline_left_seconds", Help: "Time left before the deadline when a drain ended.", Buckets: []float64{0, 1, 2, 5, 10, 15, 20, 30, 60, 90, 120},
		}),
		drains: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_drains_total", Help: "Drains finished, by result: drained (every evicted pod gone) or incomplete.",
		}, []string{"result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_agent_errors_total", Help: "Errors the agent handled, by operation.",
		}, []string{"op"}),
		webhookStatus: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_webhook_requests_total", Help: "Webhook notifications sent, by result.",
		}, []string{"result"}),
	}
	reg.MustRegister(m.notices, m.toCordon, m.toSidecars, m.toDrained, m.deadlineLeft, m.drains, m.errors, m.webhookStatus)
	return m
}

func (m *Metrics) notice(n watcher.Notice, a Action) {
	if m != nil {
		m.notices.WithLabelValues(string(n.Source), string(n.Kind), string(n.State), string(a)).Inc()
	}
}

func (m *Metrics) cordoned(d time.Duration) {
	if m != nil {
		m.toCordon.Observe(d.Seconds())
	}
}

func (m *Metrics) sidecarsTold(d time.Duration) {
	if m != nil {
		m.toSidecars.Observe(d.Seconds())
	}
}

func (m *Metrics) drained(rep drainer.Report, took, left time.Duration) {
	if m == nil {
		return
	}
	m.toDrained.Observe(took.Seconds())
	m.deadlineLeft.Observe(max(0, left.Seconds()))
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

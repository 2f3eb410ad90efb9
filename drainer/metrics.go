package drainer

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what drains do. The zero value is not usable; build one
// with NewMetrics. A nil *Metrics counts nothing.
type Metrics struct {
	evictions *prometheus.CounterVec
}

// NewMetrics creates the drainer's metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_evictions_total",
			Help: "Pods a drain acted on, by outcome (evicted, deleted, gone, blocked, failed).",
		}, []string{"outcome"}),
	}
	for _, o := range []Outcome{Evicted, Deleted, Gone, Blocked, Failed} {
		m.evictions.WithLabelValues(string(o))
	}
	reg.MustRegister(m.evictions)
	return m
}

func (m *Metrics) observe(o Outcome) {
	if m == nil {
		return
	}
	m.evictions.WithLabelValues(string(o)).Inc()
}

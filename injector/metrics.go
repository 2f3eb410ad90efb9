package injector

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a pod goes without the sidecar (lastcall_injector_skipped_total)
// and kinds of errors (lastcall_injector_errors_total).
const (
	SkipNotPodCreate    = "not_pod_create"
	SkipNotLabelled     = "not_labelled"
	SkipAlreadyInjected = "already_injected"
	SkipExcluded        = "excluded_namespace"
	SkipNotInjectable   = "not_injectable"

	ErrDecode  = "decode"
	ErrRefused = "refused"
	ErrEncode  = "encode"
)

// Metrics are the injector's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	injected prometheus.Counter
	skipped  *prometheus.CounterVec
	errors   *prometheus.CounterVec
}

// NewMetrics creates the injector's metrics, with every label value at 0,
// and lastcall_build_info for version, and registers them on reg.
func NewMetrics(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{
		injected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lastcall_injector_injected_total", Help: "Pods the sidecar was added to.",
		}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_injector_skipped_total", Help: "Admission requests answered without a change, by reason.",
		}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lastcall_injector_errors_total", Help: "Admission requests that failed or were refused, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range []string{SkipNotPodCreate, SkipNotLabelled, SkipAlreadyInjected, SkipExcluded, SkipNotInjectable} {
		m.skipped.WithLabelValues(r)
	}
	for _, r := range []string{ErrDecode, ErrRefused, ErrEncode} {
		m.errors.WithLabelValues(r)
	}
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lastcall_build_info", Help: "Always 1; the labels say the binary's version and Go version.",
	}, []string{"version", "goversion"})
	info.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(m.injected, m.skipped, m.errors, info)
	return m
}

func (m *Metrics) inject() {
	if m != nil {
		m.injected.Inc()
	}
}

func (m *Metrics) skip(reason string) {
	if m != nil {
		m.skipped.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) fail(reason string) {
	if m != nil {
		m.errors.WithLabelValues(reason).Inc()
	}
}

package watcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons label the errors counted by Metrics. They are few and fixed so the
// counter's cardinality stays small.
const (
	ReasonNetwork   = "network"    // connection refused, reset, DNS, EOF
	ReasonTimeout   = "timeout"    // the request or its response was too slow
	ReasonMalformed = "malformed"  // the body did not parse, or a value is unknown
	ReasonEmpty     = "empty_body" // a 200 with nothing in it
	ReasonHTTP401   = "http_401"   // token missing or expired
	ReasonHTTP403   = "http_403"   // header missing or access denied
	ReasonHTTP404   = "http_404"   // a path that should exist does not
	ReasonHTTP429   = "http_429"   // throttled
	ReasonHTTP5xx   = "http_5xx"   // server error
	ReasonHTTPOther = "http_other" // any other unexpected status
	ReasonToken     = "token"      // the IMDSv2 session token could not be had
)

// ReasonForStatus maps an unexpected HTTP status code to a Reason.
func ReasonForStatus(code int) string {
	switch {
	case code == 401:
		return ReasonHTTP401
	case code == 403:
		return ReasonHTTP403
	case code == 404:
		return ReasonHTTP404
	case code == 429:
		return ReasonHTTP429
	case code >= 500 && code <= 599:
		return ReasonHTTP5xx
	default:
		return ReasonHTTPOther
	}
}

// Metrics counts what the watchers see. A nil *Metrics is valid and counts
// nothing, so tests and callers that do not export metrics can leave it out.
type Metrics struct {
	errors      *prometheus.CounterVec
	notices     *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
}

// NewMetrics creates the watcher metrics and registers them on reg. Calling it
// twice with the same registry returns metrics backed by the same counters.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "lastcall",
		Subsystem: "watcher",
		Name:      "errors_total",
		Help:      "Errors reading cloud metadata, by source and reason. None of them stops the watcher.",
	}, []string{"source", "reason"})
	notices := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "lastcall",
		Subsystem: "watcher",
		Name:      "notices_total",
		Help:      "Notices sent, by source, kind and state.",
	}, []string{"source", "kind", "state"})
	lastSuccess := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "lastcall",
		Subsystem: "watcher",
		Name:      "last_success_timestamp_seconds",
		Help:      "When the source's metadata was last read successfully (unix seconds). A watcher that stops reading is blind: alert on its age.",
	}, []string{"source"})
	var err error
	if errs, err = register(reg, errs); err != nil {
		return nil, fmt.Errorf("register errors_total: %w", err)
	}
	if notices, err = register(reg, notices); err != nil {
		return nil, fmt.Errorf("register notices_total: %w", err)
	}
	if lastSuccess, err = register(reg, lastSuccess); err != nil {
		return nil, fmt.Errorf("register last_success_timestamp_seconds: %w", err)
	}
	return &Metrics{errors: errs, notices: notices, lastSuccess: lastSuccess}, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// Watching pre-initialises source's error counters at 0 for every reason,
// so that rate() and increase() see the first error; the agent calls it
// once the source is known.
func (m *Metrics) Watching(source Source) {
	if m == nil {
		return
	}
	for _, r := range []string{ReasonNetwork, ReasonTimeout, ReasonMalformed, ReasonEmpty, ReasonHTTP401, ReasonHTTP403,
		ReasonHTTP404, ReasonHTTP429, ReasonHTTP5xx, ReasonHTTPOther, ReasonToken} {
		m.errors.WithLabelValues(string(source), r)
	}
}

// Success records a successful read of source's metadata at t.
func (m *Metrics) Success(source Source, t time.Time) {
	if m == nil {
		return
	}
	m.lastSuccess.WithLabelValues(string(source)).Set(float64(t.UnixNano()) / 1e9)
}

// Error counts one error from source for reason.
func (m *Metrics) Error(source Source, reason string) {
	if m == nil {
		return
	}
	m.errors.WithLabelValues(string(source), reason).Inc()
}

// Notice counts one notice sent.
func (m *Metrics) Notice(n Notice) {
	if m == nil {
		return
	}
	m.notices.WithLabelValues(string(n.Source), string(n.Kind), string(n.State)).Inc()
}

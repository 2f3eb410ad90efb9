package fleet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/kubernetes"
)

// Metrics is a scrape: metric name → series.
type Metrics map[string]*dto.MetricFamily

// Sum adds the values of name's series whose labels match every pair in
// match; by names labels to group by ("" groups all into one).
func (m Metrics) Sum(name, by string, match map[string]string) map[string]float64 {
	out := map[string]float64{}
	f := m[name]
	if f == nil {
		return out
	}
	for _, s := range f.Metric {
		labels := map[string]string{}
		for _, l := range s.Label {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range match {
			ok = ok && labels[k] == v
		}
		if !ok {
			continue
		}
		var v float64
		switch {
		case s.Counter != nil:
			v = s.Counter.GetValue()
		case s.Gauge != nil:
			v = s.Gauge.GetValue()
		case s.Untyped != nil:
			v = s.Untyped.GetValue()
		}
		out[labels[by]] += v
	}
	return out
}

// Total is Sum of all of name's series matching match.
func (m Metrics) Total(name string, match map[string]string) float64 {
	return m.Sum(name, "", match)[""]
}

func parseMetrics(raw []byte) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return Metrics(fams), nil
}

// ScrapeAPIServer returns the apiserver's /metrics.
func ScrapeAPIServer(ctx context.Context, client kubernetes.Interface) (Metrics, error) {
	raw, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("apiserver metrics: %w", err)
	}
	return parseMetrics(raw)
}

// ScrapeAgent returns an agent's /metrics at host:port.
func ScrapeAgent(ctx context.Context, addr string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent metrics %s: %w", addr, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent metrics %s: %s", addr, resp.Status)
	}
	return parseMetrics(raw)
}

// histogram returns the cumulative bucket counts (upper bound → count) and
// the total count of name's series whose labels match match.
func (m Metrics) histogram(name string, match map[string]string) (map[float64]float64, float64) {
	buckets := map[float64]float64{}
	var count float64
	f := m[name]
	if f == nil {
		return buckets, 0
	}
	for _, s := range f.Metric {
		if s.Histogram == nil {
			continue
		}
		ok := true
		for k, v := range match {
			found := false
			for _, l := range s.Label {
				found = found || (l.GetName() == k && l.GetValue() == v)
			}
			ok = ok && found
		}
		if !ok {
			continue
		}
		for _, b := range s.Histogram.Bucket {
			buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
		}
		count += float64(s.Histogram.GetSampleCount())
	}
	return buckets, count
}

// Quantile estimates the q-quantile of histogram name's observations
// between the scrapes before and m (the upper bound of the bucket it falls
// in), and returns how many there were.
func (m Metrics) Quantile(before Metrics, name string, match map[string]string, q float64) (float64, float64) {
	after, n := m.histogram(name, match)
	prior, n0 := before.histogram(name, match)
	total := n - n0
	if total <= 0 {
		return 0, 0
	}
	bounds := make([]float64, 0, len(after))
	for b := range after {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	for _, b := range bounds {
		if after[b]-prior[b] >= q*total {
			return b, total
		}
	}
	return math.Inf(1), total
}

package detect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/azure"
	"github.com/lastcall-dev/lastcall/watcher/ec2"
	"github.com/lastcall-dev/lastcall/watcher/gce"
	"github.com/lastcall-dev/lastcall/watcher/sim"
)

// ErrNoCloud is returned when no metadata service answered as its cloud's
// does. The error wrapping it says what each probe saw.
var ErrNoCloud = errors.New("no cloud metadata service found")

// Probes configure cloud detection. The zero value probes the real
// link-local endpoints with a 2 s budget.
type Probes struct {
	// GCEHost is the GCE metadata server as host[:port]. Default
	// gce.DefaultHost.
	GCEHost string
	// AWSEndpoint is the EC2 metadata service's base URL. Default
	// ec2.DefaultEndpoint.
	AWSEndpoint string
	// AzureEndpoint is the Azure metadata service's base URL. Default
	// azure.DefaultEndpoint.
	AzureEndpoint string
	// Timeout bounds the whole detection. Default 2 s.
	Timeout time.Duration
	// HTTPClient sends the probes. Default: no proxy, 1 s dial timeout.
	HTTPClient *http.Client
}

// Cloud asks the three metadata services in parallel and returns the first
// that answers as its cloud does: GCE with the Metadata-Flavor: Google
// response header, EC2 with an IMDSv2 session token, Azure with the VM's ID.
// It blocks until one answers, all have failed, Timeout passes or ctx ends;
// with no cloud found it returns an error wrapping ErrNoCloud.
func Cloud(ctx context.Context, p Probes) (watcher.Source, error) {
	if p.GCEHost == "" {
		p.GCEHost = gce.DefaultHost
	}
	if p.AWSEndpoint == "" {
		p.AWSEndpoint = ec2.DefaultEndpoint
	}
	if p.AzureEndpoint == "" {
		p.AzureEndpoint = azure.DefaultEndpoint
	}
	if p.Timeout <= 0 {
		p.Timeout = 2 * time.Second
	}
	if p.HTTPClient == nil {
		p.HTTPClient = &http.Client{Transport: &http.Transport{
			Proxy:       nil,
			DialContext: (&net.Dialer{Timeout: time.Second}).DialContext,
		}}
	}
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()

	type result struct {
		source watcher.Source
		err    error
	}
	probes := []struct {
		source watcher.Source
		probe  func(context.Context, Probes) error
	}{
		{watcher.SourceGCE, probeGCE},
		{watcher.SourceAWS, probeAWS},
		{watcher.SourceAzure, probeAzure},
	}
	results := make(chan result, len(probes)) // buffered: no probe blocks after Cloud returns
	for _, pr := range probes {
		go func() { results <- result{pr.source, pr.probe(ctx, p)} }()
	}
	var errs []error
	for range probes {
		r := <-results
		if r.err == nil {
			return r.source, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", r.source, r.err))
	}
	return "", fmt.Errorf("%w: %w", ErrNoCloud, errors.Join(errs...))
}

func probeGCE(ctx context.Context, p Probes) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.GCEHost+"/computeMetadata/v1/instance/id", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Metadata-Flavor", "Google")
	res, body, err := do(p.HTTPClient, req)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK || res.Header.Get("Metadata-Flavor") != "Google" || strings.TrimSpace(body) == "" {
		return fmt.Errorf("status %d, Metadata-Flavor %q", res.StatusCode, res.Header.Get("Metadata-Flavor"))
	}
	return nil
}

func probeAWS(ctx context.Context, p Probes) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, strings.TrimRight(p.AWSEndpoint, "/")+"/latest/api/token", nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "60")
	res, body, err := do(p.HTTPClient, req)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK || res.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "" || strings.TrimSpace(body) == "" {
		return fmt.Errorf("token request: status %d", res.StatusCode)
	}
	return nil
}

var uuid = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func probeAzure(ctx context.Context, p Probes) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(p.AzureEndpoint, "/")+"/metadata/instance/compute/vmId?api-version=2021-02-01&format=text", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Metadata", "true")
	res, body, err := do(p.HTTPClient, req)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK || !uuid.MatchString(strings.TrimSpace(body)) {
		return fmt.Errorf("vmId: status %d", res.StatusCode)
	}
	return nil
}

func do(c *http.Client, req *http.Request) (*http.Response, string, error) {
	res, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 4096))
	if err != nil {
		return nil, "", err
	}
	return res, string(body), nil
}

// Config chooses and configures the watcher New builds.
type Config struct {
	// Cloud forces the source: watcher.SourceGCE, SourceAWS, SourceAzure, or
	// SourceSim for the simulated source. Empty: detect with Probes.
	Cloud watcher.Source
	// Probes configure detection when Cloud is empty.
	Probes Probes
	// Options for each source; only the chosen one is used. Their Logger
	// and Metrics default to the ones below.
	GCE   gce.Options
	EC2   ec2.Options
	Azure azure.Options
	Sim   sim.Options
	// Logger and Metrics are given to the chosen watcher unless its own
	// options set them.
	Logger  *slog.Logger
	Metrics *watcher.Metrics
}

// New returns the watcher for cfg.Cloud, or for the detected cloud, and
// which source it is. It blocks only while detecting. With no cloud found
// the error wraps ErrNoCloud: choose SourceSim to run without one. The Azure
// watcher also has Acknowledge(ctx, eventID) error; a caller that wants it
// declares that interface and asserts it.
func New(ctx context.Context, cfg Config) (watcher.Watcher, watcher.Source, error) {
	src := cfg.Cloud
	if src == "" {
		var err error
		if src, err = Cloud(ctx, cfg.Probes); err != nil {
			return nil, "", err
		}
	}
	var w watcher.Watcher
	var err error
	switch src {
	case watcher.SourceGCE:
		o := cfg.GCE
		o.Logger, o.Metrics = or(o.Logger, cfg.Logger), orMetrics(o.Metrics, cfg.Metrics)
		w, err = gce.New(o)
	case watcher.SourceAWS:
		o := cfg.EC2
		o.Logger, o.Metrics = or(o.Logger, cfg.Logger), orMetrics(o.Metrics, cfg.Metrics)
		w, err = ec2.New(o)
	case watcher.SourceAzure:
		o := cfg.Azure
		o.Logger, o.Metrics = or(o.Logger, cfg.Logger), orMetrics(o.Metrics, cfg.Metrics)
		w, err = azure.New(o)
	case watcher.SourceSim:
		o := cfg.Sim
		o.Logger, o.Metrics = or(o.Logger, cfg.Logger), orMetrics(o.Metrics, cfg.Metrics)
		w, err = sim.New(o)
	default:
		return nil, "", fmt.Errorf("unknown cloud %q", src)
	}
	if err != nil {
		return nil, "", fmt.Errorf("new %s watcher: %w", src, err)
	}
	return w, src, nil
}

func or(a, b *slog.Logger) *slog.Logger {
	if a != nil {
		return a
	}
	return b
}

func orMetrics(a, b *watcher.Metrics) *watcher.Metrics {
	if a != nil {
		return a
	}
	return b
}

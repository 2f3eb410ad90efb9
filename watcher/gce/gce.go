package gce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"cloud.google.com/go/compute/metadata"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/poll"
)

// DefaultHost is the documented address of the GCE metadata server.
const DefaultHost = "169.254.169.254"

// Paths of the values this package watches, relative to /computeMetadata/v1/.
const (
	PathPreempted   = "instance/preempted"
	PathMaintenance = "instance/maintenance-event"
)

// Options configure a Watcher. The zero value watches the real metadata
// server with the defaults documented on each field.
type Options struct {
	// Host is the metadata server as host or host:port. Default DefaultHost.
	// It is applied in the HTTP transport, so it wins over the library's
	// GCE_METADATA_HOST.
	Host string
	// HTTPClient sends the requests; its Transport is wrapped, not changed.
	// Its Timeout must be zero, because hanging GETs last up to WaitTimeout;
	// the watcher sets its own deadline on every request. Default: a client
	// with a 2 s dial timeout that never uses a proxy.
	HTTPClient *http.Client
	// PreemptionNotice is the time from instance/preempted turning TRUE to
	// the VM being stopped. Default 30 s; set 120 s for Spot VMs created with
	// the optional preemption notice (preemptionNoticeDuration).
	PreemptionNotice time.Duration
	// MaintenanceNotice is the time from TERMINATE_ON_HOST_MAINTENANCE to the
	// VM being stopped. Default 60 s (GPU VMs get one hour).
	MaintenanceNotice time.Duration
	// IgnoreMaintenance turns off watching instance/maintenance-event.
	IgnoreMaintenance bool
	// WaitTimeout is how long the server may hold a hanging GET open
	// (timeout_sec). Default 60 s.
	WaitTimeout time.Duration
	// RequestTimeout bounds a plain GET, and is added to WaitTimeout for a
	// hanging one, so a server that vanishes without closing the connection
	// is noticed. Default 5 s.
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered wait after a failed
	// request. Defaults 50 ms and 1 s. The metadata library also retries 5xx,
	// 429 and refused connections itself, up to 5 times with pauses drawn
	// from 0-100 ms, 0-200 ms, ... 0-1.6 s, before an error reaches this loop.
	MinBackoff, MaxBackoff time.Duration
	// Clock returns the time a notice is detected; deadlines are computed
	// from it. Default time.Now.
	Clock func() time.Time
	// Logger receives the watcher's logs. Default: discard.
	Logger *slog.Logger
	// Metrics counts errors and notices. Default: nil, count nothing.
	Metrics *watcher.Metrics
}

// Watcher watches the GCE metadata server. Create it with New.
type Watcher struct {
	opts   Options
	client *metadata.Client
	logger *slog.Logger
	errs   *poll.Errors
	dedup  watcher.Dedup
}

var _ watcher.Watcher = (*Watcher)(nil)

// New returns a Watcher configured by opts. It does not contact the server.
func New(opts Options) (*Watcher, error) {
	if opts.Host == "" {
		opts.Host = DefaultHost
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Transport: defaultTransport()}
	}
	if opts.HTTPClient.Timeout != 0 {
		return nil, errors.New("gce options: HTTPClient.Timeout must be zero; hanging GETs set their own deadlines")
	}
	for _, d := range []struct {
		name string
		p    *time.Duration
		def  time.Duration
	}{
		{"PreemptionNotice", &opts.PreemptionNotice, 30 * time.Second},
		{"MaintenanceNotice", &opts.MaintenanceNotice, 60 * time.Second},
		{"WaitTimeout", &opts.WaitTimeout, 60 * time.Second},
		{"RequestTimeout", &opts.RequestTimeout, 5 * time.Second},
		{"MinBackoff", &opts.MinBackoff, 50 * time.Millisecond},
		{"MaxBackoff", &opts.MaxBackoff, time.Second},
	} {
		if *d.p < 0 {
			return nil, fmt.Errorf("gce options: %s is negative", d.name)
		}
		if *d.p == 0 {
			*d.p = d.def
		}
	}
	if opts.WaitTimeout < time.Second {
		return nil, errors.New("gce options: WaitTimeout must be at least 1s (timeout_sec counts seconds)")
	}
	if opts.MaxBackoff < opts.MinBackoff {
		return nil, errors.New("gce options: MaxBackoff is less than MinBackoff")
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	logger := poll.Logger(opts.Logger).With("source", string(watcher.SourceGCE))

	hc := *opts.HTTPClient
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	hc.Transport = &transport{base: base, host: opts.Host}
	client := metadata.NewWithOptions(&metadata.Options{Client: &hc})

	return &Watcher{
		opts:   opts,
		client: client,
		logger: logger,
		errs:   &poll.Errors{Source: watcher.SourceGCE, Logger: logger, Metrics: opts.Metrics},
	}, nil
}

func defaultTransport() *http.Transport {
	return &http.Transport{
		Proxy:               nil, // the metadata server is link-local; never go through a proxy
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
}

// Watch implements watcher.Watcher. It runs one loop of hanging GETs per
// watched value and returns nil when ctx is canceled and both loops ended.
func (w *Watcher) Watch(ctx context.Context, out chan<- watcher.Notice) error {
	values := 2
	if w.opts.IgnoreMaintenance {
		values = 1
	}
	synced := watcher.NewSyncer(watcher.SourceGCE, values)
	var wg sync.WaitGroup
	wg.Go(func() {
		w.watchValue(ctx, out, synced, PathPreempted, func(v string, detected time.Time) (watcher.Notice, bool, error) {
			return preemptionNotice(v, detected, w.opts.PreemptionNotice)
		})
	})
	if !w.opts.IgnoreMaintenance {
		wg.Go(func() {
			w.watchValue(ctx, out, synced, PathMaintenance, func(v string, detected time.Time) (watcher.Notice, bool, error) {
				prev, _ := w.dedup.Last(IDMaintenance)
				return maintenanceNotice(v, prev, detected, w.opts.MaintenanceNotice)
			})
		})
	}
	wg.Wait()
	return nil
}

// watchValue reads path once, then keeps a hanging GET open on it, turning
// every value into at most one notice, until ctx is done.
func (w *Watcher) watchValue(ctx context.Context, out chan<- watcher.Notice, synced *watcher.Syncer, path string, toNotice func(string, time.Time) (watcher.Notice, bool, error)) {
	bo := poll.Backoff{Min: w.opts.MinBackoff, Max: w.opts.MaxBackoff}
	etag := ""
	for ctx.Err() == nil {
		v, next, err := w.get(ctx, path, etag)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.errs.Fail(ctx, path, reason(err), err)
			if _, ok := errors.AsType[metadata.NotDefinedError](err); ok {
				etag = "" // start again with a plain read
			}
			if !poll.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		bo.Reset()
		w.errs.OK(ctx, path)

		n, ok, err := toNotice(v, w.opts.Clock())
		switch {
		case err != nil:
			w.errs.Fail(ctx, path, watcher.ReasonMalformed, err)
		case ok && w.dedup.First(n):
			w.opts.Metrics.Notice(n)
			w.logger.InfoContext(ctx, "notice", "kind", string(n.Kind), "state", string(n.State), "id", n.ID, "action", n.Action, "deadline", n.Deadline)
			if !watcher.Send(ctx, out, n) {
				return
			}
		}
		if err == nil && !synced.Read(ctx, out, path) {
			return
		}

		switch {
		case next == "":
			// Without an ETag there is no safe hanging GET: fall back to
			// reading the value every MaxBackoff.
			w.errs.Fail(ctx, path, watcher.ReasonMalformed, fmt.Errorf("get %s: response has no ETag", path))
			if !poll.Sleep(ctx, w.opts.MaxBackoff) {
				return
			}
		case next == etag:
			// The server held the request until its timeout and answered
			// with the value we had. A real server only does that after a
			// long wait; a short pause keeps a broken one from making this
			// loop spin. A change in the meantime is still caught: the next
			// request carries last_etag and returns at once.
			if !poll.Sleep(ctx, w.opts.MinBackoff) {
				return
			}
		}
		etag = next
	}
}

// get reads path: a plain GET when etag is empty, otherwise a hanging GET
// that returns when the value's ETag differs from etag or the server's
// timeout passes. It returns the value and its ETag.
func (w *Watcher) get(ctx context.Context, path, etag string) (value, newETag string, err error) {
	suffix, timeout := path, w.opts.RequestTimeout
	if etag != "" {
		wait := int(w.opts.WaitTimeout / time.Second)
		suffix += "?wait_for_change=true&last_etag=" + url.QueryEscape(etag) + "&timeout_sec=" + strconv.Itoa(wait)
		timeout += w.opts.WaitTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var got string
	ctx = context.WithValue(ctx, etagKey{}, &got)
	v, err := w.client.GetWithContext(ctx, suffix)
	if err != nil {
		return "", "", fmt.Errorf("get %s: %w", path, err)
	}
	return v, got, nil
}

func reason(err error) string {
	if e, ok := errors.AsType[*metadata.Error](err); ok {
		return watcher.ReasonForStatus(e.Code)
	}
	if _, ok := errors.AsType[metadata.NotDefinedError](err); ok {
		return watcher.ReasonHTTP404
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return watcher.ReasonTimeout
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return watcher.ReasonTimeout
	}
	return watcher.ReasonNetwork
}

// etagKey keys a *string in a request's context; transport stores the
// response's ETag there. The metadata library reads ETags but does not
// return them from GetWithContext.
type etagKey struct{}

// transport sends every request to host and records the ETag of each
// response for the caller that asked for it.
type transport struct {
	base http.RoundTripper
	host string
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != t.host {
		req = req.Clone(req.Context())
		req.URL.Host = t.host
		req.Host = t.host
	}
	res, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if p, ok := req.Context().Value(etagKey{}).(*string); ok {
		*p = res.Header.Get("ETag")
	}
	return res, nil
}

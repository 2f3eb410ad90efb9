package azure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/poll"
)

// Defaults for Options.
const (
	DefaultEndpoint   = "http://169.254.169.254"
	DefaultAPIVersion = "2020-07-01"
	// computeAPIVersion is used to ask the instance's own name.
	computeAPIVersion = "2021-02-01"
)

const (
	pathEvents = "/metadata/scheduledevents"
	pathName   = "/metadata/instance/compute/name"
	maxBody    = 1 << 20
)

// Options configure a Watcher. The zero value watches the real metadata
// service with the defaults documented on each field.
type Options struct {
	// Endpoint is the metadata service's base URL. Default DefaultEndpoint.
	Endpoint string
	// HTTPClient sends the requests. Default: a client with a 2 s dial
	// timeout that never uses a proxy. The watcher sets a deadline on every
	// request itself.
	HTTPClient *http.Client
	// APIVersion of the scheduled events API. Default DefaultAPIVersion.
	APIVersion string
	// VMName is the name Azure lists in an event's Resources for this VM.
	// Default: asked from the metadata service (compute/name) when Watch
	// starts, retried until it answers.
	VMName string
	// PollInterval is the time between two reads. Default 1 s.
	PollInterval time.Duration
	// RequestTimeout bounds one read. Default 5 s.
	RequestTimeout time.Duration
	// FirstRequestTimeout bounds the first read of scheduled events: that
	// call turns the service on for the VM and may take up to two minutes.
	// Default 2 min.
	FirstRequestTimeout time.Duration
	// Clock returns the time a notice is detected. Default time.Now.
	Clock func() time.Time
	// Logger receives the watcher's logs. Default: discard.
	Logger *slog.Logger
	// Metrics counts errors and notices. Default: nil, count nothing.
	Metrics *watcher.Metrics
}

// Watcher polls Azure Scheduled Events. Create it with New. Watch and
// Acknowledge may be called concurrently.
type Watcher struct {
	opts   Options
	logger *slog.Logger
	errs   *poll.Errors
	dedup  watcher.Dedup
}

var _ watcher.Watcher = (*Watcher)(nil)

// New returns a Watcher configured by opts. It does not contact the service.
func New(opts Options) (*Watcher, error) {
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	if _, err := url.Parse(opts.Endpoint); err != nil {
		return nil, fmt.Errorf("azure options: endpoint: %w", err)
	}
	opts.Endpoint = strings.TrimRight(opts.Endpoint, "/")
	if opts.APIVersion == "" {
		opts.APIVersion = DefaultAPIVersion
	}
	if opts.PollInterval < 0 || opts.RequestTimeout < 0 || opts.FirstRequestTimeout < 0 {
		return nil, errors.New("azure options: negative duration")
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Second
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.FirstRequestTimeout == 0 {
		opts.FirstRequestTimeout = 2 * time.Minute
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Transport: &http.Transport{
			Proxy:       nil, // Azure requires the metadata service be reached without a proxy
			DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		}}
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	logger := poll.Logger(opts.Logger).With("source", string(watcher.SourceAzure))
	return &Watcher{
		opts:   opts,
		logger: logger,
		errs:   &poll.Errors{Source: watcher.SourceAzure, Logger: logger, Metrics: opts.Metrics},
	}, nil
}

// Watch implements watcher.Watcher. It learns the VM's name if no VMName was
// given, then reads scheduled events at once and every PollInterval, until
// ctx is canceled; then it returns nil.
func (w *Watcher) Watch(ctx context.Context, out chan<- watcher.Notice) error {
	vm := w.opts.VMName
	bo := poll.Backoff{Min: 100 * time.Millisecond, Max: w.opts.PollInterval}
	for vm == "" {
		name, err := w.vmName(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			w.errs.Fail(ctx, pathName, reason(err), err)
			if !poll.Sleep(ctx, bo.Next()) {
				return nil
			}
			continue
		}
		w.errs.OK(ctx, pathName)
		vm = name
		w.logger.InfoContext(ctx, "vm name", "vm", vm)
	}

	synced := watcher.NewSyncer(watcher.SourceAzure, 1)
	live := make(map[string]watcher.Notice) // maintenance notices sent and not yet over
	var lastIncarnation int64 = -1
	first := true
	t := time.NewTicker(w.opts.PollInterval)
	defer t.Stop()
	for {
		timeout := w.opts.RequestTimeout
		if first {
			timeout = max(timeout, w.opts.FirstRequestTimeout)
		}
		body, err := w.get(ctx, pathEvents+"?api-version="+url.QueryEscape(w.opts.APIVersion), timeout)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			w.errs.Fail(ctx, pathEvents, reason(err), err)
		} else {
			first = false
			w.errs.OK(ctx, pathEvents)
			complete, ok := w.handle(ctx, out, body, vm, live, &lastIncarnation)
			if !ok || (complete && !synced.Read(ctx, out, pathEvents)) {
				return nil
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// handle turns one scheduled events document into notices. A maintenance
// event this watcher reported that is gone from a newer document is over
// (done or called off): it is reported canceled. complete says the whole
// document was understood; ok is false when ctx ended.
func (w *Watcher) handle(ctx context.Context, out chan<- watcher.Notice, body []byte, vm string, live map[string]watcher.Notice, lastIncarnation *int64) (complete, ok bool) {
	detected := w.opts.Clock()
	doc, err := parseDocument(body)
	if err != nil {
		r := watcher.ReasonMalformed
		if errors.Is(err, errEmpty) {
			r = watcher.ReasonEmpty
		}
		w.errs.Fail(ctx, pathEvents, r, err)
		return false, true
	}
	ns, err := notices(doc, vm, detected)
	if err != nil {
		w.errs.Fail(ctx, pathEvents, watcher.ReasonMalformed, err)
	}
	if doc.Incarnation > *lastIncarnation && err == nil {
		present := make(map[string]bool, len(ns))
		for _, n := range ns {
			present[n.ID] = true
		}
		for id, n := range live {
			if !present[id] {
				delete(live, id)
				n.State, n.Detected, n.Deadline = watcher.StateCanceled, detected, time.Time{}
				ns = append(ns, n)
			}
		}
	}
	*lastIncarnation = max(*lastIncarnation, doc.Incarnation)
	for _, n := range ns {
		if n.Kind == watcher.KindMaintenance {
			if n.State == watcher.StateCanceled {
				delete(live, n.ID)
			} else {
				live[n.ID] = n
			}
		}
		if !w.dedup.First(n) {
			continue
		}
		w.opts.Metrics.Notice(n)
		w.logger.InfoContext(ctx, "notice", "kind", string(n.Kind), "state", string(n.State), "id", n.ID, "action", n.Action, "deadline", n.Deadline)
		if !watcher.Send(ctx, out, n) {
			return false, false
		}
	}
	return err == nil, true
}

// Acknowledge tells Azure that the event eventID may start now (before its
// NotBefore), by POSTing {"StartRequests":[{"EventId": eventID}]}. Call it
// once the node is drained. It blocks until the service answers or ctx ends.
func (w *Watcher) Acknowledge(ctx context.Context, eventID string) error {
	if eventID == "" {
		return errors.New("acknowledge: empty event ID")
	}
	body, err := json.Marshal(map[string][]map[string]string{"StartRequests": {{"EventId": eventID}}})
	if err != nil {
		return fmt.Errorf("acknowledge %s: %w", eventID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, w.opts.RequestTimeout)
	defer cancel()
	u := w.opts.Endpoint + pathEvents + "?api-version=" + url.QueryEscape(w.opts.APIVersion)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("acknowledge %s: %w", eventID, err)
	}
	req.Header.Set("Metadata", "true")
	req.Header.Set("Content-Type", "application/json")
	res, err := w.opts.HTTPClient.Do(req)
	if err != nil {
		w.opts.Metrics.Error(watcher.SourceAzure, reason(err))
		return fmt.Errorf("acknowledge %s: %w", eventID, err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxBody))
	if res.StatusCode != http.StatusOK {
		err := &StatusError{Code: res.StatusCode}
		w.opts.Metrics.Error(watcher.SourceAzure, reason(err))
		return fmt.Errorf("acknowledge %s: %w", eventID, err)
	}
	return nil
}

// StatusError is an unexpected HTTP status from the metadata service.
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string { return fmt.Sprintf("status %d", e.Code) }

func (w *Watcher) vmName(ctx context.Context) (string, error) {
	body, err := w.get(ctx, pathName+"?api-version="+computeAPIVersion+"&format=text", w.opts.RequestTimeout)
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(body))
	if name == "" || len(name) > 256 || strings.ContainsAny(name, " \t\r\n{}\"") {
		return "", fmt.Errorf("get %s: bad name %q: %w", pathName, truncate(name), errMalformedName)
	}
	return name, nil
}

var errMalformedName = errors.New("malformed")

// get reads pathAndQuery with the Metadata: true header and returns the body
// of a 200 answer.
func (w *Watcher) get(ctx context.Context, pathAndQuery string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	path, _, _ := strings.Cut(pathAndQuery, "?")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.opts.Endpoint+pathAndQuery, nil)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", path, err)
	}
	req.Header.Set("Metadata", "true")
	res, err := w.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: %w", path, &StatusError{Code: res.StatusCode})
	}
	return body, nil
}

func reason(err error) string {
	if se, ok := errors.AsType[*StatusError](err); ok {
		return watcher.ReasonForStatus(se.Code)
	}
	if errors.Is(err, errMalformedName) {
		return watcher.ReasonMalformed
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return watcher.ReasonTimeout
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return watcher.ReasonTimeout
	}
	return watcher.ReasonNetwork
}

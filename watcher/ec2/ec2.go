package ec2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/poll"
)

// DefaultEndpoint is the IPv4 address of the instance metadata service.
const DefaultEndpoint = "http://169.254.169.254"

// DefaultPollInterval is the default time between two reads of PathSpot:
// with the other paths read in turn at a quarter of that rate, the watcher
// sends 5 requests a second, the most this package allows itself against
// a service that throttles per instance (and 1,024 packets a second per
// interface to link-local services).
const DefaultPollInterval = 250 * time.Millisecond

// maxBody bounds what is read from one metadata answer.
const maxBody = 1 << 20

// Options configure a Watcher. The zero value watches the real metadata
// service with the defaults documented on each field.
type Options struct {
	// Endpoint is the metadata service's base URL. Default DefaultEndpoint.
	Endpoint string
	// HTTPClient sends the requests. Default: the SDK's client for IMDS
	// (250 ms dial timeout, 500 ms to the response headers) without any
	// proxy.
	HTTPClient imds.HTTPClient
	// PollInterval is the time between two reads of PathSpot, the notice
	// with the shortest lead (2 minutes) and the only one read this often.
	// A notice is seen on average half an interval after it appears, at
	// most one interval after. Default DefaultPollInterval.
	PollInterval time.Duration
	// RotateInterval is the time between two reads of the other paths,
	// which take turns: one read per interval, PathASG every other turn
	// and the rest in order. With all five paths, PathASG is read every
	// 2×RotateInterval and each of the other three every 6×RotateInterval.
	// Default 4×PollInterval: 1.25/PollInterval requests a second in all,
	// 5 at the default.
	RotateInterval time.Duration
	// RequestTimeout bounds one read of one path, the SDK's retries
	// included. Default 2 s.
	RequestTimeout time.Duration
	// AllowIMDSv1 lets the SDK read without a session token when none can be
	// had (IMDSv1). Off by default: without a token every read fails, is
	// counted and retried.
	AllowIMDSv1 bool
	// ASGTerminationNotice is the time between the Auto Scaling target
	// lifecycle state turning Terminated and the instance going away, as
	// allowed by the group's lifecycle hook. Default 0: the deadline is the
	// moment of detection.
	ASGTerminationNotice time.Duration
	// ScheduledGoneReads is how many reads in a row of PathScheduled must
	// miss an active event (a 404, an empty list, a list without it) before
	// the event counts as over. One such read is not enough: a metadata
	// service that answers 404 or [] once, while the event stands, would
	// otherwise cancel a live maintenance for good. An event the answer (or
	// the history) shows canceled or completed is over at once. Default 3.
	ScheduledGoneReads int
	// Paths are the paths to watch. Default: PathSpot, PathRebalance,
	// PathScheduled, PathHistory and PathASG.
	Paths []string
	// Clock returns the time a notice is detected. Default time.Now.
	Clock func() time.Time
	// Logger receives the watcher's logs. Default: discard.
	Logger *slog.Logger
	// Metrics counts errors and notices. Default: nil, count nothing.
	Metrics *watcher.Metrics
}

// Watcher polls the EC2 instance metadata service. Create it with New.
type Watcher struct {
	opts   Options
	client *imds.Client
	logger *slog.Logger
	errs   *poll.Errors
	dedup  watcher.Dedup

	mu       sync.Mutex                // guards the maps below
	firstIDs map[string]string         // sort of notice -> ID of the first one seen
	live     map[string]watcher.Notice // scheduled events last seen active, by EventId
	missing  map[string]int            // live events: reads in a row of PathScheduled without them
	seenOver map[string]bool           // scheduled events seen canceled or completed
}

var _ watcher.Watcher = (*Watcher)(nil)

// New returns a Watcher configured by opts. It does not contact the service.
func New(opts Options) (*Watcher, error) {
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	if opts.PollInterval < 0 || opts.RotateInterval < 0 || opts.RequestTimeout < 0 || opts.ASGTerminationNotice < 0 {
		return nil, errors.New("ec2 options: negative duration")
	}
	if opts.ScheduledGoneReads < 0 {
		return nil, errors.New("ec2 options: negative ScheduledGoneReads")
	}
	if opts.ScheduledGoneReads == 0 {
		opts.ScheduledGoneReads = 3
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.RotateInterval == 0 {
		opts.RotateInterval = 4 * opts.PollInterval
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 2 * time.Second
	}
	if len(opts.Paths) == 0 {
		opts.Paths = []string{PathSpot, PathRebalance, PathScheduled, PathHistory, PathASG}
	}
	for _, p := range opts.Paths {
		switch p {
		case PathSpot, PathRebalance, PathScheduled, PathHistory, PathASG:
		default:
			return nil, fmt.Errorf("ec2 options: unknown path %q", p)
		}
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = awshttp.NewBuildableClient().
			WithDialerOptions(func(d *net.Dialer) { d.Timeout = 250 * time.Millisecond }).
			WithTransportOptions(func(tr *http.Transport) {
				tr.Proxy = nil // link-local; an HTTP_PROXY must never see these requests
				tr.ResponseHeaderTimeout = 500 * time.Millisecond
			})
	}
	opts.HTTPClient = earlyRefresh{opts.HTTPClient}
	fallback := aws.FalseTernary
	if opts.AllowIMDSv1 {
		fallback = aws.TrueTernary
	}
	client := imds.New(imds.Options{
		Endpoint:          opts.Endpoint,
		HTTPClient:        opts.HTTPClient,
		ClientEnableState: imds.ClientEnabled,
		EnableFallback:    fallback,
		// Without a rate limiter the retry quota cannot run dry during a
		// long outage, which would also stop the retry after a 401.
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) { o.RateLimiter = ratelimit.None }),
	})
	logger := poll.Logger(opts.Logger).With("source", string(watcher.SourceAWS))
	return &Watcher{
		opts:     opts,
		client:   client,
		logger:   logger,
		errs:     &poll.Errors{Source: watcher.SourceAWS, Logger: logger, Metrics: opts.Metrics},
		firstIDs: make(map[string]string),
		live:     make(map[string]watcher.Notice),
		missing:  make(map[string]int),
		seenOver: make(map[string]bool),
	}, nil
}

// Watch implements watcher.Watcher. It reads every path at once, then
// PathSpot every PollInterval in one goroutine and the other paths in turn,
// one every RotateInterval, in another (so that a slow answer on one never
// delays the spot read). It returns nil when ctx is canceled and both have
// ended.
func (w *Watcher) Watch(ctx context.Context, out chan<- watcher.Notice) error {
	synced := watcher.NewSyncer(watcher.SourceAWS, len(w.opts.Paths))
	var others []string
	var wg sync.WaitGroup
	for _, p := range w.opts.Paths {
		if p == PathSpot {
			wg.Go(func() { w.poll(ctx, out, synced, []string{p}, []string{p}, w.opts.PollInterval) })
			continue
		}
		others = append(others, p)
	}
	if len(others) > 0 {
		wg.Go(func() { w.poll(ctx, out, synced, others, rotation(others), w.opts.RotateInterval) })
	}
	wg.Wait()
	return nil
}

// rotation returns the order in which the paths other than PathSpot take
// turns: PathASG (whose Terminated state comes shortly before the instance
// stops, unless a lifecycle hook holds it) every other turn, the others
// (scheduled events come days ahead, a rebalance recommendation is
// advisory) in order between.
func rotation(paths []string) []string {
	if !slices.Contains(paths, PathASG) || len(paths) == 1 {
		return paths
	}
	var order []string
	for _, p := range paths {
		if p != PathASG {
			order = append(order, PathASG, p)
		}
	}
	return order
}

// poll reads each of first once, then one path of order, in turn, every
// interval; it returns when ctx ends.
func (w *Watcher) poll(ctx context.Context, out chan<- watcher.Notice, synced *watcher.Syncer, first, order []string, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	read := func(path string) bool {
		ok, alive := w.pollOnce(ctx, out, path)
		return alive && (!ok || synced.Read(ctx, out, path))
	}
	for _, p := range first {
		if !read(p) {
			return
		}
	}
	for i := 0; ; i = (i + 1) % len(order) {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		if !read(order[i]) {
			return
		}
	}
}

// pollOnce reads path once and sends what it announces. read says the
// whole answer was understood (a 404 included: no event); ok is false when
// ctx ended.
func (w *Watcher) pollOnce(ctx context.Context, out chan<- watcher.Notice, path string) (read, ok bool) {
	body, found, err := w.get(ctx, path)
	if ctx.Err() != nil {
		return false, false
	}
	if err != nil {
		w.errs.Fail(ctx, path, reason(err), err)
		return false, true
	}
	w.errs.OK(ctx, path)
	detected := w.opts.Clock()
	var ns []watcher.Notice
	switch path {
	case PathSpot:
		var n watcher.Notice
		if !found {
			break
		}
		if n, err = spotNotice(body, detected); err == nil && w.firstOf(ctx, "spot/"+n.Action, n) {
			ns = append(ns, n)
		}
	case PathRebalance:
		var n watcher.Notice
		if !found {
			break
		}
		if n, err = rebalanceNotice(body, detected); err == nil && w.firstOf(ctx, "rebalance", n) {
			ns = append(ns, n)
		}
	case PathScheduled, PathHistory:
		var events []watcher.Notice
		if found {
			events, err = scheduledNotices(body, detected)
		}
		ns = w.scheduled(ctx, path, events, err == nil, detected)
	case PathASG:
		var n watcher.Notice
		var isNotice bool
		if !found {
			break
		}
		if n, isNotice, err = asgNotice(body, detected, w.opts.ASGTerminationNotice); isNotice {
			ns = append(ns, n)
		}
	}
	if err != nil {
		r := watcher.ReasonMalformed
		if errors.Is(err, errEmpty) {
			r = watcher.ReasonEmpty
		}
		w.errs.Fail(ctx, path, r, err)
	}
	for _, n := range ns {
		if n.Kind != watcher.KindMaintenance && !w.dedup.First(n) {
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

// scheduled turns one read of the scheduled events (or of their history)
// into the notices to send, against the events this watcher knows to be
// active:
//
//   - an active event not seen before, or seen with another NotBefore (AWS
//     rescheduled it), is sent as active with its deadline;
//   - an event the answer says canceled or completed, in either list, is
//     sent as canceled if it was active, and is over for good;
//   - an active event missing from ScheduledGoneReads complete reads of the
//     scheduled list in a row is over (AWS moves canceled and completed
//     events to the history): it is sent as canceled. One read is not
//     enough: a 404 or an empty list while the event stands must not
//     cancel it.
//
// complete says the whole answer was understood; only then does a missing
// event count as missing.
func (w *Watcher) scheduled(ctx context.Context, path string, events []watcher.Notice, complete bool, detected time.Time) []watcher.Notice {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ns []watcher.Notice
	present := map[string]bool{}
	for _, n := range events {
		present[n.ID] = true
		prev, live := w.live[n.ID]
		switch {
		case n.State == watcher.StateActive && path == PathScheduled:
			if (live && prev.Deadline.Equal(n.Deadline)) || w.seenOver[n.ID] {
				// Unchanged, or already over: an EventId is never reused,
				// and a list read while AWS moves it to the history must
				// not bring it back.
				continue
			}
			if live {
				w.logger.InfoContext(ctx, "scheduled event moved", "id", n.ID, "was", prev.Deadline, "now", n.Deadline)
			}
			w.live[n.ID] = n
			ns = append(ns, n)
		case n.State == watcher.StateCanceled && live:
			delete(w.live, n.ID)
			delete(w.missing, n.ID)
			ns = append(ns, n)
		case n.State == watcher.StateCanceled && path == PathScheduled && !w.seenOver[n.ID]:
			// Canceled before this watcher saw it active: say so once; a
			// consumer that never acted on it ignores it.
			ns = append(ns, n)
		}
		if n.State == watcher.StateCanceled {
			w.seenOver[n.ID] = true
		}
	}
	if path == PathScheduled && complete {
		for id, n := range w.live {
			if present[id] {
				delete(w.missing, id)
				continue
			}
			w.missing[id]++
			if w.missing[id] < w.opts.ScheduledGoneReads {
				w.logger.InfoContext(ctx, "scheduled event missing from the list", "id", id, "reads", w.missing[id], "needed", w.opts.ScheduledGoneReads)
				continue
			}
			// Not marked seenOver: should it come back, it is active
			// again.
			delete(w.live, id)
			delete(w.missing, id)
			n.State, n.Detected, n.Deadline = watcher.StateCanceled, detected, time.Time{}
			ns = append(ns, n)
		}
	}
	return ns
}

// firstOf reports whether n is the first notice of its sort (a spot notice
// for one action, a rebalance recommendation), or the same one again. AWS
// keeps the time in these fixed, and the ID is made from it, but emulators
// (the amazon-ec2-metadata-mock among them) compute it afresh on every read;
// without this check each read would look like a new notice.
func (w *Watcher) firstOf(ctx context.Context, sort string, n watcher.Notice) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if id, ok := w.firstIDs[sort]; ok {
		if id != n.ID {
			w.logger.DebugContext(ctx, "notice time moved", "id", id, "new_id", n.ID)
		}
		return id == n.ID
	}
	w.firstIDs[sort] = n.ID
	return true
}

// get reads path. found is false when the service answered 404, which for
// these paths means there is no event.
func (w *Watcher) get(ctx context.Context, path string) (body []byte, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.RequestTimeout)
	defer cancel()
	res, err := w.client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		if re, ok := errors.AsType[httpStatusError](err); ok && re.HTTPStatusCode() == http.StatusNotFound {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("get %s: %w", path, err)
	}
	defer res.Content.Close()
	body, err = io.ReadAll(io.LimitReader(res.Content, maxBody))
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	return body, true, nil
}

var statusInMessage = regexp.MustCompile(`StatusCode: (\d{3})\b`)

// httpStatusError is implemented by the SDK's response errors.
type httpStatusError interface {
	error
	HTTPStatusCode() int
}

func reason(err error) string {
	// The SDK wraps a failed token request in an error type without Unwrap,
	// so its message is the only mark it leaves.
	if strings.Contains(err.Error(), "failed to get API token") {
		return watcher.ReasonToken
	}
	if re, ok := errors.AsType[httpStatusError](err); ok {
		return watcher.ReasonForStatus(re.HTTPStatusCode())
	}
	// A 401 comes back through the same wrapper without Unwrap.
	if m := statusInMessage.FindStringSubmatch(err.Error()); m != nil {
		code, _ := strconv.Atoi(m[1])
		return watcher.ReasonForStatus(code)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return watcher.ReasonTimeout
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return watcher.ReasonTimeout
	}
	return watcher.ReasonNetwork
}

// earlyRefresh lowers the TTL the service reports for a new session token by
// a tenth (at least a second), so the SDK, which replaces a token only once
// its own reckoning of the TTL has run out, replaces it before the service
// stops accepting it. The SDK starts its clock when the answer arrives, later
// than the service does, so without the margin the last read before expiry
// can draw a 401 (which the SDK then recovers from with a new token and a
// retry).
type earlyRefresh struct{ next imds.HTTPClient }

func (c earlyRefresh) Do(req *http.Request) (*http.Response, error) {
	res, err := c.next.Do(req)
	if err != nil || req.Method != http.MethodPut || res.StatusCode != http.StatusOK {
		return res, err
	}
	const h = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	if ttl, perr := strconv.Atoi(res.Header.Get(h)); perr == nil && ttl > 1 {
		res.Header.Set(h, strconv.Itoa(ttl-max(ttl/10, 1)))
	}
	return res, nil
}

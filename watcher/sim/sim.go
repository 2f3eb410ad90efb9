package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/internal/poll"
)

// Options configure a Watcher. At least one of File, Addr or Listener must
// be set.
type Options struct {
	// File is a notice file to watch; it may not exist yet. It is read again
	// whenever its size or modification time changes.
	File string
	// Addr is the address of the HTTP trigger, e.g. 127.0.0.1:8099. Empty:
	// no trigger (unless Listener is set).
	Addr string
	// Listener, if set, serves the HTTP trigger instead of listening on
	// Addr. Watch closes it when it returns.
	Listener net.Listener
	// PollInterval is how often File is checked. Default 200 ms.
	PollInterval time.Duration
	// Clock returns the time a notice is detected. Default time.Now.
	Clock func() time.Time
	// Logger receives the watcher's logs. Default: discard.
	Logger *slog.Logger
	// Metrics counts errors and notices. Default: nil, count nothing.
	Metrics *watcher.Metrics
}

// Watcher is the simulated source. Create it with New.
type Watcher struct {
	opts   Options
	logger *slog.Logger
	errs   *poll.Errors
	dedup  watcher.Dedup
}

var _ watcher.Watcher = (*Watcher)(nil)

// New returns a Watcher configured by opts. It neither reads the file nor
// listens yet.
func New(opts Options) (*Watcher, error) {
	if opts.File == "" && opts.Addr == "" && opts.Listener == nil {
		return nil, errors.New("sim options: set File, Addr or Listener")
	}
	if opts.PollInterval < 0 {
		return nil, errors.New("sim options: negative PollInterval")
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 200 * time.Millisecond
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	logger := poll.Logger(opts.Logger).With("source", string(watcher.SourceSim))
	return &Watcher{
		opts:   opts,
		logger: logger,
		errs:   &poll.Errors{Source: watcher.SourceSim, Logger: logger, Metrics: opts.Metrics},
	}, nil
}

// Watch implements watcher.Watcher. It serves the trigger and watches the
// file until ctx is canceled, then stops the server and returns nil. It
// returns an error at once if it cannot listen on Addr.
func (w *Watcher) Watch(ctx context.Context, out chan<- watcher.Notice) error {
	ln := w.opts.Listener
	if ln == nil && w.opts.Addr != "" {
		var err error
		if ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", w.opts.Addr); err != nil {
			return fmt.Errorf("listen %s: %w", w.opts.Addr, err)
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	if ln != nil {
		srv := &http.Server{Handler: w.handler(ctx, out), ReadHeaderTimeout: 5 * time.Second}
		w.logger.InfoContext(ctx, "trigger listening", "addr", ln.Addr().String())
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve trigger: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx) // handlers see ctx done and return at once
			return nil
		})
	}
	if w.opts.File != "" {
		g.Go(func() error {
			w.watchFile(ctx, out)
			return nil
		})
	} else {
		// Only the trigger: nothing is active until it is posted.
		g.Go(func() error {
			watcher.Send(ctx, out, watcher.Synced(watcher.SourceSim))
			return nil
		})
	}
	return g.Wait()
}

// handler serves POST /notice.
func (w *Watcher) handler(ctx context.Context, out chan<- watcher.Notice) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /notice", func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, 64<<10))
		if err != nil {
			w.errs.Fail(ctx, "trigger", watcher.ReasonMalformed, err)
			http.Error(rw, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		ns, err := parseNotices(body, w.opts.Clock())
		if err != nil {
			reason := watcher.ReasonMalformed
			if errors.Is(err, errEmpty) {
				reason = watcher.ReasonEmpty
			}
			w.errs.Fail(ctx, "trigger", reason, err)
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		w.errs.OK(ctx, "trigger")
		sent := 0
		for _, n := range ns {
			ok, delivered := w.send(ctx, out, n)
			if !delivered {
				http.Error(rw, "shutting down", http.StatusServiceUnavailable)
				return
			}
			if ok {
				sent++
			}
		}
		status := http.StatusAccepted
		if sent == 0 {
			status = http.StatusOK // all duplicates
		}
		rw.Header().Set("Content-Type", "application/json")
		rw.WriteHeader(status)
		_ = json.NewEncoder(rw).Encode(map[string]int{"sent": sent, "duplicates": len(ns) - sent})
	})
	return mux
}

// send delivers n unless it is a duplicate. new is false for a duplicate;
// delivered is false when ctx ended first.
func (w *Watcher) send(ctx context.Context, out chan<- watcher.Notice, n watcher.Notice) (isNew, delivered bool) {
	if !w.dedup.First(n) {
		return false, true
	}
	w.opts.Metrics.Notice(n)
	w.logger.InfoContext(ctx, "notice", "kind", string(n.Kind), "state", string(n.State), "id", n.ID, "action", n.Action, "deadline", n.Deadline)
	return true, watcher.Send(ctx, out, n)
}

func (w *Watcher) watchFile(ctx context.Context, out chan<- watcher.Notice) {
	t := time.NewTicker(w.opts.PollInterval)
	defer t.Stop()
	var lastSize int64 = -1
	var lastMod time.Time
	synced := watcher.NewSyncer(watcher.SourceSim, 1)
	for {
		fi, err := os.Stat(w.opts.File)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			lastSize = -1 // not there yet, or removed: nothing to say
		case err != nil:
			w.errs.Fail(ctx, w.opts.File, watcher.ReasonNetwork, fmt.Errorf("stat %s: %w", w.opts.File, err))
		case fi.Size() != lastSize || !fi.ModTime().Equal(lastMod):
			lastSize, lastMod = fi.Size(), fi.ModTime()
			if !w.readFile(ctx, out) {
				return
			}
		}
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			if !synced.Read(ctx, out, w.opts.File) {
				return
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// readFile reads the notice file and sends its notices; false when ctx ended.
func (w *Watcher) readFile(ctx context.Context, out chan<- watcher.Notice) bool {
	body, err := os.ReadFile(w.opts.File)
	if err != nil {
		w.errs.Fail(ctx, w.opts.File, watcher.ReasonNetwork, fmt.Errorf("read %s: %w", w.opts.File, err))
		return true
	}
	ns, err := parseNotices(body, w.opts.Clock())
	if err != nil {
		reason := watcher.ReasonMalformed
		if errors.Is(err, errEmpty) {
			reason = watcher.ReasonEmpty
		}
		w.errs.Fail(ctx, w.opts.File, reason, err)
		return true
	}
	w.errs.OK(ctx, w.opts.File)
	for _, n := range ns {
		if _, delivered := w.send(ctx, out, n); !delivered {
			return false
		}
	}
	return true
}

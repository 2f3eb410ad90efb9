// Package httpguard bounds what an HTTP server that faces the cluster can
// be made to hold: the node agent's ports listen on every node interface
// (hostNetwork), and the injector's is reachable from the whole cluster.
//
// A guarded server has read, write and idle timeouts and a body limit; its
// listener caps connections per source address and in total, closing the
// ones over a cap at once (so an idle flood costs file descriptors, not
// goroutines and buffers); and its refusals are counted, with their log
// lines rate-limited.
package httpguard

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Limits bound one server. Zero fields take the defaults of Default.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers; a client that
	// connects and says nothing (or drips its headers) is dropped after it.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds a whole response, from the end of the request's
	// headers: it must exceed the longest long-poll the server holds.
	WriteTimeout time.Duration
	// IdleTimeout bounds a keep-alive connection between two requests.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request headers.
	MaxHeaderBytes int
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64
	// MaxConns caps the open connections in total.
	MaxConns int
	// MaxConnsPerAddr caps the open connections from one source address.
	MaxConnsPerAddr int
}

// Default limits: a few seconds for a request, 16 KiB of headers, 64 KiB of
// body, 256 connections, 16 from one address.
var Default = Limits{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      10 * time.Second,
	IdleTimeout:       30 * time.Second,
	MaxHeaderBytes:    16 << 10,
	MaxBodyBytes:      64 << 10,
	MaxConns:          256,
	MaxConnsPerAddr:   16,
}

// withDefaults fills zero fields from Default.
func (l Limits) withDefaults() Limits {
	d := Default
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&l.ReadHeaderTimeout, d.ReadHeaderTimeout)
	set(&l.ReadTimeout, d.ReadTimeout)
	set(&l.WriteTimeout, d.WriteTimeout)
	set(&l.IdleTimeout, d.IdleTimeout)
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = d.MaxBodyBytes
	}
	if l.MaxConns <= 0 {
		l.MaxConns = d.MaxConns
	}
	if l.MaxConnsPerAddr <= 0 {
		l.MaxConnsPerAddr = d.MaxConnsPerAddr
	}
	return l
}

// Server returns an http.Server for h with l's timeouts and limits; serve
// it on a Listener made with the same Limits. logger receives the server's
// own errors (TLS handshakes, panics), rate-limited.
func Server(h http.Handler, l Limits, logger *slog.Logger) *http.Server {
	l = l.withDefaults()
	return &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, l.MaxBodyBytes)
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(NewQuietLogger(logger).Handler(), slog.LevelWarn),
	}
}

// Refused is called for each connection a Listener closes at once; reason
// is "total" or "per_address".
type Refused func(reason string)

// Listen listens on addr and caps its connections as l says.
func Listen(network, addr string, l Limits, refused Refused) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return Wrap(ln, l, refused), nil
}

// Wrap caps the connections ln accepts as l says.
func Wrap(ln net.Listener, l Limits, refused Refused) net.Listener {
	l = l.withDefaults()
	if refused == nil {
		refused = func(string) {}
	}
	return &listener{Listener: ln, max: l.MaxConns, perAddr: l.MaxConnsPerAddr, refused: refused, open: map[netip.Addr]int{}}
}

type listener struct {
	net.Listener
	max, perAddr int
	refused      Refused

	mu    sync.Mutex // guards open and total
	open  map[netip.Addr]int
	total int
}

// Accept returns the next connection within the caps; connections over a
// cap are closed at once and not returned.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := sourceAddr(c)
		l.mu.Lock()
		reason := ""
		switch {
		case l.total >= l.max:
			reason = "total"
		case l.open[addr] >= l.perAddr:
			reason = "per_address"
		default:
			l.total++
			l.open[addr]++
		}
		l.mu.Unlock()
		if reason != "" {
			_ = c.Close()
			l.refused(reason)
			continue
		}
		return &conn{Conn: c, release: func() { l.release(addr) }}, nil
	}
}

func (l *listener) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.open[addr]--; l.open[addr] <= 0 {
		delete(l.open, addr)
	}
}

func sourceAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// NewQuietLogger returns a logger that passes on at most a few lines a
// minute: for what any client can make a server log (refusals, malformed
// requests), so that a flood cannot flood the log too. Count such events
// in a metric; the log only shows that they happen.
func NewQuietLogger(logger *slog.Logger) *slog.Logger {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return slog.New(&quiet{next: logger.Handler(), limit: rate.NewLimiter(rate.Every(20*time.Second), 3)})
}

type quiet struct {
	next  slog.Handler
	limit *rate.Limiter
}

func (q *quiet) Enabled(ctx context.Context, l slog.Level) bool { return q.next.Enabled(ctx, l) }
func (q *quiet) Handle(ctx context.Context, r slog.Record) error {
	if !q.limit.Allow() {
		return nil
	}
	return q.next.Handle(ctx, r)
}
func (q *quiet) WithAttrs(as []slog.Attr) slog.Handler {
	return &quiet{next: q.next.WithAttrs(as), limit: q.limit}
}
func (q *quiet) WithGroup(name string) slog.Handler {
	return &quiet{next: q.next.WithGroup(name), limit: q.limit}
}

// Metrics counts the connections the guarded listeners refuse.
type Metrics struct {
	refused *prometheus.CounterVec
}

// NewMetrics registers lastcall_http_connections_refused_total on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lastcall_http_connections_refused_total",
		Help: "Connections closed at once because a cap was reached, by server and cap (total, per_address).",
	}, []string{"server", "reason"})}
	if err := reg.Register(m.refused); err != nil {
		return nil, err
	}
	return m, nil
}

// Refused returns the Refused callback of server.
func (m *Metrics) Refused(server string) Refused {
	if m == nil {
		return nil
	}
	for _, r := range []string{"total", "per_address"} {
		m.refused.WithLabelValues(server, r)
	}
	return func(reason string) { m.refused.WithLabelValues(server, reason).Inc() }
}

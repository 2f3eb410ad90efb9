// Package httpguard bounds what an HTTP server that faces the cluster can
// be made to hold: the node agent's ports listen on every node interface
// (hostNetwork), and the injector's is reachable from the whole cluster.
//
// A guarded server has read, write and idle timeouts and a body limit; its
// listener caps connections per source address and in total; at a cap it
// lets the newcomer in and closes an idle or old connection of the heaviest
// source instead (so a flood costs its own connections, never a probe's or
// a sidecar's, and cannot lock anyone out); what it sheds is counted, and
// the server's log lines are rate-limited.
package httpguard

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
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
	// Reserved are source addresses whose connections do not count
	// against MaxConns and are never closed for another source's: the
	// node's own IP, from which the kubelet probes a hostNetwork pod. Only
	// MaxConnsPerAddr bounds them.
	Reserved []netip.Addr
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
			if c, _ := r.Context().Value(connKey{}).(*conn); c != nil {
				c.handled.Add(1)
				defer func() { c.served.Store(true); c.handled.Add(-1) }()
			}
			if r.ContentLength > l.MaxBodyBytes {
				// Refused before a byte of the body is read.
				http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, l.MaxBodyBytes)
			h.ServeHTTP(w, r)
		}),
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			if c := guarded(nc); c != nil {
				return context.WithValue(ctx, connKey{}, c)
			}
			return ctx
		},
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ConnState:         trackState,
		ErrorLog:          slog.NewLogLogger(NewQuietLogger(logger).Handler(), slog.LevelWarn),
	}
}

// Shed is called for each connection a Listener closes to stay within a
// cap; reason is "total" or "per_address".
type Shed func(reason string)

// Listen listens on addr and caps its connections as l says.
func Listen(network, addr string, l Limits, shed Shed) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return Wrap(ln, l, shed), nil
}

// Wrap caps the connections ln accepts as l says.
//
// A cap never refuses a newcomer: a client that opens a connection to ask
// something now (a kubelet's probe, a sidecar's poll) gets in. When a cap
// is reached, the listener closes one open connection instead: for the
// per-address cap one of the newcomer's own source; for the total cap one
// of any source. It closes the least busy first: a connection that has
// sent nothing, then one still sending its first request, then one idle
// after a request (a keep-alive), then one sending a later request, and
// last one whose request is being answered (a sidecar's long-poll, a
// probe); among equals one of the source that holds the most, the oldest.
// A flood thus costs the flooder its own connections. A flood from more distinct
// addresses than the total cap that redials faster than the server reads a
// newcomer's first request can still crowd out a newcomer: the sources in
// Limits.Reserved (the kubelet's) are out of its reach. Serve with a Server made by this package, which
// tells the listener what each connection is doing.
func Wrap(ln net.Listener, l Limits, shed Shed) net.Listener {
	l = l.withDefaults()
	if shed == nil {
		shed = func(string) {}
	}
	reserved := map[netip.Addr]bool{}
	for _, a := range l.Reserved {
		reserved[a.Unmap()] = true
	}
	return &listener{Listener: ln, max: l.MaxConns, perAddr: l.MaxConnsPerAddr, reserved: reserved, shed: shed, open: map[netip.Addr][]*conn{}}
}

type listener struct {
	net.Listener
	max, perAddr int
	reserved     map[netip.Addr]bool
	shed         Shed

	mu    sync.Mutex // guards open, total and seq
	open  map[netip.Addr][]*conn
	total int // open connections of sources not reserved
	seq   uint64
}

// Accept returns the next connection; when it takes a cap over its limit,
// it first closes one connection as Wrap says.
func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	key := sourceKey(c)
	l.mu.Lock()
	var victim *conn
	reason := ""
	switch {
	case len(l.open[key]) >= l.perAddr:
		victim, reason = pick(l.open[key]), "per_address"
	case l.reserved[key]:
	case l.total >= l.max:
		victim, reason = l.heaviest(), "total"
	}
	if victim != nil {
		l.removeLocked(victim)
	}
	l.seq++
	gc := &conn{Conn: c, l: l, key: key, seq: l.seq}
	l.open[key] = append(l.open[key], gc)
	if !l.reserved[key] {
		l.total++
	}
	l.mu.Unlock()
	if victim != nil {
		_ = victim.Conn.Close()
		l.shed(reason)
	}
	return gc, nil
}

// heaviest returns the connection to shed for the total cap: of the
// connections in the least busy state, one of the source that holds the
// most connections, the oldest. Reserved sources are left out.
func (l *listener) heaviest() *conn {
	least := serving
	for key, cs := range l.open {
		for _, c := range cs {
			if !l.reserved[key] {
				least = min(least, c.busy())
			}
		}
	}
	var best *conn
	bestN := 0
	for key, cs := range l.open {
		if l.reserved[key] {
			continue
		}
		for _, c := range cs {
			if c.busy() == least && (best == nil || len(cs) > bestN || len(cs) == bestN && c.seq < best.seq) {
				best, bestN = c, len(cs)
			}
		}
	}
	return best
}

// pick returns the connection to shed among cs: the least busy, then the
// oldest.
func pick(cs []*conn) *conn {
	var best *conn
	for _, c := range cs {
		if best == nil || c.busy() < best.busy() || c.busy() == best.busy() && c.seq < best.seq {
			best = c
		}
	}
	return best
}

// removeLocked forgets c; l.mu is held. It reports whether c was open.
func (l *listener) removeLocked(c *conn) bool {
	cs := l.open[c.key]
	i := slices.Index(cs, c)
	if i < 0 {
		return false
	}
	cs = slices.Delete(cs, i, i+1)
	if len(cs) == 0 {
		delete(l.open, c.key)
	} else {
		l.open[c.key] = cs
	}
	if !l.reserved[c.key] {
		l.total--
	}
	return true
}

func (l *listener) release(c *conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.removeLocked(c)
}

// sourceKey is the source c counts against: its address.
func sourceKey(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// How busy a connection is, in the order the listener sheds them. A
// connection that has carried a whole request (the apiserver's keep-alive,
// a sidecar's) outranks one that never has (a flood's).
const (
	silent   = iota // nothing sent yet
	dripping        // its first request is still being read
	idle            // between two requests
	reading         // a later request is being read
	serving         // a request is being answered
)

type conn struct {
	net.Conn
	l       *listener
	key     netip.Addr
	seq     uint64       // accept order
	state   atomic.Int32 // the http.ConnState the server last reported
	handled atomic.Int32 // requests in the handler
	served  atomic.Bool  // a request went through the handler
}

// busy returns what the server is doing on c, silent to serving.
func (c *conn) busy() int {
	active := http.ConnState(c.state.Load()) == http.StateActive
	switch {
	case c.handled.Load() > 0:
		return serving
	case c.served.Load() && active:
		return reading
	case c.served.Load():
		return idle
	case active:
		return dripping
	}
	return silent
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.l.release(c)
	return err
}

// connKey is the context key of a request's *conn.
type connKey struct{}

// guarded returns the *conn under nc, if any.
func guarded(nc net.Conn) *conn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}

// trackState records a connection's state for Listener's choice of what to
// shed; it is the http.Server's ConnState hook.
func trackState(nc net.Conn, s http.ConnState) {
	if c := guarded(nc); c != nil {
		c.state.Store(int32(s))
	}
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

// Metrics counts the connections the guarded listeners shed.
type Metrics struct {
	shed *prometheus.CounterVec
}

// NewMetrics registers lastcall_http_connections_shed_total on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{shed: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lastcall_http_connections_shed_total",
		Help: "Connections closed to let a newer one in because a cap was reached, by server and cap (total, per_address).",
	}, []string{"server", "reason"})}
	if err := reg.Register(m.shed); err != nil {
		return nil, err
	}
	return m, nil
}

// Shed returns the Shed callback of server.
func (m *Metrics) Shed(server string) Shed {
	if m == nil {
		return nil
	}
	for _, r := range []string{"total", "per_address"} {
		m.shed.WithLabelValues(server, r)
	}
	return func(reason string) { m.shed.WithLabelValues(server, reason).Inc() }
}

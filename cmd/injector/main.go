// Command injector is lastcall's sidecar injector: a mutating admission
// webhook (admission.k8s.io/v1) that adds the sidecar to pods labelled
// lastcall.dev/inject=enabled.
//
// It only parses flags and wires package injector to an HTTPS server.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/lastcall-dev/lastcall/injector"
	"github.com/lastcall-dev/lastcall/internal/httpguard"
	"github.com/lastcall-dev/lastcall/internal/logformat"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "inject" {
		os.Exit(injectMain(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(Main(os.Args[1:], os.Getenv, os.Stderr))
}

// Main runs the injector with args until SIGTERM or interrupt and returns
// the exit code. "injector inject" is injectMain.
func Main(args []string, getenv func(string) string, stderr io.Writer) int {
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "injector:", err)
		return 2
	}
	if o.showVersion {
		fmt.Fprintln(stderr, "injector", version)
		return 0
	}
	logger, err := logformat.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "injector:", err)
		return 2
	}
	klog.SetSlogLogger(logger) // process-wide: here, not in run
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := httpguard.Listen("tcp", o.listen, serverLimits(), nil)
	if err != nil {
		logger.Error("injector stopped", "err", err)
		return 1
	}
	if err := run(ctx, o, ln, logger); err != nil {
		logger.Error("injector stopped", "err", err)
		return 1
	}
	return 0
}

// caRecheck is how often the injector checks its certificates (renewed 30
// days before they end) and that the webhook configuration still carries
// its CA (a reinstall resets it).
const caRecheck = time.Minute

// run serves the webhook on ln until ctx ends.
func run(ctx context.Context, o *options, ln net.Listener, logger *slog.Logger) error {
	logger.Info("injector starting", "version", version, "namespace", o.namespace, "native_sidecar", o.inject.NativeSidecar)
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("apiserver config: %w", err)
	}
	cfg.UserAgent = "lastcall-injector/" + version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("apiserver client: %w", err)
	}

	ready := func() bool { return true }
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	var rotator *injector.Rotator
	if o.certDir != "" {
		files := newCertFiles(o.certDir)
		if _, err := files.get(nil); err != nil {
			return err
		}
		tlsConfig.GetCertificate = files.get
	} else {
		// Renewed while running, before they expire; the caBundle is
		// rewritten within caRecheck if something resets it.
		rotator = &injector.Rotator{
			Client: client, Namespace: o.namespace, Secret: o.secret, WebhookConfig: o.webhookConfig,
			Hosts: o.hosts(), Interval: caRecheck, Logger: logger.With("component", "certs"),
		}
		if err := rotator.Load(ctx); err != nil {
			return err
		}
		tlsConfig.GetCertificate = rotator.GetCertificate
		ready = rotator.Ready
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := injector.NewMetrics(reg, version)
	handler := injector.NewHandler(o.inject, logger.With("component", "webhook"))
	handler.Metrics = metrics
	// Pods of namespaces labelled lastcall.dev/inject=enabled come through
	// a webhook of their own, to this path.
	nsCfg := o.inject
	nsCfg.NamespaceOptIn = true
	nsHandler := injector.NewHandler(nsCfg, logger.With("component", "webhook", "opt_in", "namespace"))
	nsHandler.Metrics = metrics
	mux := http.NewServeMux()
	mux.Handle("POST /mutate", handler)
	mux.Handle("POST /evict", injector.NewEvictionGuard(client, o.agentUser, logger.With("component", "eviction-guard")))
	mux.Handle("POST /mutate-namespace", nsHandler)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "caBundle not written yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// Anything in the cluster can reach the port, not only the apiserver.
	srv := httpguard.Server(mux, serverLimits(), logger)
	srv.TLSConfig = tlsConfig

	var mln net.Listener
	if o.metricsListen != "" {
		if mln, err = httpguard.Listen("tcp", o.metricsListen, metricsLimits(), nil); err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	logger.Info("serving", "addr", ln.Addr().String())
	serve(ctx, g, srv, func() error { return srv.ServeTLS(ln, "", "") })
	if rotator != nil {
		g.Go(func() error { return rotator.Run(ctx) })
	}
	if mln != nil {
		msrv := httpguard.Server(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), metricsLimits(), logger)
		logger.Info("serving metrics", "addr", mln.Addr().String())
		serve(ctx, g, msrv, func() error { return msrv.Serve(mln) })
	}
	return g.Wait()
}

// serve runs srv (started by start) in g until ctx ends, then shuts it
// down, giving open requests 5 s.
func serve(ctx context.Context, g *errgroup.Group, srv *http.Server, start func() error) {
	g.Go(func() error {
		if err := start(); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	})
}

// serverLimits bound what a client can make the injector hold: bodies of
// injector.MaxReviewBytes (a larger one is refused before it is read), 256
// connections, 64 from one address (the apiserver keeps a few alive; at a
// cap the heaviest source's idle ones are closed, never a newcomer).
func serverLimits() httpguard.Limits {
	return httpguard.Limits{MaxBodyBytes: injector.MaxReviewBytes, MaxConns: 256, MaxConnsPerAddr: 64}
}

// metricsLimits bound the metrics port: Prometheus scrapes it once in a
// while with one connection.
func metricsLimits() httpguard.Limits {
	return httpguard.Limits{MaxBodyBytes: 1 << 10, MaxConns: 64, MaxConnsPerAddr: 8}
}

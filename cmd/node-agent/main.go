// Command node-agent is lastcall's DaemonSet process: it watches the cloud's
// termination notice for its node, cordons and drains the node before the
// deadline, and tells the sidecars of the worker pods.
//
// It only parses flags and wires the packages together; see package agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/lastcall-dev/lastcall/agent"
	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/httpguard"
	"github.com/lastcall-dev/lastcall/internal/logformat"
	"github.com/lastcall-dev/lastcall/kubeclient"
	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/azure"
	"github.com/lastcall-dev/lastcall/watcher/detect"
	"github.com/lastcall-dev/lastcall/watcher/ec2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// limits bound what any pod in the cluster can make the agent hold: its
// ports listen on every node interface (hostNetwork). A scrape takes well
// under the write timeout; a node has at most a few hundred pods, each
// sidecar holding one long-poll (up to wire.MaxWait) and now and then a
// report.
func limits() (metrics, hub httpguard.Limits) {
	metrics = httpguard.Limits{WriteTimeout: 30 * time.Second, MaxConns: 64, MaxConnsPerAddr: 8}
	hub = httpguard.Limits{
		WriteTimeout: wire.MaxWait + 10*time.Second, IdleTimeout: 60 * time.Second,
		MaxBodyBytes: 4 << 10, MaxConns: 1024, MaxConnsPerAddr: 8,
	}
	return metrics, hub
}

// defaultGOGC is the agent's GOGC when the environment sets none. Its live
// heap is a few MiB, and the metadata polls (5 a second on AWS) churn it:
// at Go's 100 the heap doubles between collections, at 50 it grows half as
// much, about 2 MiB less resident at rest, for collections of a small heap
// that cost well under a millisecond each.
const defaultGOGC = 50

// checkSpread is the longest the access check waits after start: a random
// share of it spreads the checks of a fleet's agents that start together.
const checkSpread = 10 * time.Second

func main() {
	os.Exit(Main(os.Args[1:], os.Getenv, os.Stderr))
}

// options are the parsed flags.
type options struct {
	node, podName, podNamespace, kubeconfig string
	cloud                                   string
	gceHost                                 string
	gceNotice, gceMaintenance               time.Duration
	awsEndpoint                             string
	awsInterval                             time.Duration
	awsIMDSv1                               bool
	azureEndpoint                           string
	azureAck                                bool
	simFile, simListen                      string
	policies                                map[watcher.Kind]*string
	onBlocked                               string
	reserve, cutoff, criticalWindow         time.Duration
	dryRun                                  bool
	listen, sidecarListen                   string
	nodeIP                                  string
	webhookURL, webhookFormat               string
	webhookURLFile, webhookTemplateFile     string
	webhookHeaders                          headerFlag
	webhookTimeout                          time.Duration
	webhookAttempts                         int
	taintEffect                             string
	outOfService                            bool
	foreignSources                          string
	foreignTaints                           foreignTaintFlag
	foreignCordon, foreignShutdown          bool
	logFormat, logLevel                     string
	checkAccess                             bool
	showVersion                             bool
}

const usage = `node-agent watches this node's cloud termination notice (GCE preemption
and maintenance, AWS spot interruption, rebalance, scheduled events and ASG
termination, Azure scheduled events), then cordons the node, tells the worker
sidecars, and drains the node before the deadline.

It runs as a DaemonSet pod with hostNetwork. Defaults suit that: the node and
pod names come from the downward API (NODE_NAME, POD_NAME, POD_NAMESPACE), the
cloud is detected, the apiserver is found in-cluster.

Flags:
`

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{policies: map[watcher.Kind]*string{}}
	fs := flag.NewFlagSet("node-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.node, "node-name", getenv("NODE_NAME"), "name of this node (env NODE_NAME)")
	fs.StringVar(&o.nodeIP, "node-ip", getenv("NODE_IP"), "this node's IP, from which the kubelet probes the agent: its connections to --listen are never closed for another source's (env NODE_IP)")
	fs.StringVar(&o.podName, "pod-name", getenv("POD_NAME"), "the agent's own pod, never evicted (env POD_NAME)")
	fs.StringVar(&o.podNamespace, "pod-namespace", getenv("POD_NAMESPACE"), "the agent's own namespace (env POD_NAMESPACE)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", getenv("KUBECONFIG"), "kubeconfig file; empty: in-cluster config (env KUBECONFIG)")
	fs.StringVar(&o.cloud, "cloud", "auto", "notice source: auto, gce, aws, azure or sim")
	fs.StringVar(&o.gceHost, "gce-metadata-host", getenv("GCE_METADATA_HOST"), "GCE metadata server host[:port] (env GCE_METADATA_HOST; default metadata.google.internal)")
	fs.DurationVar(&o.gceNotice, "gce-preemption-notice", 30*time.Second, "time from instance/preempted to the VM stopping; 120s for Spot VMs with preemptionNoticeDuration")
	fs.DurationVar(&o.gceMaintenance, "gce-maintenance-notice", 60*time.Second, "time from TERMINATE_ON_HOST_MAINTENANCE to the VM stopping (GPU VMs: 1h)")
	fs.StringVar(&o.awsEndpoint, "aws-imds-endpoint", "", "EC2 instance metadata base URL (default http://169.254.169.254)")
	fs.DurationVar(&o.awsInterval, "aws-poll-interval", ec2.DefaultPollInterval, "how often to read the EC2 spot interruption notice; the other EC2 paths are read in turn at a quarter of that rate (1.25 requests per interval)")
	fs.BoolVar(&o.awsIMDSv1, "aws-allow-imdsv1", false, "fall back to IMDSv1 when no IMDSv2 token can be had")
	fs.StringVar(&o.azureEndpoint, "azure-imds-endpoint", "", "Azure instance metadata base URL (default http://169.254.169.254)")
	fs.BoolVar(&o.azureAck, "azure-acknowledge", false, "on Azure, approve a scheduled event once its drain is over, so it may start early")
	fs.StringVar(&o.simFile, "sim-file", "", "with --cloud=sim: a notice file to watch")
	fs.StringVar(&o.simListen, "sim-listen", "", "with --cloud=sim: address of the POST /notice trigger, e.g. 127.0.0.1:8099")
	for kind, def := range agent.DefaultPolicies() {
		v := string(def)
		o.policies[kind] = &v
		fs.StringVar(o.policies[kind], "on-"+string(kind), v, "action on a "+string(kind)+" notice: drain, cordon or none")
	}
	fs.StringVar(&o.onBlocked, "on-blocked", string(drainer.Delete), "pods a PodDisruptionBudget still blocks at the cut-off: delete or leave")
	fs.DurationVar(&o.reserve, "reserve", 2*time.Second, "time kept back from the deadline when grace periods are computed")
	fs.DurationVar(&o.cutoff, "blocked-cutoff", 5*time.Second, "stop retrying evictions a budget refuses this long before the deadline")
	fs.DurationVar(&o.criticalWindow, "critical-window", 10*time.Second, "evict system-critical pods this long before the deadline at the latest")
	fs.BoolVar(&o.dryRun, "dry-run", false, "log what would be done; change nothing")
	fs.StringVar(&o.listen, "listen", ":10573", "address for /metrics, /healthz and /readyz")
	fs.StringVar(&o.sidecarListen, "sidecar-listen", ":10574", "address the worker pods' sidecars subscribe to (the node's IP with hostNetwork); empty: no sidecars")
	fs.StringVar(&o.webhookURL, "webhook-url", "", "POST each notice here as it arrives (prefer --webhook-url-file: a URL on the command line is visible in /proc)")
	fs.StringVar(&o.webhookURLFile, "webhook-url-file", "", "read the webhook URL from this file (a mounted Secret) at every notice")
	fs.StringVar(&o.webhookFormat, "webhook-format", string(agent.WebhookJSON), "webhook body: json, slack, teams or template")
	fs.StringVar(&o.webhookTemplateFile, "webhook-template-file", "", "with --webhook-format=template: a Go text/template file that renders the body")
	fs.Var(&o.webhookHeaders, "webhook-header", "an extra webhook request header, \"Name: value\"; repeatable")
	fs.DurationVar(&o.webhookTimeout, "webhook-timeout", 5*time.Second, "timeout of one webhook request")
	fs.IntVar(&o.webhookAttempts, "webhook-attempts", 5, "webhook requests at most, retried with backoff while the notice's deadline is ahead")
	fs.StringVar(&o.taintEffect, "taint-effect", string(corev1.TaintEffectNoSchedule), "effect of the lastcall.dev/draining taint: NoSchedule or NoExecute")
	fs.BoolVar(&o.outOfService, "out-of-service", false, "after a drain, taint the node node.kubernetes.io/out-of-service:NoExecute so that volumes detach as soon as it stops")
	fs.StringVar(&o.foreignSources, "foreign-sources", strings.Join(agent.ForeignTaintSources, ","),
		"tools whose taints say they are taking the node away, so the workers are told to drain: a comma-separated subset of "+strings.Join(agent.ForeignTaintSources, ", ")+"; empty: none")
	fs.Var(&o.foreignTaints, "foreign-taint", "one more taint that says a tool is taking the node away, KEY=SOURCE (effect NoSchedule or NoExecute); repeatable")
	fs.BoolVar(&o.foreignCordon, "foreign-cordon", false, "a cordon lastcall did not make (kubectl drain, node-pool upgrades) tells the workers to drain; off: an operator's cordon for a look does not stop them")
	fs.BoolVar(&o.foreignShutdown, "foreign-kubelet-shutdown", true, "the kubelet's graceful node shutdown (Ready=False, \"node is shutting down\") tells the workers to drain")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.checkAccess, "check-access", true, "check at start that RBAC allows what the agent does")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return o, nil
}

// Main runs the agent with args and returns the exit code.
func Main(args []string, getenv func(string) string, stderr io.Writer) int {
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "node-agent:", err)
		return 2
	}
	if o.showVersion {
		fmt.Fprintln(stderr, "node-agent", version)
		return 0
	}
	logger, err := logformat.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "node-agent:", err)
		return 2
	}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, logger); err != nil {
		logger.Error("node-agent stopped", "err", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, o *options, logger *slog.Logger) error {
	if o.node == "" {
		return errors.New("no node name: set --node-name or NODE_NAME (downward API spec.nodeName)")
	}
	policies := agent.Policies{}
	for kind, v := range o.policies {
		a, err := agent.ParseAction(*v)
		if err != nil {
			return fmt.Errorf("--on-%s: %w", kind, err)
		}
		policies[kind] = a
	}
	onBlocked := drainer.BlockedAction(o.onBlocked)
	if onBlocked != drainer.Delete && onBlocked != drainer.Leave {
		return fmt.Errorf("--on-blocked %q: want delete or leave", o.onBlocked)
	}
	webhook, err := webhookConfig(o)
	if err != nil {
		return err
	}
	foreign, err := foreignConfig(o)
	if err != nil {
		return err
	}
	effect := corev1.TaintEffect(o.taintEffect)
	if effect != corev1.TaintEffectNoSchedule && effect != corev1.TaintEffectNoExecute {
		return fmt.Errorf("--taint-effect %q: want NoSchedule or NoExecute", o.taintEffect)
	}
	klog.SetSlogLogger(logger)
	logger = logger.With("node", o.node)
	logger.Info("node-agent starting", "version", version, "dry_run", o.dryRun)

	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("apiserver config: %w", err)
	}
	// No client-side rate limit: 110 evictions must go out in well under a
	// second, not in client-go's default 5 per second.
	cfg.QPS, cfg.Burst = -1, -1
	cfg.UserAgent = "lastcall-node-agent/" + version
	client, err := kubeclient.NewForConfig(cfg)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	wm, err := watcher.NewMetrics(reg)
	if err != nil {
		return err
	}
	am := agent.NewMetrics(reg)
	am.SetBuildInfo(version)
	// Health and metrics first: while the cloud is not known yet the agent
	// is alive and not ready, rather than crash-looping.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	var ready atomic.Pointer[func() error]
	notYet := func() error { return errors.New("no cloud metadata service found yet; still probing") }
	ready.Store(&notYet)
	metricsLimits, hubLimits := limits()
	if o.nodeIP != "" {
		ip, err := netip.ParseAddr(o.nodeIP)
		if err != nil {
			return fmt.Errorf("--node-ip: %w", err)
		}
		metricsLimits.Reserved = []netip.Addr{ip}
	}
	guard, err := httpguard.NewMetrics(reg)
	if err != nil {
		return err
	}
	ln, err := httpguard.Listen("tcp", o.listen, metricsLimits, guard.Shed("metrics"))
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	srv := httpguard.Server(agent.Handler(reg, func() error { return (*ready.Load())() }), metricsLimits, logger)
	logger.Info("serving metrics and health", "addr", ln.Addr().String())
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve %s: %w", o.listen, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	stopped := func(err error) error {
		cancel()
		return errors.Join(err, g.Wait())
	}

	cloud := watcher.Source(o.cloud)
	if o.cloud == "auto" {
		cloud = ""
	}
	w, source, err := detectCloud(ctx, logger, detect.Config{
		Cloud:   cloud,
		Probes:  detect.Probes{GCEHost: o.gceHost, AWSEndpoint: o.awsEndpoint, AzureEndpoint: o.azureEndpoint},
		GCE:     gceOptions(o),
		EC2:     ec2Options(o),
		Azure:   azureOptions(o),
		Sim:     simOptions(o),
		Logger:  logger.With("component", "watcher"),
		Metrics: wm,
	})
	if err != nil {
		if ctx.Err() != nil {
			return stopped(nil) // stopped while probing
		}
		return stopped(fmt.Errorf("notice source: %w", err))
	}
	logger.Info("watching notices", "source", source)
	wm.Watching(source)
	am.Watching(source, policies)

	pods := agent.NewNodePods(client, o.node)
	self := types.NamespacedName{Namespace: o.podNamespace, Name: o.podName}
	// The agent records refused evictions as Events; it is built after
	// the drainer, and before any drain.
	var a *agent.Agent
	dopts := drainer.Options{
		Logger: logger.With("component", "drainer"), Self: self, Pods: pods, Metrics: drainer.NewMetrics(reg),
		TaintEffect: effect, Refused: func(p *corev1.Pod, err error) { a.EvictionRefused(p, err) },
	}
	// The sidecars: told of every notice; pods whose sidecar is connected
	// are held until their workers report done.
	var notifier agent.Notifier
	var holds *agent.Holds
	var hubServer *http.Server
	var hubListener net.Listener
	if o.sidecarListen != "" {
		hub, err := sidecar.NewHub(sidecar.HubOptions{
			Pods:       pods,
			OnDone:     func(p sidecar.PodRef) { holds.Done(p.Namespace, p.Name) },
			OnUndone:   func(p sidecar.PodRef) { holds.Undone(p.Namespace, p.Name) },
			Logger:     logger.With("component", "sidecars"),
			Registerer: reg,
			// Until the agent knows the node's state, sidecars keep what
			// they were told before it (re)started.
			Unknown: true,
		})
		if err != nil {
			return stopped(err)
		}
		holds = agent.NewHolds(hub, pods)
		notifier, dopts.Hold = holds, holds.Hold
		if hubListener, err = httpguard.Listen("tcp", o.sidecarListen, hubLimits, guard.Shed("sidecars")); err != nil {
			return stopped(fmt.Errorf("--sidecar-listen: %w", err))
		}
		hubServer = httpguard.Server(hub.Handler(), hubLimits, logger)
		hubServer.RegisterOnShutdown(hub.Close)
		logger.Info("serving sidecars", "addr", hubListener.Addr().String())
	}
	d := drainer.New(client, dopts)
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	// Not canceled with ctx: the Events of the shutdown itself (a drain
	// called off) are still written while the broadcaster drains.
	broadcaster.StartRecordingToSink(kubeclient.EventSink(context.WithoutCancel(ctx), client))
	recorder := broadcaster.NewRecorder(kubeclient.NewScheme(), corev1.EventSource{Component: "lastcall", Host: o.node})

	var ack agent.Acknowledger
	if az, ok := w.(*azure.Watcher); ok && o.azureAck {
		ack = azureAcknowledger{az}
	}
	a, err = agent.New(agent.Config{
		Node: o.node, Self: self, Policies: policies, DryRun: o.dryRun,
		Drain:   drainer.Policy{OnBlocked: onBlocked, Reserve: o.reserve, BlockedCutoff: o.cutoff, CriticalWindow: o.criticalWindow},
		Webhook: webhook, OutOfService: o.outOfService, Foreign: foreign,
	}, agent.Deps{
		Client: client, Drainer: d, Pods: pods, Events: recorder, Notifier: notifier, Holds: holds,
		Metrics: am, Logger: logger.With("component", "agent"), Acknowledger: ack,
	})
	if err != nil {
		return stopped(err)
	}

	var accessErr atomic.Pointer[error]
	check := func() error {
		if !pods.Synced() {
			return errors.New("pod cache not synced")
		}
		if p := accessErr.Load(); p != nil {
			return *p
		}
		return nil
	}
	ready.Store(&check)

	notices := make(chan watcher.Notice)
	g.Go(func() error { return pods.Run(ctx) })
	g.Go(func() error { return w.Watch(ctx, notices) })
	g.Go(func() error { return a.Run(ctx, notices) })
	if hubServer != nil {
		g.Go(func() error {
			if err := hubServer.Serve(hubListener); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve sidecars on %s: %w", o.sidecarListen, err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return hubServer.Shutdown(sctx)
		})
	}
	if o.checkAccess {
		g.Go(func() error {
			// RBAC first (it names what is missing), then the writes a
			// notice needs as server-side dry runs: an admission policy or
			// webhook that would refuse them shows now, not in a preemption.
			agent.CheckUntilOK(ctx, checkSpread, 5*time.Minute, func(ctx context.Context) error {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				err := agent.CheckAccess(cctx, client, o.node)
				if err == nil {
					err = d.CheckCordon(cctx, o.node, string(source), "")
				}
				if err == nil {
					err = agent.CheckCondition(cctx, client, o.node)
				}
				return err
			}, func(err error) {
				if err != nil {
					logger.Error("access check failed: the agent is not ready; checking again", "err", err)
					accessErr.Store(&err)
					return
				}
				if accessErr.Swap(nil) != nil {
					logger.Info("access check passed: the agent is ready")
				}
			})
			return nil
		})
	}
	return g.Wait()
}

// detectCloud finds the notice source. A metadata service that does not
// answer at boot (a hiccup, a slow link-local route) is probed again with
// backoff, up to a minute apart, until it answers or ctx ends: the agent
// stays alive and not ready instead of crash-looping. Other errors (a bad
// configuration) return at once.
func detectCloud(ctx context.Context, logger *slog.Logger, cfg detect.Config) (watcher.Watcher, watcher.Source, error) {
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		w, source, err := detect.New(ctx, cfg)
		if err == nil || !errors.Is(err, detect.ErrNoCloud) {
			return w, source, err
		}
		logger.Warn("no cloud metadata service answered; probing again", "attempt", attempt, "retry_in", backoff.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil, "", fmt.Errorf("cloud detection: %w", context.Cause(ctx))
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// foreignConfig builds the agent's ForeignConfig from the --foreign-* flags.
func foreignConfig(o *options) (agent.ForeignConfig, error) {
	var sources []string
	for s := range strings.SplitSeq(o.foreignSources, ",") {
		if s = strings.TrimSpace(s); s != "" {
			sources = append(sources, s)
		}
	}
	taints, err := agent.ForeignTaintsOf(sources)
	if err != nil {
		return agent.ForeignConfig{}, fmt.Errorf("--foreign-sources: %w", err)
	}
	for key, src := range o.foreignTaints.m {
		taints[key] = src
	}
	cfg := agent.ForeignConfig{Taints: taints, Cordon: o.foreignCordon, KubeletShutdown: o.foreignShutdown}
	if err := cfg.Validate(); err != nil {
		return agent.ForeignConfig{}, fmt.Errorf("--foreign-taint: %w", err)
	}
	return cfg, nil
}

// foreignTaintFlag collects repeated KEY=SOURCE flags.
type foreignTaintFlag struct{ m map[string]string }

func (f *foreignTaintFlag) String() string {
	if f == nil || len(f.m) == 0 {
		return ""
	}
	return fmt.Sprint(len(f.m), " taints")
}

func (f *foreignTaintFlag) Set(v string) error {
	key, src, ok := strings.Cut(v, "=")
	key, src = strings.TrimSpace(key), strings.TrimSpace(src)
	if !ok || key == "" || src == "" {
		return fmt.Errorf("%q: want KEY=SOURCE, e.g. example.com/draining=in-house", v)
	}
	if f.m == nil {
		f.m = map[string]string{}
	}
	f.m[key] = src
	return nil
}

// headerFlag collects repeated "Name: value" flags into an http.Header.
type headerFlag struct{ h http.Header }

func (f *headerFlag) String() string {
	if f == nil || f.h == nil {
		return ""
	}
	return fmt.Sprint(len(f.h), " headers")
}

func (f *headerFlag) Set(v string) error {
	name, value, ok := strings.Cut(v, ":")
	name, value = strings.TrimSpace(name), strings.TrimSpace(value)
	if !ok || name == "" || strings.ContainsAny(name, " \t") {
		return fmt.Errorf("want \"Name: value\", got %q", v)
	}
	if f.h == nil {
		f.h = http.Header{}
	}
	f.h.Add(name, value)
	return nil
}

// webhookConfig checks the webhook flags and returns the agent's Webhook.
func webhookConfig(o *options) (agent.Webhook, error) {
	format, err := agent.ParseWebhookFormat(o.webhookFormat)
	if err != nil {
		return agent.Webhook{}, fmt.Errorf("--webhook-format: %w", err)
	}
	w := agent.Webhook{
		URL: o.webhookURL, URLFile: o.webhookURLFile, Format: format, Header: o.webhookHeaders.h,
		Timeout: o.webhookTimeout, Attempts: o.webhookAttempts,
	}
	if w.URL != "" && w.URLFile != "" {
		return w, errors.New("--webhook-url and --webhook-url-file exclude each other")
	}
	if o.webhookAttempts < 1 || o.webhookTimeout <= 0 {
		return w, errors.New("--webhook-attempts and --webhook-timeout must be positive")
	}
	if (format == agent.WebhookTemplate) != (o.webhookTemplateFile != "") {
		return w, errors.New("--webhook-format=template and --webhook-template-file go together")
	}
	if o.webhookTemplateFile != "" {
		raw, err := os.ReadFile(o.webhookTemplateFile)
		if err != nil {
			return w, fmt.Errorf("--webhook-template-file: %w", err)
		}
		if w.Template, err = agent.ParseWebhookTemplate(string(raw)); err != nil {
			return w, fmt.Errorf("--webhook-template-file %s: %w", o.webhookTemplateFile, err)
		}
	}
	return w, nil
}

// Command sidecar is lastcall's sidecar for worker pods: it subscribes to
// the node agent on the node's IP and tells the workers beside it, over
// localhost HTTP, a file and optionally a signal, when to stop pulling and
// finish. Run as "sidecar prestop" it is the workers' preStop hook.
//
// It only parses flags and environment and runs package sidecar/pod.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lastcall-dev/lastcall/internal/logformat"
	"github.com/lastcall-dev/lastcall/sidecar/pod"
	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(Main(os.Args[1:], os.Getenv, os.Stderr))
}

const usage = `sidecar tells the workers of its pod when the node agent drains the node
(or the pod itself terminates): GET http://127.0.0.1:10575/v1/state, the file
<dir>/state.json, the flag file <dir>/draining, an optional signal.

Usage:
  sidecar [flags]            run the sidecar (a native sidecar container)
  sidecar prestop [flags]    the workers' preStop hook: drain, wait until the
                             workers are done or the timeout, then return
  sidecar probe [--addr A]   the sidecar's startup probe: exit 0 once the
                             workers' API answers /healthz

Flags default to the downward API's environment variables named in brackets.

Flags:
`

// options are the parsed flags of the sidecar itself.
type options struct {
	cfg                 pod.Config
	signal              string
	installBinary       bool
	logFormat, logLevel string
	showVersion         bool
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	agent := getenv("LASTCALL_AGENT")
	if agent == "" && getenv("HOST_IP") != "" {
		agent = "http://" + joinHostPort(getenv("HOST_IP"), "10574")
	}
	prestop, err := envDuration(getenv, "LASTCALL_PRESTOP_TIMEOUT", 25*time.Second)
	if err != nil {
		return nil, err
	}
	fs.StringVar(&o.cfg.Name, "pod-name", getenv("POD_NAME"), "this pod's name [POD_NAME]")
	fs.StringVar(&o.cfg.Namespace, "pod-namespace", getenv("POD_NAMESPACE"), "this pod's namespace [POD_NAMESPACE]")
	fs.StringVar(&o.cfg.PodIP, "pod-ip", getenv("POD_IP"), "this pod's IP, the address the agent is called from [POD_IP]")
	fs.StringVar(&o.cfg.Agent, "agent", agent, "the node agent's sidecar endpoint [LASTCALL_AGENT, else http://$HOST_IP:10574]")
	fs.StringVar(&o.cfg.Listen, "listen", envOr(getenv, "LASTCALL_LISTEN", "127.0.0.1:10575"), "address of the workers' API [LASTCALL_LISTEN]")
	fs.StringVar(&o.cfg.Dir, "dir", getenv("LASTCALL_DIR"), "shared emptyDir for state.json and the draining flag file; empty: no files [LASTCALL_DIR]")
	fs.StringVar(&o.signal, "signal", getenv("LASTCALL_SIGNAL"), "signal sent to --signal-process when draining starts, e.g. TSTP [LASTCALL_SIGNAL]")
	fs.StringVar(&o.cfg.SignalProcess, "signal-process", getenv("LASTCALL_SIGNAL_PROCESS"), "name of the worker process to signal; needs shareProcessNamespace [LASTCALL_SIGNAL_PROCESS]")
	fs.DurationVar(&o.cfg.PrestopTimeout, "prestop-timeout", prestop, "how long a terminating pod waits for its workers; keep it under terminationGracePeriodSeconds [LASTCALL_PRESTOP_TIMEOUT]")
	fs.DurationVar(&o.cfg.PollWait, "poll-wait", 30*time.Second, "how long one long-poll to the agent waits")
	fs.BoolVar(&o.installBinary, "install-binary", true, "copy this binary into --dir as \"sidecar\", for the workers' exec preStop hook")
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.showVersion {
		return o, nil
	}
	if o.cfg.Name == "" || o.cfg.Namespace == "" {
		return nil, errors.New("no pod name or namespace: set --pod-name and --pod-namespace, or POD_NAME and POD_NAMESPACE from the downward API")
	}
	if o.cfg.Agent == "" {
		return nil, errors.New("no agent address: set --agent, LASTCALL_AGENT, or HOST_IP from the downward API (status.hostIP)")
	}
	if o.signal != "" {
		sig, err := parseSignal(o.signal)
		if err != nil {
			return nil, fmt.Errorf("--signal: %w", err)
		}
		o.cfg.Signal = sig
		if o.cfg.SignalProcess == "" {
			return nil, errors.New("--signal needs --signal-process")
		}
	}
	return o, nil
}

// Main runs the sidecar, or its prestop subcommand, with args and returns
// the exit code.
func Main(args []string, getenv func(string) string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "prestop" {
		return prestopMain(args[1:], getenv, stderr)
	}
	if len(args) > 0 && args[0] == "probe" {
		return probeMain(args[1:], getenv, stderr)
	}
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "sidecar:", err)
		return 2
	}
	if o.showVersion {
		fmt.Fprintln(stderr, "sidecar", version)
		return 0
	}
	logger, err := logformat.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "sidecar:", err)
		return 2
	}
	o.cfg.Logger = logger
	if err := run(o, logger); err != nil {
		logger.Error("sidecar stopped", "err", err)
		return 1
	}
	return 0
}

// run runs the sidecar until SIGTERM or SIGINT; then it drains (reason
// pod-terminating) and keeps serving until the workers are done or the
// prestop timeout ends. A second signal stops it at once.
func run(o *options, logger *slog.Logger) error {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)

	if err := undumpable(); err != nil {
		return fmt.Errorf("mark the process not dumpable: %w", err)
	}
	s, err := pod.New(o.cfg)
	if err != nil {
		return err
	}
	if o.installBinary && o.cfg.Dir != "" {
		if exe, err := os.Executable(); err != nil {
			logger.Warn("cannot find own binary to install", "err", err)
		} else if dst, err := pod.InstallBinary(exe, o.cfg.Dir, "sidecar"); err != nil {
			logger.Warn("cannot install binary for the preStop hook", "err", err)
		} else {
			logger.Info("binary installed for the preStop hook", "path", dst)
		}
	}
	logger.Info("sidecar starting", "version", version)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 1)
	wg.Go(func() { errc <- s.Run(ctx) })

	select {
	case err := <-errc:
		return err
	case sig := <-sigs:
		logger.Info("signal received: draining before exit", "signal", sig.String())
	}
	tctx, tcancel := context.WithCancel(ctx)
	wg.Go(func() {
		select {
		case sig := <-sigs:
			logger.Info("second signal: stopping now", "signal", sig.String())
			tcancel()
		case <-tctx.Done():
		}
	})
	done := s.Terminate(tctx, 0)
	tcancel()
	logger.Info("sidecar exiting", "workers_done", done)
	cancel()
	return <-errc
}

// prestopMain is the preStop hook: it asks the sidecar to drain and waits
// for its answer, which comes when the workers are done or the timeout ends.
func prestopMain(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sidecar prestop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr(getenv, "LASTCALL_LISTEN", "127.0.0.1:10575"), "the sidecar's workers' API [LASTCALL_LISTEN]")
	timeout := fs.Duration("timeout", 0, "how long to wait for the workers; 0: the sidecar's --prestop-timeout")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	limit := *timeout + 5*time.Second
	if *timeout == 0 {
		limit = 10 * time.Minute // the kubelet ends the hook at the grace period anyway
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	st, err := prestop(ctx, *addr, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "sidecar prestop:", err)
		return 1
	}
	fmt.Fprintf(stderr, "sidecar prestop: phase=%s reason=%s done=%v\n", st.Phase, st.Reason, st.Done)
	return 0
}

func prestop(ctx context.Context, addr string, timeout time.Duration) (wire.State, error) {
	u := "http://" + addr + "/v1/prestop"
	if timeout > 0 {
		u += "?timeout=" + timeout.String()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return wire.State{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return wire.State{}, fmt.Errorf("call sidecar: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return wire.State{}, fmt.Errorf("sidecar answered %s", resp.Status)
	}
	var st wire.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return wire.State{}, fmt.Errorf("decode sidecar state: %w", err)
	}
	return st, nil
}

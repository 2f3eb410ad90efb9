package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/lastcall-dev/lastcall/injector"
)

const usage = `injector is lastcall's sidecar injector: a mutating admission webhook that
adds the sidecar to pods labelled lastcall.dev/inject=enabled (POST /mutate),
or to every pod of a namespace so labelled (POST /mutate-namespace) but those
labelled lastcall.dev/inject=disabled. "injector inject -f FILE" prints
manifests with the sidecar added instead (injector inject --help).

Unless --cert-dir is set, it keeps its own CA and serving certificate in the
Secret --secret of its namespace (creating it when missing) and writes the
CA into the caBundle of the MutatingWebhookConfiguration --webhook-config.

Flags:
`

// options are the parsed flags.
type options struct {
	namespace, service, secret, webhookConfig string
	certDir, listen, kubeconfig               string
	metricsListen                             string
	agentUser                                 string
	inject                                    injector.Config
	logFormat, logLevel                       string
	showVersion                               bool
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("injector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.namespace, "namespace", getenv("POD_NAMESPACE"), "the injector's namespace, never injected [POD_NAMESPACE]")
	fs.StringVar(&o.service, "service", "lastcall-injector", "the webhook's Service, named in the serving certificate")
	fs.StringVar(&o.secret, "secret", "lastcall-injector-tls", "the Secret that keeps the CA and serving certificate")
	fs.StringVar(&o.webhookConfig, "webhook-config", "lastcall-injector", "the MutatingWebhookConfiguration whose caBundle to set")
	fs.StringVar(&o.certDir, "cert-dir", "", "read tls.crt and tls.key from this directory (cert-manager) instead of keeping a CA")
	fs.StringVar(&o.listen, "listen", ":9443", "HTTPS address of /mutate, /healthz and /readyz")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "plain HTTP address of /metrics, e.g. :10576; empty: none")
	fs.StringVar(&o.kubeconfig, "kubeconfig", getenv("KUBECONFIG"), "kubeconfig file; empty: in-cluster config [KUBECONFIG]")
	fs.StringVar(&o.agentUser, "agent-user", "", "the node agent's user (system:serviceaccount:NAMESPACE:NAME): /evict guards its evictions only and allows any other's without a read; empty: every eviction sent")
	sf := addSidecarFlags(fs)
	fs.StringVar(&o.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.showVersion {
		return o, nil
	}
	if o.namespace == "" {
		return nil, errors.New("no namespace: set --namespace or POD_NAMESPACE (downward API metadata.namespace)")
	}
	var err error
	o.inject, err = sf.config(o.namespace)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// sidecarFlags are the flags that say what the sidecar is, shared by the
// webhook and the inject subcommand.
type sidecarFlags struct {
	cfg                                              injector.Config
	image, command, pullPolicy, exclude, pullSecrets string
	cpuReq, memReq, cpuLim, memLim                   string
}

func addSidecarFlags(fs *flag.FlagSet) *sidecarFlags {
	f := &sidecarFlags{}
	fs.StringVar(&f.image, "image", "", "the sidecar's image (required)")
	fs.StringVar(&f.command, "sidecar-command", "/usr/local/bin/sidecar", "the sidecar's command in --image; empty: the image's entrypoint")
	fs.StringVar(&f.pullPolicy, "image-pull-policy", "", "the sidecar's image pull policy: Always, IfNotPresent, Never or empty")
	fs.StringVar(&f.pullSecrets, "image-pull-secrets", "", "comma-separated Secrets added to injected pods' imagePullSecrets, for a private sidecar image; each must exist in the pod's namespace")
	fs.BoolVar(&f.cfg.NativeSidecar, "native-sidecar", true, "inject a native sidecar (init container with restartPolicy Always, Kubernetes >= 1.29); false: a plain container")
	fs.IntVar(&f.cfg.AgentPort, "agent-port", injector.DefaultAgentPort, "the node agent's sidecar port on the node's IP")
	fs.Int64Var(&f.cfg.RunAsUser, "sidecar-user", 65532, "the sidecar's user ID (non-root); 0: none set, the image's or the platform's (OpenShift assigns one), still runAsNonRoot")
	fs.StringVar(&f.exclude, "exclude-namespaces", "kube-system", "comma-separated namespaces never injected, besides --namespace")
	fs.StringVar(&f.cpuReq, "sidecar-cpu-request", "5m", "the sidecar's CPU request; empty: none")
	fs.StringVar(&f.memReq, "sidecar-memory-request", "16Mi", "the sidecar's memory request; empty: none")
	fs.StringVar(&f.cpuLim, "sidecar-cpu-limit", "", "the sidecar's CPU limit; empty: none")
	fs.StringVar(&f.memLim, "sidecar-memory-limit", "32Mi", "the sidecar's memory limit; empty: none")
	return f
}

// config checks the flags and returns the injection's configuration;
// namespace, if set, is never injected.
func (f *sidecarFlags) config(namespace string) (injector.Config, error) {
	cfg := f.cfg
	if f.image == "" {
		return cfg, errors.New("--image: the sidecar's image is required")
	}
	switch p := corev1.PullPolicy(f.pullPolicy); p {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		cfg.PullPolicy = p
	default:
		return cfg, fmt.Errorf("--image-pull-policy %q: want Always, IfNotPresent, Never or empty", f.pullPolicy)
	}
	if cfg.AgentPort < 1 || cfg.AgentPort > 65535 {
		return cfg, fmt.Errorf("--agent-port %d: want 1-65535", cfg.AgentPort)
	}
	if cfg.RunAsUser < 0 {
		return cfg, fmt.Errorf("--sidecar-user %d: want a user ID, or 0 for none", cfg.RunAsUser)
	}
	cfg.Image = f.image
	if f.command != "" {
		cfg.Command = []string{f.command}
	}
	if namespace != "" {
		cfg.ExcludedNamespaces = []string{namespace}
	}
	for _, ns := range strings.Split(f.exclude, ",") {
		if ns = strings.TrimSpace(ns); ns != "" && ns != namespace {
			cfg.ExcludedNamespaces = append(cfg.ExcludedNamespaces, ns)
		}
	}
	for _, s := range strings.Split(f.pullSecrets, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.ImagePullSecrets = append(cfg.ImagePullSecrets, s)
		}
	}
	var err error
	cfg.Resources.Requests, err = resources("request", map[corev1.ResourceName]string{corev1.ResourceCPU: f.cpuReq, corev1.ResourceMemory: f.memReq})
	if err != nil {
		return cfg, err
	}
	cfg.Resources.Limits, err = resources("limit", map[corev1.ResourceName]string{corev1.ResourceCPU: f.cpuLim, corev1.ResourceMemory: f.memLim})
	if err != nil {
		return cfg, err
	}
	return cfg, nil
}

// resources parses the non-empty quantities of a resource list.
func resources(kind string, in map[corev1.ResourceName]string) (corev1.ResourceList, error) {
	out := corev1.ResourceList{}
	for name, v := range in {
		if v == "" {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("--sidecar-%s-%s %q: %w", name, kind, v, err)
		}
		out[name] = q
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// hosts returns the names the serving certificate must carry: those the
// apiserver may use for the Service.
func (o *options) hosts() []string {
	s, ns := o.service, o.namespace
	return []string{s + "." + ns + ".svc", s + "." + ns + ".svc.cluster.local", s + "." + ns, s}
}

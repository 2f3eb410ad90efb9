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
adds the sidecar to pods labelled lastcall.dev/inject=enabled.

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
	var image, command, pullPolicy, exclude, cpuReq, memReq, cpuLim, memLim string
	fs.StringVar(&o.namespace, "namespace", getenv("POD_NAMESPACE"), "the injector's namespace, never injected [POD_NAMESPACE]")
	fs.StringVar(&o.service, "service", "lastcall-injector", "the webhook's Service, named in the serving certificate")
	fs.StringVar(&o.secret, "secret", "lastcall-injector-tls", "the Secret that keeps the CA and serving certificate")
	fs.StringVar(&o.webhookConfig, "webhook-config", "lastcall-injector", "the MutatingWebhookConfiguration whose caBundle to set")
	fs.StringVar(&o.certDir, "cert-dir", "", "read tls.crt and tls.key from this directory (cert-manager) instead of keeping a CA")
	fs.StringVar(&o.listen, "listen", ":9443", "HTTPS address of /mutate, /healthz and /readyz")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "plain HTTP address of /metrics, e.g. :9102; empty: none")
	fs.StringVar(&o.kubeconfig, "kubeconfig", getenv("KUBECONFIG"), "kubeconfig file; empty: in-cluster config [KUBECONFIG]")
	fs.StringVar(&image, "image", "", "the sidecar's image (required)")
	fs.StringVar(&command, "sidecar-command", "/usr/local/bin/sidecar", "the sidecar's command in --image; empty: the image's entrypoint")
	fs.StringVar(&pullPolicy, "image-pull-policy", "", "the sidecar's image pull policy: Always, IfNotPresent, Never or empty")
	fs.BoolVar(&o.inject.NativeSidecar, "native-sidecar", true, "inject a native sidecar (init container with restartPolicy Always, Kubernetes >= 1.29); false: a plain container")
	fs.IntVar(&o.inject.AgentPort, "agent-port", injector.DefaultAgentPort, "the node agent's sidecar port on the node's IP")
	fs.Int64Var(&o.inject.RunAsUser, "sidecar-user", 65532, "the sidecar's user ID (non-root)")
	fs.StringVar(&exclude, "exclude-namespaces", "kube-system", "comma-separated namespaces never injected, besides --namespace")
	fs.StringVar(&cpuReq, "sidecar-cpu-request", "5m", "the sidecar's CPU request; empty: none")
	fs.StringVar(&memReq, "sidecar-memory-request", "16Mi", "the sidecar's memory request; empty: none")
	fs.StringVar(&cpuLim, "sidecar-cpu-limit", "", "the sidecar's CPU limit; empty: none")
	fs.StringVar(&memLim, "sidecar-memory-limit", "32Mi", "the sidecar's memory limit; empty: none")
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
	if image == "" {
		return nil, errors.New("--image: the sidecar's image is required")
	}
	switch p := corev1.PullPolicy(pullPolicy); p {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		o.inject.PullPolicy = p
	default:
		return nil, fmt.Errorf("--image-pull-policy %q: want Always, IfNotPresent, Never or empty", pullPolicy)
	}
	if o.inject.AgentPort < 1 || o.inject.AgentPort > 65535 {
		return nil, fmt.Errorf("--agent-port %d: want 1-65535", o.inject.AgentPort)
	}
	if o.inject.RunAsUser < 1 {
		return nil, fmt.Errorf("--sidecar-user %d: the sidecar never runs as root", o.inject.RunAsUser)
	}
	o.inject.Image = image
	if command != "" {
		o.inject.Command = []string{command}
	}
	o.inject.ExcludedNamespaces = []string{o.namespace}
	for _, ns := range strings.Split(exclude, ",") {
		if ns = strings.TrimSpace(ns); ns != "" && ns != o.namespace {
			o.inject.ExcludedNamespaces = append(o.inject.ExcludedNamespaces, ns)
		}
	}
	var err error
	o.inject.Resources.Requests, err = resources("request", map[corev1.ResourceName]string{corev1.ResourceCPU: cpuReq, corev1.ResourceMemory: memReq})
	if err != nil {
		return nil, err
	}
	o.inject.Resources.Limits, err = resources("limit", map[corev1.ResourceName]string{corev1.ResourceCPU: cpuLim, corev1.ResourceMemory: memLim})
	if err != nil {
		return nil, err
	}
	return o, nil
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

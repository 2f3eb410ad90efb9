package injector

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The label and annotations the injector reads and writes.
const (
	// InjectLabel selects the pods that get the sidecar, with the value
	// InjectEnabled.
	InjectLabel = "lastcall.dev/inject"
	// InjectEnabled is InjectLabel's value that asks for the sidecar, on a
	// pod or on its namespace.
	InjectEnabled = "enabled"
	// InjectDisabled is InjectLabel's value by which a pod in a namespace
	// labelled InjectEnabled declines the sidecar.
	InjectDisabled = "disabled"
	// InjectedAnnotation marks a pod that has the sidecar; a pod that carries
	// it is left as it is.
	InjectedAnnotation = "lastcall.dev/injected"
	// NotInjectedAnnotation says why a pod that asked for the sidecar did
	// not get it (NotInjectable): the injector adds it instead.
	NotInjectedAnnotation = "lastcall.dev/not-injected"
	// SidecarImageAnnotation records the sidecar image a pod got, so that
	// its version can be read from the pod.
	SidecarImageAnnotation = "lastcall.dev/sidecar-image"
	// ContainersAnnotation lists (comma-separated) the containers that get
	// the sidecar's preStop hook; by default every container but the
	// service-mesh proxies (istio-proxy, linkerd-proxy).
	ContainersAnnotation = "lastcall.dev/containers"
	// SignalAnnotation names a signal (TSTP, USR1, ...) the sidecar sends to
	// the worker process when draining starts; it also turns on
	// shareProcessNamespace.
	SignalAnnotation = "lastcall.dev/signal"
	// SignalProcessAnnotation names the worker process to signal.
	SignalProcessAnnotation = "lastcall.dev/signal-process"
	// PortAnnotation is the loopback port of the workers' API (default 10575).
	PortAnnotation = "lastcall.dev/port"
	// The sidecar's resources for one pod, overriding Config.Resources:
	// quantities such as "20m" or "48Mi".
	CPURequestAnnotation    = "lastcall.dev/sidecar-cpu-request"
	MemoryRequestAnnotation = "lastcall.dev/sidecar-memory-request"
	CPULimitAnnotation      = "lastcall.dev/sidecar-cpu-limit"
	MemoryLimitAnnotation   = "lastcall.dev/sidecar-memory-limit"
)

// Names of what the injector adds to a pod.
const (
	// ContainerName is the sidecar container's name.
	ContainerName = "lastcall"
	// VolumeName is the shared emptyDir's name.
	VolumeName = "lastcall"
	// MountPath is where the emptyDir is mounted in every container.
	MountPath = "/lastcall"
)

// DefaultAgentPort is the node agent's sidecar port, which the sidecar
// assumes when LASTCALL_AGENT is not set.
const DefaultAgentPort = 10574

// Config says what Inject adds. The zero value is not usable: start from
// DefaultConfig.
type Config struct {
	// Image is the sidecar's image.
	Image string
	// Command runs the sidecar binary in Image; empty: the image's entrypoint.
	Command []string
	// PullPolicy is the sidecar's image pull policy; empty: Kubernetes'
	// default.
	PullPolicy corev1.PullPolicy
	// NativeSidecar adds the sidecar as an init container with
	// restartPolicy Always (Kubernetes >= 1.29); false adds a plain
	// container, for older clusters.
	NativeSidecar bool
	// AgentPort is the node agent's sidecar port; the sidecar reaches it at
	// the node's IP.
	AgentPort int
	// Resources are the sidecar container's requests and limits.
	Resources corev1.ResourceRequirements
	// RunAsUser is the sidecar's user, never root.
	RunAsUser int64
	// ExcludedNamespaces are never injected, whatever the webhook
	// configuration sends: kube-system and the injector's own namespace.
	ExcludedNamespaces []string
	// ImagePullSecrets are added to an injected pod's imagePullSecrets (if
	// it lacks them), for a sidecar image in a private registry; each must
	// exist in the pod's namespace.
	ImagePullSecrets []string
	// NamespaceOptIn says the pod's namespace asked for the sidecar (label
	// InjectLabel=InjectEnabled): the pod gets it unless its own label is
	// InjectDisabled. False: only pods labelled InjectEnabled get it.
	NamespaceOptIn bool
}

// DefaultConfig returns the configuration of the chart's defaults for the
// sidecar image, the injector's own namespace excluded as well as
// kube-system.
func DefaultConfig(image, ownNamespace string) Config {
	excluded := []string{"kube-system"}
	if ownNamespace != "" && ownNamespace != "kube-system" {
		excluded = append(excluded, ownNamespace)
	}
	return Config{
		Image:         image,
		Command:       []string{"/usr/local/bin/sidecar"},
		NativeSidecar: true,
		AgentPort:     DefaultAgentPort,
		Resources: corev1.ResourceRequirements{
			// Sidecar RSS at rest: 8.6 MiB.
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("5m"),
				corev1.ResourceMemory: resource.MustParse("16Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceMemory: resource.MustParse("32Mi"),
			},
		},
		RunAsUser:          65532,
		ExcludedNamespaces: excluded,
	}
}

// excluded reports whether ns is one of cfg's excluded namespaces.
func (cfg Config) excluded(ns string) bool {
	return slices.Contains(cfg.ExcludedNamespaces, ns)
}

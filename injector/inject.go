package injector

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ErrExcluded is returned by Inject for a pod in an excluded namespace
// (kube-system, the injector's own): such a pod is left as it is.
var ErrExcluded = errors.New("namespace excluded from injection")

// signalNames are the names the sidecar's --signal accepts, without SIG.
const signalNames = "HUP INT QUIT USR1 USR2 TERM TSTP CONT WINCH"

// Inject returns a copy of pod with the sidecar added and changed true, or
// pod itself and changed false when it has nothing to do: the pod did not
// ask for it (label InjectLabel=InjectEnabled, or, with
// Config.NamespaceOptIn, any value but InjectDisabled), or already carries
// InjectedAnnotation.
// It never modifies pod. A pod in an excluded namespace gives ErrExcluded;
// invalid annotations, or a container or volume already named "lastcall",
// give another error. pod.Namespace must be set.
func Inject(pod *corev1.Pod, cfg Config) (*corev1.Pod, bool, error) {
	if !cfg.wanted(pod) {
		return pod, false, nil
	}
	if _, done := pod.Annotations[InjectedAnnotation]; done {
		return pod, false, nil
	}
	if cfg.excluded(pod.Namespace) {
		return pod, false, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, ErrExcluded)
	}
	if hasSidecarContainer(&pod.Spec) {
		// Injected before (the annotation was lost, e.g. by a tool that
		// rewrote the pod), or by hand: left as it is.
		return pod, false, nil
	}
	if reason := NotInjectable(pod); reason != "" {
		if pod.Annotations[NotInjectedAnnotation] == reason {
			return pod, false, nil
		}
		out := pod.DeepCopy()
		if out.Annotations == nil {
			out.Annotations = map[string]string{}
		}
		out.Annotations[NotInjectedAnnotation] = reason
		return out, true, nil
	}
	if cfg.Image == "" {
		return pod, false, errors.New("no sidecar image configured")
	}
	args, listen, err := sidecarArgs(pod.Annotations)
	if err != nil {
		return pod, false, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if err := checkNames(&pod.Spec); err != nil {
		return pod, false, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	workers, err := workerContainers(&pod.Spec, pod.Annotations)
	if err != nil {
		return pod, false, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	uid := cfg.RunAsUser
	if _, ok := pod.Annotations[SignalAnnotation]; ok {
		if uid, err = workersUser(&pod.Spec); err != nil {
			return pod, false, fmt.Errorf("pod %s/%s: annotation %s: %w", pod.Namespace, pod.Name, SignalAnnotation, err)
		}
	}
	res, err := podResources(cfg.Resources, pod.Annotations)
	if err != nil {
		return pod, false, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	cfg.Resources = res

	out := pod.DeepCopy()
	spec := &out.Spec
	spec.Volumes = append(spec.Volumes, corev1.Volume{
		Name: VolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium:    corev1.StorageMediumMemory,
			SizeLimit: ptrTo(resource.MustParse("32Mi")),
		}},
	})
	if _, ok := pod.Annotations[SignalAnnotation]; ok {
		spec.ShareProcessNamespace = ptrTo(true)
	}
	prestop := []string{MountPath + "/sidecar", "prestop"}
	if listen != "" {
		prestop = append(prestop, "--addr="+listen)
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if !mounts(c, MountPath) {
			// Read-only: only the sidecar writes there (the state files and
			// the binary every container's preStop runs), so no container
			// can replace what the others run.
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: VolumeName, MountPath: MountPath, ReadOnly: true})
		}
		if !workers[c.Name] {
			continue
		}
		if c.Lifecycle == nil {
			c.Lifecycle = &corev1.Lifecycle{}
		}
		if c.Lifecycle.PreStop == nil {
			c.Lifecycle.PreStop = &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: slices.Clone(prestop)}}
		}
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		args = append(args, "--prestop-timeout="+prestopTimeout(*g))
	}
	for _, name := range cfg.ImagePullSecrets {
		if !slices.ContainsFunc(spec.ImagePullSecrets, func(r corev1.LocalObjectReference) bool { return r.Name == name }) {
			spec.ImagePullSecrets = append(spec.ImagePullSecrets, corev1.LocalObjectReference{Name: name})
		}
	}
	sc := cfg.container(args, listen, uid)
	if cfg.NativeSidecar {
		sc.RestartPolicy = ptrTo(corev1.ContainerRestartPolicyAlways)
		// First, so that it runs before the other init containers and
		// stays up until the workers have stopped.
		spec.InitContainers = append([]corev1.Container{sc}, spec.InitContainers...)
	} else {
		spec.Containers = append(spec.Containers, sc)
	}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[InjectedAnnotation] = "true"
	out.Annotations[SidecarImageAnnotation] = cfg.Image
	return out, true, nil
}

// NotInjectable returns why pod cannot have the sidecar, or "" when it can.
// A hostNetwork pod's IP is the node's: the agent cannot tell its sidecar
// from any other process on the node (which could report it done or read
// its state), and its workers' API would take the node's loopback port, so
// two such pods would collide. A Windows pod cannot run the Linux sidecar.
// Istio and Linkerd skip both for the same reasons.
func NotInjectable(pod *corev1.Pod) string {
	switch {
	case pod.Spec.HostNetwork:
		return "hostNetwork: the pod shares the node's network, where its sidecar could not be told from other processes on the node"
	case pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows,
		pod.Spec.NodeSelector["kubernetes.io/os"] == "windows":
		return "windows: the sidecar runs on Linux only"
	}
	return ""
}

// hasSidecarContainer reports whether spec already has a container named
// ContainerName.
func hasSidecarContainer(spec *corev1.PodSpec) bool {
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			if c.Name == ContainerName {
				return true
			}
		}
	}
	return false
}

// knownProxies are the containers of service meshes, which get no preStop
// hook unless ContainersAnnotation names them: they must keep serving while
// the workers finish.
var knownProxies = []string{"istio-proxy", "linkerd-proxy"}

// workerContainers returns the names of the containers that get the
// preStop hook: those ContainersAnnotation lists (comma-separated, each
// must exist), else every container but the known proxies.
func workerContainers(spec *corev1.PodSpec, ann map[string]string) (map[string]bool, error) {
	out := map[string]bool{}
	list, ok := ann[ContainersAnnotation]
	if !ok {
		for _, c := range spec.Containers {
			if !slices.Contains(knownProxies, c.Name) {
				out[c.Name] = true
			}
		}
		return out, nil
	}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if !slices.ContainsFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == name }) {
			return nil, fmt.Errorf("annotation %s=%q: the pod has no container %q", ContainersAnnotation, list, name)
		}
		out[name] = true
	}
	return out, nil
}

// sidecarArgs returns the sidecar's arguments for the pod's annotations,
// and the workers' API address when the annotations move it.
func sidecarArgs(ann map[string]string) (args []string, listen string, err error) {
	args = []string{"--dir=" + MountPath}
	if sig, ok := ann[SignalAnnotation]; ok {
		name := strings.TrimPrefix(strings.ToUpper(sig), "SIG")
		if !slices.Contains(strings.Fields(signalNames), name) {
			return nil, "", fmt.Errorf("annotation %s=%q: want one of %s", SignalAnnotation, sig, signalNames)
		}
		args = append(args, "--signal="+name)
	}
	if proc, ok := ann[SignalProcessAnnotation]; ok {
		if _, sig := ann[SignalAnnotation]; !sig {
			return nil, "", fmt.Errorf("annotation %s needs %s", SignalProcessAnnotation, SignalAnnotation)
		}
		if proc == "" || strings.ContainsAny(proc, "/\x00") {
			return nil, "", fmt.Errorf("annotation %s=%q: want a process name", SignalProcessAnnotation, proc)
		}
		args = append(args, "--signal-process="+proc)
	}
	if p, ok := ann[PortAnnotation]; ok {
		port, err := strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return nil, "", fmt.Errorf("annotation %s=%q: want a port number", PortAnnotation, p)
		}
		listen = "127.0.0.1:" + strconv.Itoa(port)
		args = append(args, "--listen="+listen)
	}
	return args, listen, nil
}

// prestopTimeout returns the sidecar's --prestop-timeout for a pod's
// termination grace period: 5 s less, which leaves the workers time to stop
// after the hook returns (25 s of the default 30 s), or half of a grace
// period of 10 s or less.
func prestopTimeout(grace int64) string {
	t := grace - 5
	if grace <= 10 {
		t = grace / 2
	}
	return strconv.FormatInt(max(t, 1), 10) + "s"
}

// checkNames refuses a pod that already has a container or volume of the
// names the injector adds.
func checkNames(spec *corev1.PodSpec) error {
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			if c.Name == ContainerName {
				return fmt.Errorf("a container is already named %q", ContainerName)
			}
		}
	}
	for _, v := range spec.Volumes {
		if v.Name == VolumeName {
			return fmt.Errorf("a volume is already named %q", VolumeName)
		}
	}
	return nil
}

// workersUser returns the one user the pod's containers run as, for a
// sidecar that signals them: without CAP_KILL, which the sidecar does not
// have, a process may signal only processes of its own user. The user must
// be set in the pod (securityContext.runAsUser of the pod or of every
// container): the injector cannot read it from the images.
func workersUser(spec *corev1.PodSpec) (int64, error) {
	var uid *int64
	for _, c := range spec.Containers {
		var u *int64
		if c.SecurityContext != nil {
			u = c.SecurityContext.RunAsUser
		}
		if u == nil && spec.SecurityContext != nil {
			u = spec.SecurityContext.RunAsUser
		}
		switch {
		case u == nil:
			return 0, fmt.Errorf("container %s has no runAsUser: set the workers' user (pod or container securityContext.runAsUser), so that the sidecar can run as that user and signal them", c.Name)
		case uid != nil && *uid != *u:
			return 0, fmt.Errorf("containers run as users %d and %d: the sidecar can signal only one user's processes", *uid, *u)
		}
		uid = u
	}
	if uid == nil || *uid == 0 {
		return 0, errors.New("the workers run as root: the sidecar does not; run them as another user to have them signalled")
	}
	return *uid, nil
}

// mounts reports whether c mounts something at path.
func mounts(c *corev1.Container, path string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return strings.TrimSuffix(m.MountPath, "/") == path
	})
}

// wanted reports whether pod asked for the sidecar.
func (cfg Config) wanted(pod *corev1.Pod) bool {
	v, ok := pod.Labels[InjectLabel]
	if cfg.NamespaceOptIn {
		return !ok || v != InjectDisabled
	}
	return v == InjectEnabled
}

// podResources returns base with the pod's resource annotations applied.
func podResources(base corev1.ResourceRequirements, ann map[string]string) (corev1.ResourceRequirements, error) {
	out := *base.DeepCopy()
	for _, a := range []struct {
		key  string
		list *corev1.ResourceList
		name corev1.ResourceName
	}{
		{CPURequestAnnotation, &out.Requests, corev1.ResourceCPU},
		{MemoryRequestAnnotation, &out.Requests, corev1.ResourceMemory},
		{CPULimitAnnotation, &out.Limits, corev1.ResourceCPU},
		{MemoryLimitAnnotation, &out.Limits, corev1.ResourceMemory},
	} {
		v, ok := ann[a.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() <= 0 {
			return out, fmt.Errorf("annotation %s=%q: want a positive quantity such as 20m or 48Mi", a.key, v)
		}
		if *a.list == nil {
			*a.list = corev1.ResourceList{}
		}
		(*a.list)[a.name] = q
	}
	for name, req := range out.Requests {
		if lim, ok := out.Limits[name]; ok && req.Cmp(lim) > 0 {
			return out, fmt.Errorf("sidecar %s request %s is above its limit %s", name, req.String(), lim.String())
		}
	}
	return out, nil
}

// container returns the sidecar container with args, running as uid (0:
// the configured user); listen is the workers' API address when the pod
// moves it.
func (cfg Config) container(args []string, listen string, uid int64) corev1.Container {
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("POD_IP", "status.podIP"),
		fieldEnv("HOST_IP", "status.hostIP"),
	}
	if cfg.AgentPort != 0 && cfg.AgentPort != DefaultAgentPort {
		// The sidecar's own default is http://$HOST_IP:10574.
		env = append(env, corev1.EnvVar{Name: "LASTCALL_AGENT", Value: "http://$(HOST_IP):" + strconv.Itoa(cfg.AgentPort)})
	}
	return corev1.Container{
		Name:            ContainerName,
		Image:           cfg.Image,
		Command:         slices.Clone(cfg.Command),
		Args:            args,
		ImagePullPolicy: cfg.PullPolicy,
		Env:             env,
		VolumeMounts:    []corev1.VolumeMount{{Name: VolumeName, MountPath: MountPath}},
		Resources:       *cfg.Resources.DeepCopy(),
		StartupProbe:    cfg.startupProbe(listen),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptrTo(true),
			RunAsUser:                runAsUser(uid),
			AllowPrivilegeEscalation: ptrTo(false),
			ReadOnlyRootFilesystem:   ptrTo(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// startupProbe returns the native sidecar's startup probe: "sidecar probe"
// asks its workers' API for /healthz. The kubelet starts the pod's next
// containers, the workers, only once a native sidecar's startup probe has
// passed: workers find the API up from their first line. None for a plain
// container (no order to keep) or without a known sidecar command.
func (cfg Config) startupProbe(listen string) *corev1.Probe {
	if !cfg.NativeSidecar || len(cfg.Command) == 0 {
		return nil
	}
	cmd := []string{cfg.Command[0], "probe"}
	if listen != "" {
		cmd = append(cmd, "--addr="+listen)
	}
	return &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: cmd}},
		PeriodSeconds: 1, TimeoutSeconds: 1, FailureThreshold: 60,
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// runAsUser returns uid, or nil (the image's user) for 0: the sidecar never
// runs as root.
func runAsUser(uid int64) *int64 {
	if uid <= 0 {
		return nil
	}
	return &uid
}

func ptrTo[T any](v T) *T { return &v }

package injector

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const testImage = "ghcr.io/lastcall-dev/lastcall:test"

func testConfig() Config { return DefaultConfig(testImage, "lastcall") }

// workerPod returns a labelled pod with one worker container.
func workerPod(opts ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "jobs", Name: "worker",
			Labels: map[string]string{InjectLabel: InjectEnabled, "app": "worker"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "worker", Image: "worker:1"}}},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func annotate(kv ...string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Annotations[kv[i]] = kv[i+1]
		}
	}
}

// sidecar returns the injected sidecar container and whether it is native.
func sidecar(t *testing.T, p *corev1.Pod) (corev1.Container, bool) {
	t.Helper()
	for _, c := range p.Spec.InitContainers {
		if c.Name == ContainerName {
			return c, true
		}
	}
	for _, c := range p.Spec.Containers {
		if c.Name == ContainerName {
			return c, false
		}
	}
	t.Fatalf("no sidecar in %+v", p.Spec)
	return corev1.Container{}, false
}

func TestInject(t *testing.T) {
	ownPreStop := &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/quiesce"}}}
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		cfg     func(*Config)
		changed bool
		err     string
		check   func(t *testing.T, in, out *corev1.Pod)
	}{
		{
			name:    "labelled pod gets the native sidecar",
			pod:     workerPod(func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m:1"}} }),
			changed: true,
			check: func(t *testing.T, in, out *corev1.Pod) {
				c, native := sidecar(t, out)
				if !native || out.Spec.InitContainers[0].Name != ContainerName || out.Spec.InitContainers[1].Name != "migrate" {
					t.Errorf("init containers %v: want the sidecar first, then migrate", names(out.Spec.InitContainers))
				}
				if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
					t.Errorf("sidecar restartPolicy %v, want Always", c.RestartPolicy)
				}
				if c.Image != testImage || !slices.Equal(c.Command, []string{"/usr/local/bin/sidecar"}) || !slices.Equal(c.Args, []string{"--dir=/lastcall"}) {
					t.Errorf("sidecar image %q command %q args %q", c.Image, c.Command, c.Args)
				}
				env := map[string]string{}
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
						env[e.Name] = e.ValueFrom.FieldRef.FieldPath
					} else {
						env[e.Name] = "=" + e.Value
					}
				}
				want := map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP", "HOST_IP": "status.hostIP"}
				if !reflect.DeepEqual(env, want) {
					t.Errorf("sidecar env %v, want %v", env, want)
				}
				if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != MountPath {
					t.Errorf("sidecar mounts %+v", c.VolumeMounts)
				}
				if got := c.Resources.Requests.Cpu().String() + " " + c.Resources.Requests.Memory().String() + " " + c.Resources.Limits.Memory().String(); got != "5m 16Mi 32Mi" {
					t.Errorf("sidecar resources %s, want requests 5m 16Mi, limit 32Mi", got)
				}
				if c.Resources.Limits.Cpu().Sign() != 0 {
					t.Errorf("sidecar has a CPU limit")
				}
				sc := c.SecurityContext
				if sc == nil || !*sc.RunAsNonRoot || *sc.RunAsUser != 65532 || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem ||
					!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
					t.Errorf("sidecar securityContext %+v", sc)
				}
				if len(out.Spec.Volumes) != 1 || out.Spec.Volumes[0].EmptyDir == nil || out.Spec.Volumes[0].Name != VolumeName {
					t.Errorf("volumes %+v, want one emptyDir", out.Spec.Volumes)
				}
				w := out.Spec.Containers[0]
				if !mounts(&w, MountPath) || !w.VolumeMounts[len(w.VolumeMounts)-1].ReadOnly {
					t.Errorf("worker mounts %+v lack %s read-only", w.VolumeMounts, MountPath)
				}
				if w.Lifecycle == nil || w.Lifecycle.PreStop == nil || w.Lifecycle.PreStop.Exec == nil ||
					!slices.Equal(w.Lifecycle.PreStop.Exec.Command, []string{"/lastcall/sidecar", "prestop"}) {
					t.Errorf("worker lifecycle %+v, want exec preStop /lastcall/sidecar prestop", w.Lifecycle)
				}
				if out.Annotations[InjectedAnnotation] != "true" {
					t.Errorf("annotations %v lack the marker", out.Annotations)
				}
				if out.Spec.ShareProcessNamespace != nil {
					t.Errorf("shareProcessNamespace set without a signal")
				}
				if in.Annotations != nil || len(in.Spec.Volumes) != 0 || in.Spec.Containers[0].Lifecycle != nil {
					t.Errorf("Inject modified its input: %+v", in)
				}
			},
		},
		{
			name: "every worker mounted, an existing preStop kept",
			pod: workerPod(func(p *corev1.Pod) {
				p.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: ownPreStop}
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "helper", Image: "h:1"})
			}),
			changed: true,
			check: func(t *testing.T, _, out *corev1.Pod) {
				if got := out.Spec.Containers[0].Lifecycle.PreStop; !reflect.DeepEqual(got, ownPreStop) {
					t.Errorf("worker preStop %+v, want its own kept", got)
				}
				if got := out.Spec.Containers[1].Lifecycle.PreStop.Exec.Command; !slices.Equal(got, []string{"/lastcall/sidecar", "prestop"}) {
					t.Errorf("helper preStop %q", got)
				}
				for _, c := range out.Spec.Containers {
					if !mounts(&c, MountPath) {
						t.Errorf("container %s does not mount %s", c.Name, MountPath)
					}
				}
			},
		},
		{
			name: "re-injection is a no-op",
			pod:  workerPod(annotate(InjectedAnnotation, "true")),
		},
		{
			name: "unlabelled pod untouched",
			pod:  workerPod(func(p *corev1.Pod) { delete(p.Labels, InjectLabel) }),
		},
		{
			name: "label with another value untouched",
			pod:  workerPod(func(p *corev1.Pod) { p.Labels[InjectLabel] = "disabled" }),
		},
		{
			name: "kube-system refused",
			pod:  workerPod(func(p *corev1.Pod) { p.Namespace = "kube-system" }),
			err:  "namespace excluded",
		},
		{
			name: "own namespace refused",
			pod:  workerPod(func(p *corev1.Pod) { p.Namespace = "lastcall" }),
			err:  "namespace excluded",
		},
		{
			name: "signal annotations become flags and shareProcessNamespace; the sidecar runs as the workers' user",
			pod: workerPod(annotate(SignalAnnotation, "sigtstp", SignalProcessAnnotation, "sidekiq", PortAnnotation, "9200"),
				func(p *corev1.Pod) {
					p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptrTo(int64(1000))}
				}),
			changed: true,
			check: func(t *testing.T, _, out *corev1.Pod) {
				c, _ := sidecar(t, out)
				if u := c.SecurityContext.RunAsUser; u == nil || *u != 1000 {
					t.Errorf("sidecar runs as %v, want the workers' 1000", u)
				}
				want := []string{"--dir=/lastcall", "--signal=TSTP", "--signal-process=sidekiq", "--listen=127.0.0.1:9200"}
				if !slices.Equal(c.Args, want) {
					t.Errorf("args %q, want %q", c.Args, want)
				}
				if p := out.Spec.ShareProcessNamespace; p == nil || !*p {
					t.Errorf("shareProcessNamespace %v, want true", p)
				}
				if got := out.Spec.Containers[0].Lifecycle.PreStop.Exec.Command; !slices.Equal(got, []string{"/lastcall/sidecar", "prestop", "--addr=127.0.0.1:9200"}) {
					t.Errorf("preStop %q", got)
				}
			},
		},
		{
			name:    "fallback plain container",
			pod:     workerPod(),
			cfg:     func(c *Config) { c.NativeSidecar = false; c.AgentPort = 9200 },
			changed: true,
			check: func(t *testing.T, _, out *corev1.Pod) {
				c, native := sidecar(t, out)
				if native || c.RestartPolicy != nil || len(out.Spec.Containers) != 2 || len(out.Spec.InitContainers) != 0 {
					t.Errorf("containers %v, init containers %v: want the sidecar as a plain container", names(out.Spec.Containers), names(out.Spec.InitContainers))
				}
				i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "LASTCALL_AGENT" })
				if i < 0 || c.Env[i].Value != "http://$(HOST_IP):9200" {
					t.Errorf("env %+v: want LASTCALL_AGENT=http://$(HOST_IP):9200", c.Env)
				}
			},
		},
		{
			name: "prestop timeout follows the grace period",
			pod: workerPod(func(p *corev1.Pod) {
				g := int64(120)
				p.Spec.TerminationGracePeriodSeconds = &g
			}),
			changed: true,
			check: func(t *testing.T, _, out *corev1.Pod) {
				c, _ := sidecar(t, out)
				if !slices.Contains(c.Args, "--prestop-timeout=115s") {
					t.Errorf("args %q lack --prestop-timeout=115s", c.Args)
				}
			},
		},
		{
			name: "signal without the workers' user refused",
			pod:  workerPod(annotate(SignalAnnotation, "TSTP")),
			err:  "container worker has no runAsUser",
		},
		{
			name: "signal to workers of two users refused",
			pod: workerPod(annotate(SignalAnnotation, "TSTP"), func(p *corev1.Pod) {
				p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptrTo(int64(1000))}
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "other", Image: "o:1",
					SecurityContext: &corev1.SecurityContext{RunAsUser: ptrTo(int64(2000))}})
			}),
			err: "users 1000 and 2000",
		},
		{
			name: "signal to root workers refused",
			pod: workerPod(annotate(SignalAnnotation, "TSTP"), func(p *corev1.Pod) {
				p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptrTo(int64(0))}
			}),
			err: "run as root",
		},
		{
			name: "unknown signal refused",
			pod:  workerPod(annotate(SignalAnnotation, "KILL")),
			err:  "lastcall.dev/signal",
		},
		{
			name: "signal-process without signal refused",
			pod:  workerPod(annotate(SignalProcessAnnotation, "sidekiq")),
			err:  "needs lastcall.dev/signal",
		},
		{
			name: "bad port refused",
			pod:  workerPod(annotate(PortAnnotation, "70000")),
			err:  "lastcall.dev/port",
		},
		{
			name: "name clash refused",
			pod: workerPod(func(p *corev1.Pod) {
				p.Spec.Volumes = []corev1.Volume{{Name: VolumeName}}
			}),
			err: "already named",
		},
		{
			name: "sidecar there, injected annotation lost: left alone",
			pod: workerPod(func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: ContainerName, Image: testImage}}
				p.Spec.Volumes = []corev1.Volume{{Name: VolumeName}}
			}),
		},
		{
			name:    "hostNetwork pod: not injected, says why",
			pod:     workerPod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
			changed: true,
			check: func(t *testing.T, in, out *corev1.Pod) {
				if !reflect.DeepEqual(in.Spec, out.Spec) || !strings.HasPrefix(out.Annotations[NotInjectedAnnotation], "hostNetwork") || out.Annotations[InjectedAnnotation] != "" {
					t.Errorf("spec changed %v, annotations %v: want only %s", !reflect.DeepEqual(in.Spec, out.Spec), out.Annotations, NotInjectedAnnotation)
				}
			},
		},
		{
			name:    "Windows pod: not injected, says why",
			pod:     workerPod(func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }),
			changed: true,
			check: func(t *testing.T, in, out *corev1.Pod) {
				if !reflect.DeepEqual(in.Spec, out.Spec) || !strings.HasPrefix(out.Annotations[NotInjectedAnnotation], "windows") {
					t.Errorf("spec changed %v, annotations %v: want only %s", !reflect.DeepEqual(in.Spec, out.Spec), out.Annotations, NotInjectedAnnotation)
				}
			},
		},
		{
			name: "istio-proxy gets no preStop; the sidecar image is recorded",
			pod: workerPod(func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy", Image: "proxy:1"})
			}),
			changed: true,
			check: func(t *testing.T, in, out *corev1.Pod) {
				if out.Spec.Containers[0].Lifecycle == nil || out.Spec.Containers[1].Lifecycle != nil {
					t.Errorf("lifecycles %+v, %+v: want the worker's hook only", out.Spec.Containers[0].Lifecycle, out.Spec.Containers[1].Lifecycle)
				}
				if out.Annotations[SidecarImageAnnotation] != testImage {
					t.Errorf("annotation %s = %q, want %q", SidecarImageAnnotation, out.Annotations[SidecarImageAnnotation], testImage)
				}
			},
		},
		{
			name: "lastcall.dev/containers names the workers",
			pod: workerPod(annotate(ContainersAnnotation, "worker"), func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "cache", Image: "redis:7"})
			}),
			changed: true,
			check: func(t *testing.T, in, out *corev1.Pod) {
				if out.Spec.Containers[0].Lifecycle == nil || out.Spec.Containers[1].Lifecycle != nil {
					t.Errorf("the preStop hook on %v: want on worker only", out.Spec.Containers)
				}
			},
		},
		{
			name: "lastcall.dev/containers naming no container refused",
			pod:  workerPod(annotate(ContainersAnnotation, "worker, nope")),
			err:  `no container "nope"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			in := tc.pod.DeepCopy()
			out, changed, err := Inject(tc.pod, cfg)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one about %q", err, tc.err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if changed != tc.changed {
				t.Fatalf("changed %v, want %v", changed, tc.changed)
			}
			if !reflect.DeepEqual(tc.pod, in) {
				t.Errorf("Inject modified its input")
			}
			if !changed {
				if out != tc.pod {
					t.Errorf("unchanged pod: Inject returned another pod")
				}
				return
			}
			if tc.check != nil {
				tc.check(t, tc.pod, out)
			}
			again, changed, err := Inject(out, cfg)
			if err != nil || changed || again != out {
				t.Errorf("second Inject: changed %v err %v, want a no-op", changed, err)
			}
		})
	}
}

func TestInjectExcludedIsErrExcluded(t *testing.T) {
	_, _, err := Inject(workerPod(func(p *corev1.Pod) { p.Namespace = "kube-system" }), testConfig())
	if !errors.Is(err, ErrExcluded) {
		t.Errorf("err %v, want ErrExcluded", err)
	}
}

func TestPrestopTimeout(t *testing.T) {
	for grace, want := range map[int64]string{0: "1s", 1: "1s", 4: "2s", 10: "5s", 11: "6s", 30: "25s", 120: "115s"} {
		if got := prestopTimeout(grace); got != want {
			t.Errorf("grace %d s: %s, want %s", grace, got, want)
		}
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// TestInjectUX covers what teams coming from Istio or Linkerd expect: a
// namespace-wide opt-in with a per-pod opt-out, per-pod sidecar resources,
// image pull secrets carried to the pod, and a startup probe that holds the
// workers until the sidecar answers.
func TestInjectUX(t *testing.T) {
	nsCfg := testConfig()
	nsCfg.NamespaceOptIn = true
	unlabelled := workerPod(func(p *corev1.Pod) { delete(p.Labels, InjectLabel) })
	optedOut := workerPod(func(p *corev1.Pod) { p.Labels[InjectLabel] = InjectDisabled })
	for _, tc := range []struct {
		name string
		cfg  Config
		pod  *corev1.Pod
		want bool
	}{
		{"namespace opt-in, pod unlabelled", nsCfg, unlabelled, true},
		{"namespace opt-in, pod labelled", nsCfg, workerPod(), true},
		{"namespace opt-in, pod opted out", nsCfg, optedOut, false},
		{"no namespace opt-in, pod unlabelled", testConfig(), unlabelled, false},
		{"no namespace opt-in, pod opted out", testConfig(), optedOut, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, changed, err := Inject(tc.pod, tc.cfg)
			if err != nil || changed != tc.want {
				t.Errorf("Inject = %v, %v; want %v", changed, err, tc.want)
			}
		})
	}

	t.Run("resources by annotation", func(t *testing.T) {
		out, _, err := Inject(workerPod(annotate(CPURequestAnnotation, "50m", MemoryLimitAnnotation, "64Mi")), testConfig())
		if err != nil {
			t.Fatal(err)
		}
		c, _ := sidecar(t, out)
		if c.Resources.Requests.Cpu().String() != "50m" || c.Resources.Limits.Memory().String() != "64Mi" ||
			c.Resources.Requests.Memory().String() != "16Mi" {
			t.Errorf("resources %v: want cpu request 50m and memory limit 64Mi from the annotations, the rest default", c.Resources)
		}
		for _, bad := range []struct{ key, value, want string }{
			{CPURequestAnnotation, "lots", CPURequestAnnotation},
			{MemoryLimitAnnotation, "-1Mi", MemoryLimitAnnotation},
			{MemoryRequestAnnotation, "128Mi", "memory request 128Mi is above its limit 32Mi"},
		} {
			if _, _, err := Inject(workerPod(annotate(bad.key, bad.value)), testConfig()); err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("annotation %s=%s: err %v, want a refusal saying %q", bad.key, bad.value, err, bad.want)
			}
		}
	})

	t.Run("image pull secrets", func(t *testing.T) {
		cfg := testConfig()
		cfg.ImagePullSecrets = []string{"lastcall-registry", "shared"}
		out, _, err := Inject(workerPod(func(p *corev1.Pod) {
			p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "shared"}}
		}), cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := []string{}
		for _, r := range out.Spec.ImagePullSecrets {
			got = append(got, r.Name)
		}
		if !slices.Equal(got, []string{"shared", "lastcall-registry"}) {
			t.Errorf("imagePullSecrets %v, want the pod's own, then the missing one", got)
		}
	})

	t.Run("startup probe", func(t *testing.T) {
		out, _, err := Inject(workerPod(annotate(PortAnnotation, "9200")), testConfig())
		if err != nil {
			t.Fatal(err)
		}
		c, native := sidecar(t, out)
		p := c.StartupProbe
		if !native || p == nil || p.Exec == nil ||
			!slices.Equal(p.Exec.Command, []string{"/usr/local/bin/sidecar", "probe", "--addr=127.0.0.1:9200"}) {
			t.Errorf("native sidecar's startup probe %+v: want sidecar probe on the moved API", p)
		}
		plain := testConfig()
		plain.NativeSidecar = false
		out, _, _ = Inject(workerPod(), plain)
		if c, _ := sidecar(t, out); c.StartupProbe != nil {
			t.Error("a plain sidecar container got a startup probe: it orders nothing")
		}
	})
}

// TestInjectPlatformUser: with no user configured (OpenShift assigns one
// per namespace) the sidecar sets none, and still refuses to run as root.
func TestInjectPlatformUser(t *testing.T) {
	cfg := testConfig()
	cfg.RunAsUser = 0
	out, _, err := Inject(workerPod(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := sidecar(t, out)
	if sc := c.SecurityContext; sc.RunAsUser != nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("securityContext %+v: want no user and runAsNonRoot", sc)
	}
}

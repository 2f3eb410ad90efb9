package kubetest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Env is a running control plane: etcd, kube-apiserver and
// kube-controller-manager (disruption controller only).
type Env struct {
	// Config reaches the apiserver as a cluster admin, with no client-side
	// rate limit.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Dir holds the control plane's kubeconfig and logs.
	Dir string

	env     *envtest.Environment
	kcm     *exec.Cmd
	kcmDone chan struct{} // closed when kcm has exited
	kcmExit error         // kcm's exit status, set before kcmDone closes
	seq     atomic.Int64
}

// AssetsDir returns the directory holding etcd, kube-apiserver and
// kube-controller-manager: KUBEBUILDER_ASSETS when set, else .testbin/ at the
// root of the module that contains the working directory.
func AssetsDir() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".testbin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Start starts the control plane and waits until the apiserver serves. The
// caller must Stop it. Missing binaries are an error that says to run
// `make testbin`; so is an apiserver of another version than
// LASTCALL_KUBE_VERSION (e.g. v1.30.14), when set.
func Start(ctx context.Context) (*Env, error) {
	assets, err := AssetsDir()
	if err != nil {
		return nil, fmt.Errorf("find control-plane binaries: %w", err)
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return nil, fmt.Errorf("control-plane binary %s missing in %s (run make testbin): %w", bin, assets, err)
		}
	}
	dir, err := os.MkdirTemp("", "lastcall-kubetest-")
	if err != nil {
		return nil, err
	}
	te := &envtest.Environment{BinaryAssetsDirectory: assets}
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	te.ControlPlane.GetAPIServer().Configure().
		Set("audit-policy-file", policy).
		Set("audit-log-path", filepath.Join(dir, "audit.log")).
		Set("audit-log-mode", "blocking")
	cfg, err := te.Start()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start etcd and kube-apiserver: %w", err)
	}
	e := &Env{Config: Unlimited(cfg), Dir: dir, env: te}
	if e.Client, err = kubernetes.NewForConfig(e.Config); err != nil {
		_ = e.Stop()
		return nil, err
	}
	if want := os.Getenv("LASTCALL_KUBE_VERSION"); want != "" {
		v, err := e.Client.Discovery().ServerVersion()
		if err != nil {
			_ = e.Stop()
			return nil, fmt.Errorf("apiserver version: %w", err)
		}
		if v.GitVersion != want {
			_ = e.Stop()
			return nil, fmt.Errorf("kube-apiserver in %s is %s, LASTCALL_KUBE_VERSION wants %s", assets, v.GitVersion, want)
		}
	}
	if err := e.startControllerManager(ctx, assets); err != nil {
		_ = e.Stop()
		return nil, err
	}
	return e, nil
}

// Unlimited returns a copy of cfg with client-side rate limiting turned off.
func Unlimited(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.QPS = -1
	c.Burst = -1
	return c
}

func (e *Env) startControllerManager(ctx context.Context, assets string) error {
	user, err := e.env.AddUser(envtest.User{Name: "kube-controller-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("add controller-manager user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	path := filepath.Join(e.Dir, "kcm.kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(e.Dir, "kube-controller-manager.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+path,
		"--controllers=disruption",
		"--leader-elect=false",
		"--secure-port=0",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start kube-controller-manager: %w", err)
	}
	e.kcm = cmd
	e.kcmDone = make(chan struct{})
	go func() {
		e.kcmExit = cmd.Wait()
		logf.Close()
		close(e.kcmDone)
	}()
	// The disruption controller is ready once it has computed the status of
	// a budget; probe with one in a namespace of its own.
	probeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ns, err := e.CreateNamespace(probeCtx, "kcm-probe")
	if err != nil {
		return err
	}
	pdb, err := e.Client.PolicyV1().PodDisruptionBudgets(ns).Create(probeCtx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "probe"},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: ptrTo(intstr.FromInt32(1)),
			Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{"probe": "true"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create probe budget: %w", err)
	}
	err = wait.PollUntilContextCancel(probeCtx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case <-e.kcmDone:
			return false, fmt.Errorf("kube-controller-manager exited: %v", e.kcmExit)
		default:
		}
		got, err := e.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, pdb.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return got.Status.ObservedGeneration >= got.Generation, nil
	})
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(e.Dir, "kube-controller-manager.log"))
		if len(log) > 4000 {
			log = log[len(log)-4000:]
		}
		return fmt.Errorf("wait for the disruption controller: %w; controller-manager log ends:\n%s", err, log)
	}
	return nil
}

// Stop stops the controller manager, the apiserver and etcd, and removes the
// working directory.
func (e *Env) Stop() error {
	var errs []error
	if e.kcm != nil && e.kcm.Process != nil {
		_ = e.kcm.Process.Signal(os.Interrupt)
		select {
		case <-e.kcmDone:
		case <-time.After(10 * time.Second):
			_ = e.kcm.Process.Kill()
			<-e.kcmDone
		}
	}
	if e.env != nil {
		if err := e.env.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop control plane: %w", err))
		}
	}
	if e.Dir != "" {
		errs = append(errs, os.RemoveAll(e.Dir))
	}
	return errors.Join(errs...)
}

// Main runs the tests of a package against one control plane shared by all
// of them; call it from TestMain and pass its result to os.Exit. Under -short
// no control plane is started and *env stays nil: tests that need it must
// call Need, which skips them only in -short mode.
func Main(m *testing.M, env **Env) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	e, err := Start(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubetest:", err)
		return 1
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "kubetest:", err)
	}
	return code
}

// Need skips the test in -short mode, and fails it when the control plane
// is missing otherwise.
func Need(t testing.TB, env *Env) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the control plane; skipped in -short mode")
	}
	if env == nil {
		t.Fatal("control plane not started: call kubetest.Main from TestMain")
	}
	return env
}

// CreateNamespace creates a namespace named prefix plus a sequence number,
// unique within this Env, and returns its name.
func (e *Env) CreateNamespace(ctx context.Context, prefix string) (string, error) {
	name := fmt.Sprintf("%s-%d", prefix, e.seq.Add(1))
	_, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	return name, nil
}

// UniqueName returns prefix plus a sequence number unique within this Env.
func (e *Env) UniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, e.seq.Add(1))
}

// ControllerManagerLog copies the controller manager's log to w, for a test
// that failed and wants to say why.
func (e *Env) ControllerManagerLog(w io.Writer) error {
	f, err := os.Open(filepath.Join(e.Dir, "kube-controller-manager.log"))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

func ptrTo[T any](v T) *T { return &v }

// WriteKubeconfig writes a kubeconfig for a new user to path, for a
// process the test starts, and returns the user's name: the apiserver's
// audit log (AuditEvents) tells that process's requests apart by it, and
// RBAC bindings name it. With no groups the user is a cluster admin
// (system:masters).
func (e *Env) WriteKubeconfig(path string, groups ...string) (user string, err error) {
	user = e.UniqueName("user")
	if len(groups) == 0 {
		groups = []string{"system:masters"}
	}
	u, err := e.env.AddUser(envtest.User{Name: user, Groups: groups}, nil)
	if err != nil {
		return "", fmt.Errorf("add user: %w", err)
	}
	raw, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	return user, os.WriteFile(path, raw, 0o600)
}

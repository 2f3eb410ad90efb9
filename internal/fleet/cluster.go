package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// AgentUser is the name the agents authenticate as: the chart's
// ServiceAccount (release lastcall in namespace lastcall), so that API
// Priority and Fairness classifies their requests as a cluster's would
// (flow schema service-accounts, priority level workload-low).
const AgentUser = "system:serviceaccount:lastcall:lastcall"

// agentGroups are the groups of a ServiceAccount token.
var agentGroups = []string{"system:serviceaccounts", "system:serviceaccounts:lastcall", "system:authenticated"}

// ClusterOptions size the control plane's clients.
type ClusterOptions struct {
	// Kwok is the kwok binary.
	Kwok string
	// Dir holds kubeconfigs, configuration and logs; it must exist.
	Dir string
	// ControllerQPS is kube-controller-manager's and kube-scheduler's
	// client rate limit (burst twice that).
	ControllerQPS int
}

// Cluster is a running control plane with KWOK.
type Cluster struct {
	// Config reaches the apiserver as a cluster admin (exempt from flow
	// control), with no client-side rate limit.
	Config *rest.Config
	// Client is built from Config.
	Client kubernetes.Interface
	// AuditLog is the apiserver's audit log: the agents' requests only.
	AuditLog string

	dir   string
	env   *envtest.Environment
	procs []*proc
}

// proc is a control-plane process the cluster started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// auditPolicy records the agents' requests, and nothing else.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts:lastcall"]
- level: None
`

// StartCluster starts etcd, kube-apiserver, kube-controller-manager (the
// deployment, replicaset, daemonset, disruption and node lifecycle
// controllers),
// kube-scheduler and KWOK. The caller must Stop it.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	assets, err := kubetest.AssetsDir()
	if err != nil {
		return nil, err
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return nil, fmt.Errorf("%s missing in %s (run make nodebin): %w", bin, assets, err)
		}
	}
	if _, err := os.Stat(o.Kwok); err != nil {
		return nil, fmt.Errorf("kwok binary: %w", err)
	}
	if o.ControllerQPS <= 0 {
		o.ControllerQPS = 300
	}
	c := &Cluster{dir: o.Dir, AuditLog: filepath.Join(o.Dir, "audit.log")}
	policy := filepath.Join(o.Dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, err
	}
	c.env = &envtest.Environment{BinaryAssetsDirectory: assets}
	c.env.ControlPlane.GetAPIServer().Configure().
		Set("audit-policy-file", policy).
		Set("audit-log-path", c.AuditLog).
		Set("audit-log-mode", "batch").
		Set("audit-log-maxsize", "0")
	cfg, err := c.env.Start()
	if err != nil {
		return nil, fmt.Errorf("start etcd and kube-apiserver: %w", err)
	}
	c.Config = kubetest.Unlimited(cfg)
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		_ = c.Stop()
		return nil, err
	}
	if err := c.startControllers(ctx, assets, o); err != nil {
		_ = c.Stop()
		return nil, err
	}
	return c, nil
}

// kubeconfig writes a kubeconfig of a new client certificate for user in
// groups and returns its path.
func (c *Cluster) kubeconfig(file string, user envtest.User) (string, error) {
	u, err := c.env.AddUser(user, nil)
	if err != nil {
		return "", fmt.Errorf("add user %s: %w", user.Name, err)
	}
	raw, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(c.dir, file)
	return path, os.WriteFile(path, raw, 0o600)
}

// AgentKubeconfig writes a kubeconfig for one agent: a certificate of its
// own (so that its client does not share a connection with the others)
// for AgentUser.
func (c *Cluster) AgentKubeconfig(node string) (string, error) {
	return c.kubeconfig("agent-"+node+".kubeconfig", envtest.User{Name: AgentUser, Groups: agentGroups})
}

func (c *Cluster) startControllers(ctx context.Context, assets string, o ClusterOptions) error {
	qps, burst := strconv.Itoa(o.ControllerQPS), strconv.Itoa(2*o.ControllerQPS)
	// kube-controller-manager as system:masters: its own role does not
	// cover all controllers without per-controller service accounts.
	kcm, err := c.kubeconfig("kcm.kubeconfig", envtest.User{Name: "system:kube-controller-manager", Groups: []string{"system:masters"}})
	if err != nil {
		return err
	}
	if err := c.start(ctx, "kube-controller-manager", filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+kcm, "--controllers=deployment,replicaset,daemonset,disruption,nodelifecycle",
		"--leader-elect=false", "--secure-port=0", "--kube-api-qps="+qps, "--kube-api-burst="+burst,
		"--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20"); err != nil {
		return err
	}
	// kube-scheduler as itself: flow schema kube-scheduler, priority level
	// workload-high, the bootstrap RBAC roles.
	sched, err := c.kubeconfig("scheduler.kubeconfig", envtest.User{Name: "system:kube-scheduler"})
	if err != nil {
		return err
	}
	schedCfg := filepath.Join(c.dir, "scheduler.yaml")
	if err := os.WriteFile(schedCfg, fmt.Appendf(nil, `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %s
  qps: %s
  burst: %s
leaderElection:
  leaderElect: false
`, sched, qps, burst), 0o600); err != nil {
		return err
	}
	if err := c.start(ctx, "kube-scheduler", filepath.Join(assets, "kube-scheduler"),
		"--config="+schedCfg, "--authentication-kubeconfig="+sched, "--authorization-kubeconfig="+sched,
		"--bind-address=127.0.0.1", "--secure-port=0"); err != nil {
		return err
	}
	// KWOK plays a thousand kubelets: group system:nodes (flow schema
	// system-nodes, priority level system), with cluster-admin rights
	// since the Node authorizer is not on.
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "fleet-kwok"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "fleet:kwok"}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	kwok, err := c.kubeconfig("kwok.kubeconfig", envtest.User{Name: "kwok", Groups: []string{"system:nodes", "fleet:kwok"}})
	if err != nil {
		return err
	}
	stages := filepath.Join(c.dir, "kwok.yaml")
	if err := os.WriteFile(stages, []byte(kwokStages), 0o600); err != nil {
		return err
	}
	if err := c.start(ctx, "kwok", o.Kwok, "--kubeconfig="+kwok, "--config="+stages,
		"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--node-lease-duration-seconds=40", "--cidr=10.128.0.0/9", "--node-ip=127.0.0.1", "--server-address="); err != nil {
		return err
	}
	// The controllers are up once the disruption controller has computed
	// a budget's status (kubetest does the same).
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := c.Err(); err != nil {
			return false, err
		}
		_, err := c.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

// Err returns an error naming the first control-plane process that has
// exited, nil while all run.
func (c *Cluster) Err() error {
	for _, p := range c.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited; see %s", p.name, filepath.Join(c.dir, p.name+".log"))
		default:
		}
	}
	return nil
}

// start runs a control-plane process with its output in Dir/name.log.
func (c *Cluster) start(_ context.Context, name, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		return err
	}
	// Not exec.CommandContext: Stop ends the processes in order.
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return nil
}

// Stop ends KWOK, the scheduler, the controller manager, the apiserver and
// etcd, in that order.
func (c *Cluster) Stop() error {
	var errs []error
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if c.env != nil {
		if err := c.env.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop control plane: %w", err))
		}
	}
	return errors.Join(errs...)
}

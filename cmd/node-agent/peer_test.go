package main_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/lastcall-dev/lastcall/internal/ec2mock"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient"
)

// BenchmarkPeerAWS110 puts lastcall and aws-node-termination-handler (NTH,
// IMDS mode) side by side on the same work: one node with 110 pods, whose
// deletions a fake kubelet finishes at once, the same kube-apiserver, and
// the real amazon-ec2-metadata-mock behind a loopback proxy that counts the
// requests and hides the spot interruption notice until the benchmark shows
// it. For each, in one run: the requests a second to IMDS and the memory at
// rest, then the notice → node unschedulable, → all 110 pods gone, and the
// peak memory while draining. Memory is VmRSS and the working set that the
// kubelet would report for a container holding the process alone (see
// memCgroup). Both act as service accounts bound to cluster-admin
// (adminToken). First, the floor: the same work with no handler, the
// benchmark evicting the pods itself the moment the notice shows
// (evictAll).
//
// LASTCALL_PEER_AGENT names another build of the agent to run instead of
// this one (a before-and-after comparison). NTH's binary comes from
// LASTCALL_NTH (make bench builds it from its Go
// module); without it the benchmark fails. The variant at QPS 100 / burst
// 200 runs that binary if it has the KUBE_API_QPS setting, else the one
// LASTCALL_NTH_QPS names (make bench builds it with the setting added,
// hack/nth/qps.sh), else fails.
func BenchmarkPeerAWS110(b *testing.B) {
	nth := os.Getenv("LASTCALL_NTH")
	if nth == "" {
		b.Fatal("LASTCALL_NTH is not set: make bench builds aws-node-termination-handler and sets it")
	}
	b.Run("floor", func(b *testing.B) {
		for b.Loop() {
			runPeer(b, nil, evictAll)
		}
	})
	b.Run("lastcall", func(b *testing.B) {
		for b.Loop() {
			runPeer(b, func(b *testing.B, c *cluster, imds string, cg *memCgroup) *exec.Cmd {
				args := []string{
					"--node-name=" + c.node, "--pod-name=lastcall-agent", "--pod-namespace=" + c.ns,
					"--kubeconfig=" + adminKubeconfig(b, c, adminToken(b, c, "lastcall")), "--listen=" + freeAddr(b), "--sidecar-listen=" + freeAddr(b),
					"--log-format=text", "--cloud=aws", "--aws-imds-endpoint=" + imds,
				}
				bin := agentBin
				if other := os.Getenv("LASTCALL_PEER_AGENT"); other != "" {
					bin = other // another build of the agent, to compare
				}
				return cg.command(b, bin, args, nil, "")
			}, nil)
		}
	})
	variants := []struct {
		name string
		env  []string
	}{{"nth-defaults", nil}, {"nth-qps100", []string{"KUBE_API_QPS=100", "KUBE_API_BURST=200"}}}
	help, _ := exec.Command(nth, "--help").CombinedOutput()
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			bin := nth
			if v.env != nil && !strings.Contains(string(help), "kube-api-qps") {
				// Built with the setting added (hack/nth/qps.sh).
				if bin = os.Getenv("LASTCALL_NTH_QPS"); bin == "" {
					b.Fatal("this aws-node-termination-handler has no KUBE_API_QPS setting and LASTCALL_NTH_QPS is not set: make bench builds one with it")
				}
			}
			for b.Loop() {
				runPeer(b, func(b *testing.B, c *cluster, imds string, cg *memCgroup) *exec.Cmd {
					return cg.command(b, bin, nil, append(nthEnv(b, c, imds), v.env...), nthSecrets(b, c))
				}, nil)
			}
		})
	}
}

// runPeer runs one handler, started by launch, through the measurement.
// With launch nil no handler runs: prepare, called before the notice,
// returns what does the handler's work itself, run the moment the notice
// shows.
func runPeer(b *testing.B, launch func(*testing.B, *cluster, string, *memCgroup) *exec.Cmd, prepare func(*testing.B, *cluster) func()) {
	const settle, rest = 5 * time.Second, 15 * time.Second
	c := newClusterWith(b, 110, kubetest.KubeletOptions{FinishAtOnce: true})
	mock := ec2mock.Start(b, ec2mock.FreePort(b), "spot", "-a", "terminate")
	proxy := newIMDSProxy(b, mock.URL)
	pods := watchWorkers(b, c)
	alive := func() {}
	var cmd *exec.Cmd
	var cg *memCgroup
	if launch != nil {
		cg = newMemCgroup(b)
		cmd = launch(b, c, proxy.srv.URL, cg)
		out := &ec2mock.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		b.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
			if b.Failed() {
				b.Logf("output:\n%s", out.String())
			}
		})
		alive = func() {
			select {
			case <-done:
				b.Fatalf("the handler exited: %v\n%s", cmd.ProcessState, out.String())
			default:
			}
		}
	}
	time.Sleep(settle)
	alive()
	before, t0 := proxy.count(), time.Now()
	time.Sleep(rest)
	alive()
	reqRate := float64(proxy.count()-before) / time.Since(t0).Seconds()
	var rssRest, wsRest float64
	if cmd != nil {
		rssRest, wsRest = rssMiB(b, cmd.Process.Pid), cg.workingSetMiB(b)
		b.Logf("memory at rest: %s", rssParts(b, cmd.Process.Pid))
	}
	peakRSS, peakWS := rssRest, wsRest
	if c.node_(b).Spec.Unschedulable {
		b.Fatal("the node is unschedulable before the notice")
	}
	if n := pods.left(); n != 110 {
		b.Fatalf("%d worker pods before the notice, want 110", n)
	}
	var act func()
	if prepare != nil {
		act = prepare(b, c)
	}
	start := proxy.show()
	if act != nil {
		go act()
	}
	var cordoned time.Duration
	for {
		alive()
		if cordoned == 0 && c.node_(b).Spec.Unschedulable {
			cordoned = time.Since(start)
		}
		if cmd != nil {
			peakRSS, peakWS = max(peakRSS, rssMiB(b, cmd.Process.Pid)), max(peakWS, cg.workingSetMiB(b))
		}
		if _, ok := pods.gone(); ok {
			break
		}
		if time.Since(start) > 90*time.Second {
			b.Fatalf("not drained 90 s after the notice: %d pods left, node unschedulable %v", pods.left(), cordoned != 0)
		}
		time.Sleep(20 * time.Millisecond)
	}
	goneAt, _ := pods.gone()
	gone := goneAt.Sub(start)
	if cordoned == 0 || cordoned > gone {
		cordoned = gone // the cordon and the last deletion fell between two looks
	}
	b.ReportMetric(float64(cordoned.Milliseconds()), "ms-notice-to-cordon")
	b.ReportMetric(float64(gone.Milliseconds()), "ms-notice-to-110-gone")
	if cmd != nil {
		b.ReportMetric(rssRest, "MiB-rss-at-rest")
		b.ReportMetric(peakRSS, "MiB-rss-peak")
		b.ReportMetric(wsRest, "MiB-ws-at-rest")
		b.ReportMetric(peakWS, "MiB-ws-peak")
		b.ReportMetric(reqRate, "imds-req/s-at-rest")
	}
	b.ReportMetric(0, "ns/op")
}

// evictAll returns the handler that cannot be beaten: it knows the pods
// beforehand and, the moment the notice shows (no detection), cordons the
// node and sends every worker pod's eviction at once, with lastcall's
// client (kubeclient: protobuf) and no rate limit, as a service account
// bound to cluster-admin like the handlers (adminToken). What it measures is the apiserver's and the kubelet's own
// time to take 110 pods off the node: the floor under any handler's
// notice → all pods gone on this machine.
func evictAll(b *testing.B, c *cluster) func() {
	ctx := b.Context()
	client, err := kubeclient.NewForConfig(adminConfig(c, adminToken(b, c, "floor")))
	if err != nil {
		b.Fatal(err)
	}
	list, err := client.ListPods(ctx, c.ns, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return func() {
		_, err := client.PatchNode(ctx, c.node, types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{})
		if err != nil {
			b.Errorf("cordon: %v", err)
		}
		for _, p := range list.Items {
			if !strings.HasPrefix(p.Name, "worker-") {
				continue
			}
			go func() {
				err := client.EvictPod(ctx, &policyv1.Eviction{
					ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name},
				})
				if err != nil && ctx.Err() == nil {
					b.Errorf("evict %s: %v", p.Name, err)
				}
			}()
		}
	}
}

// workerWatch follows the worker pods of a cluster's namespace through a
// watch, and notes when the last of them is gone: the benchmark sees the
// drain end without listing 110 pods every few milliseconds, a load on the
// apiserver that would slow the very drain it measures.
type workerWatch struct {
	mu     sync.Mutex
	n      int
	goneAt time.Time
}

func watchWorkers(tb testing.TB, c *cluster) *workerWatch {
	w := &workerWatch{}
	factory := informers.NewSharedInformerFactoryWithOptions(c.env.Client, 0, informers.WithNamespace(c.ns))
	inf := factory.Core().V1().Pods().Informer()
	worker := func(obj any) bool {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		p, ok := obj.(*corev1.Pod)
		return ok && strings.HasPrefix(p.Name, "worker-")
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if worker(obj) {
				w.mu.Lock()
				w.n++
				w.mu.Unlock()
			}
		},
		DeleteFunc: func(obj any) {
			if worker(obj) {
				now := time.Now()
				w.mu.Lock()
				if w.n--; w.n == 0 {
					w.goneAt = now
				}
				w.mu.Unlock()
			}
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	tb.Cleanup(func() { cancel(); factory.Shutdown() })
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		tb.Fatal("worker pods' watch did not sync")
	}
	return w
}

// left returns how many worker pods the watch has seen and not yet seen go.
func (w *workerWatch) left() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// gone returns when the last worker pod was seen gone, if it was.
func (w *workerWatch) gone() (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.goneAt, w.n == 0 && !w.goneAt.IsZero()
}

// imdsProxy stands in front of the metadata mock: it counts every request,
// answers the spot interruption path 404 (no notice, as IMDS does) until
// show is called, the rebalance recommendation 404 (the mock's spot mode
// shows one, which lastcall would cordon for before the notice), and the
// scheduled events [] (none, as IMDS answers; the mock's spot mode answers
// 404, on which NTH at its defaults panics after four reads).
type imdsProxy struct {
	srv   *httptest.Server
	n     atomic.Int64
	shown atomic.Bool
}

func newIMDSProxy(tb testing.TB, target string) *imdsProxy {
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatal(err)
	}
	p := &imdsProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.n.Add(1)
		switch {
		case strings.HasSuffix(r.URL.Path, "/spot/instance-action") && !p.shown.Load(),
			strings.HasSuffix(r.URL.Path, "/events/recommendations/rebalance"):
			http.Error(w, "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?><title>404 - Not Found</title>", http.StatusNotFound)
			return
		case strings.HasSuffix(r.URL.Path, "/events/maintenance/scheduled") && r.Method == http.MethodGet:
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte("[]"))
			return
		}
		rp.ServeHTTP(w, r)
	}))
	tb.Cleanup(p.srv.Close)
	return p
}

func (p *imdsProxy) count() int64 { return p.n.Load() }

// show makes the spot notice visible and returns the moment it did.
func (p *imdsProxy) show() time.Time {
	t := time.Now()
	p.shown.Store(true)
	return t
}

// nthEnv is NTH's environment, its defaults otherwise: in-cluster
// configuration pointing at the test apiserver, this node, the proxy as
// its metadata service.
func nthEnv(tb testing.TB, c *cluster, imds string) []string {
	u, err := url.Parse(c.env.Config.Host)
	if err != nil {
		tb.Fatal(err)
	}
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"NODE_NAME=" + c.node, "INSTANCE_METADATA_URL=" + imds,
		"KUBERNETES_SERVICE_HOST=" + u.Hostname(), "KUBERNETES_SERVICE_PORT=" + u.Port(),
	}
}

// adminToken returns a token of a new service account named name, bound to
// cluster-admin. Every handler of the benchmark, and the floor, acts with
// such a token, as a handler in a pod does: the apiserver's flow control
// puts their requests in the same priority level (service accounts'), not
// the exempt one of system:masters.
func adminToken(tb testing.TB, c *cluster, name string) string {
	ctx := tb.Context()
	sa, err := c.env.Client.CoreV1().ServiceAccounts(c.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	_, err = c.env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: c.env.UniqueName(name)},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: c.ns, Name: sa.Name}},
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := c.env.Client.CoreV1().ServiceAccounts(c.ns).CreateToken(ctx, sa.Name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return tok.Status.Token
}

// adminConfig is the apiserver's address and CA with token, and no
// client-side rate limit.
func adminConfig(c *cluster, token string) *rest.Config {
	return &rest.Config{
		Host: c.env.Config.Host, BearerToken: token, QPS: -1, Burst: -1,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.env.Config.CAData},
	}
}

// adminKubeconfig writes a kubeconfig of adminConfig(c, token) and returns
// its path.
func adminKubeconfig(tb testing.TB, c *cluster, token string) string {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: c.env.Config.Host, CertificateAuthorityData: c.env.Config.CAData}
	kc.AuthInfos["handler"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "handler"}
	kc.CurrentContext = "test"
	path := filepath.Join(tb.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		tb.Fatal(err)
	}
	return path
}

// nthSecrets writes what a pod finds in
// /var/run/secrets/kubernetes.io/serviceaccount (a token of a service
// account bound to cluster-admin, the apiserver's CA) into a directory and
// returns it.
func nthSecrets(tb testing.TB, c *cluster) string {
	dir := tb.TempDir()
	for name, data := range map[string][]byte{"token": []byte(adminToken(tb, c, "nth")), "ca.crt": c.env.Config.CAData, "namespace": []byte(c.ns)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// memCgroup is a memory cgroup (v1) of its own for one process, so that
// its working set can be read as the kubelet reads a container's:
// memory.usage_in_bytes minus total_inactive_file (cAdvisor's
// container_memory_working_set_bytes). The binary's page cache is charged
// to whoever read it first (here the build; on a node, containerd unpacking
// the image), not to the process, as on the e2e cluster's real kubelet:
// the working set is the process's own memory, VmRSS that plus the mapped
// binary. Needs root, as make bench on this machine has.
type memCgroup struct{ dir string }

func newMemCgroup(tb testing.TB) *memCgroup {
	dir := filepath.Join("/sys/fs/cgroup/memory", fmt.Sprintf("lastcall-bench-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatalf("memory cgroup (v1, root): %v", err)
	}
	tb.Cleanup(func() {
		for range 50 { // the process may take a moment to leave it
			if os.Remove(dir) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		tb.Logf("memory cgroup %s not removed", dir)
	})
	return &memCgroup{dir: dir}
}

// command returns a command that joins the cgroup and runs bin with args
// and env (nil: this process's environment). With secrets set it runs in a
// mount namespace of its own where a tmpfs on /run holds secrets' files in
// /run/secrets/kubernetes.io/serviceaccount, where a pod has them.
//
// It reads bin first, from outside the cgroup, so that the binary's page
// cache is charged elsewhere (as containerd's unpacking does on a node)
// even when the kernel dropped it since the build.
func (m *memCgroup) command(tb testing.TB, bin string, args, env []string, secrets string) *exec.Cmd {
	if _, err := os.ReadFile(bin); err != nil {
		tb.Fatal(err)
	}
	script := `echo $$ > "$CG/cgroup.procs" && `
	if secrets != "" {
		script += `mount -t tmpfs -o size=1m tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && cp "$SECRETS"/* /run/secrets/kubernetes.io/serviceaccount/ && `
	}
	script += `exec "$BIN" "$@"`
	var cmd *exec.Cmd
	if secrets != "" {
		cmd = exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "sh"}, args...)...)
	} else {
		cmd = exec.Command("sh", append([]string{"-c", script, "sh"}, args...)...)
	}
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(env, "CG="+m.dir, "BIN="+bin, "SECRETS="+secrets)
	return cmd
}

// workingSetMiB reads the cgroup's working set.
func (m *memCgroup) workingSetMiB(tb testing.TB) float64 {
	raw, err := os.ReadFile(filepath.Join(m.dir, "memory.usage_in_bytes"))
	if err != nil {
		tb.Fatal(err)
	}
	usage, err := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64)
	if err != nil {
		tb.Fatal(err)
	}
	f, err := os.Open(filepath.Join(m.dir, "memory.stat"))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var inactive float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "total_inactive_file "); ok {
			inactive, _ = strconv.ParseFloat(v, 64)
		}
	}
	return max(0, usage-inactive) / (1 << 20)
}

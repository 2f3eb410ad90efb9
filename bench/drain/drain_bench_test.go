package drain_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	kubectldrain "k8s.io/kubectl/pkg/drain"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient"
)

var env *kubetest.Env

// TestMain starts the control plane only when benchmarks run: the package
// has no tests, and `go test ./...` should not pay for one.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run())
	}
	os.Exit(kubetest.Main(m, &env))
}

// node110 makes a node with 110 plain pods and a kubelet that finishes each
// deletion at once; stop ends the kubelet.
func node110(b *testing.B, e *kubetest.Env) (node string, stop func()) {
	b.Helper()
	ctx := b.Context()
	node = e.UniqueName("bench-node")
	if _, err := e.CreateNode(ctx, node, nil); err != nil {
		b.Fatal(err)
	}
	ns, err := e.CreateNamespace(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	pods := make([]*corev1.Pod, 110)
	for i := range pods {
		pods[i] = kubetest.NewPod(ns, fmt.Sprintf("worker-%d", i), node)
	}
	if _, err := e.CreatePods(ctx, pods...); err != nil {
		b.Fatal(err)
	}
	_, stop = e.StartKubelet(context.Background(), node, kubetest.KubeletOptions{FinishAtOnce: true})
	return node, stop
}

func podsLeft(b *testing.B, e *kubetest.Env, node string) int {
	b.Helper()
	list, err := e.Client.CoreV1().Pods("").List(b.Context(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		b.Fatal(err)
	}
	return len(list.Items)
}

// BenchmarkDrain110 cordons and drains a node with 110 pods, whose
// deletions a fake kubelet finishes at once, two ways: kubectl's drain
// library with client-go's default client-side rate limit, and lastcall's
// drainer with none. It reports the time to cordon and until the call
// returned with every pod gone.
func BenchmarkDrain110(b *testing.B) {
	e := kubetest.Need(b, env)
	b.Run("kubectl-qps5", func(b *testing.B) {
		// client-go's defaults: a zero QPS and Burst mean 5 and 10.
		cfg := rest.CopyConfig(e.Config)
		cfg.QPS, cfg.Burst = 0, 0
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			b.Fatal(err)
		}
		var cordon, gone time.Duration
		for b.Loop() {
			b.StopTimer()
			node, stop := node110(b, e)
			h := &kubectldrain.Helper{
				Ctx: b.Context(), Client: client, Force: true, IgnoreAllDaemonSets: true,
				DeleteEmptyDirData: true, GracePeriodSeconds: -1, Timeout: 2 * time.Minute,
				Out: io.Discard, ErrOut: io.Discard,
			}
			n, err := client.CoreV1().Nodes().Get(b.Context(), node, metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			if err := kubectldrain.RunCordonOrUncordon(h, n, true); err != nil {
				b.Fatal(err)
			}
			cordon = time.Since(start)
			if err := kubectldrain.RunNodeDrain(h, node); err != nil {
				b.Fatal(err)
			}
			gone = time.Since(start)
			b.StopTimer()
			stop()
			if left := podsLeft(b, e, node); left != 0 {
				b.Fatalf("%d pods left", left)
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(cordon.Milliseconds()), "ms-to-cordon")
		b.ReportMetric(float64(gone.Milliseconds()), "ms-to-110-gone")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("lastcall", func(b *testing.B) {
		var cordon, gone time.Duration
		for b.Loop() {
			b.StopTimer()
			node, stop := node110(b, e)
			d := drainer.New(kubeclient.NewForConfigOrDie(e.Config), drainer.Options{Logger: slog.New(slog.DiscardHandler)})
			b.StartTimer()
			start := time.Now()
			if _, err := d.Cordon(b.Context(), node, "gce", ""); err != nil {
				b.Fatal(err)
			}
			cordon = time.Since(start)
			rep, err := d.Drain(b.Context(), node, start.Add(30*time.Second), drainer.Policy{})
			if err != nil {
				b.Fatal(err)
			}
			gone = time.Since(start)
			b.StopTimer()
			stop()
			if !rep.Drained {
				b.Fatal("not drained")
			}
			if left := podsLeft(b, e, node); left != 0 {
				b.Fatalf("%d pods left", left)
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(cordon.Milliseconds()), "ms-to-cordon")
		b.ReportMetric(float64(gone.Milliseconds()), "ms-to-110-gone")
		b.ReportMetric(0, "ns/op")
	})
}

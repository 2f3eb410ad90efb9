package drainer_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/lastcall-dev/lastcall/drainer"
	"github.com/lastcall-dev/lastcall/internal/kubetest"
	"github.com/lastcall-dev/lastcall/kubeclient"
)

// BenchmarkDrain110 cordons and drains a node with 110 pods (the kubelet's
// default maximum) against the real apiserver, with a kubelet that finishes
// each deletion at once. It reports the time from the start of the drain
// until every eviction was accepted and until every pod was gone.
func BenchmarkDrain110(b *testing.B) {
	e := kubetest.Need(b, env)
	ctx := b.Context()
	var accepted, drained, cordoned []time.Duration
	for b.Loop() {
		b.StopTimer()
		node := e.UniqueName("bench-node")
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
		_, stop := e.StartKubelet(context.Background(), node, kubetest.KubeletOptions{FinishAtOnce: true})
		d := drainer.New(kubeclient.NewForConfigOrDie(e.Config), drainer.Options{Logger: slog.New(slog.DiscardHandler)})
		b.StartTimer()

		start := time.Now()
		if _, err := d.Cordon(ctx, node, "gce", ""); err != nil {
			b.Fatal(err)
		}
		cordoned = append(cordoned, time.Since(start))
		rep, err := d.Drain(ctx, node, start.Add(30*time.Second), drainer.Policy{})
		if err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		stop()
		if n := rep.Count(drainer.Evicted); n != 110 || !rep.Drained {
			b.Fatalf("evicted %d of 110, drained %v", n, rep.Drained)
		}
		var last time.Time
		for _, p := range rep.Pods {
			if p.At.After(last) {
				last = p.At
			}
		}
		accepted = append(accepted, last.Sub(start))
		drained = append(drained, rep.Finished.Sub(start))
		b.StartTimer()
	}
	b.ReportMetric(median(cordoned).Seconds()*1000, "ms-to-cordon")
	b.ReportMetric(median(accepted).Seconds()*1000, "ms-to-110-evictions")
	b.ReportMetric(median(drained).Seconds()*1000, "ms-to-110-gone")
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

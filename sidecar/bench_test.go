package sidecar_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
)

// BenchmarkNotify110 drains a node of 110 pods, each with a real sidecar
// process on its own loopback IP and a worker long-polling it, then resumes
// it, b.N times. It reports:
//
//   - told-p50-ms, told-p99-ms: from Draining's call to its return, when
//     the last of the 110 sidecars has been handed the state;
//   - workers-p50-ms, workers-p99-ms: from the call until the last of the
//     110 workers (long-polling its sidecar) sees draining;
//   - rss-KiB, rss-max-KiB: the median and largest VmRSS of the sidecars
//     at rest;
//   - rest-cpu-ms/min: CPU a sidecar uses per minute at rest (median);
//   - bin-bytes: the sidecar binary built with -ldflags "-s -w".
func BenchmarkNotify110(b *testing.B) {
	needBinaries(b)
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	const n = 110
	ips := newPodIPs()
	hs := startHub(b, "127.0.0.1:0", sidecar.HubOptions{Pods: ips})
	pods := make([]*podProcs, n)
	for i := range pods {
		ref := sidecar.PodRef{Namespace: "bench", Name: fmt.Sprintf("p-%03d", i)}
		ip := fmt.Sprintf("127.0.7.%d", i+1)
		ips.set(ref, ip)
		pods[i] = startPod(ctx, b, podSpec{ref: ref, ip: ip, hub: hs.url(), noWorker: true})
	}
	waitConnected(ctx, b, hs.hub, n)
	for _, p := range pods {
		if _, err := p.waitState(ctx, b, phaseIs(sidecar.PhaseRunning)); err != nil {
			b.Fatal(err)
		}
	}

	// At rest: memory and CPU.
	cpu0 := make([]int, n)
	for i, p := range pods {
		cpu0[i] = cpuTicks(b, p.sidecar.pid())
	}
	const rest = 3 * time.Second
	time.Sleep(rest)
	var rss, cpu []float64
	for i, p := range pods {
		kib, err := rssKiB(p.sidecar.pid())
		if err != nil {
			b.Fatal(err)
		}
		rss = append(rss, float64(kib))
		cpu = append(cpu, float64(cpuTicks(b, p.sidecar.pid())-cpu0[i])*10*float64(time.Minute/rest)) // 100 ticks/s
	}

	clients := make([]*sidecar.Client, n)
	for i, p := range pods {
		clients[i] = p.client(b)
	}
	var told, seen []time.Duration
	b.ResetTimer()
	for range b.N {
		// Workers long-poll their sidecars, as they would at rest.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var last time.Time
		for i, c := range clients {
			st, err := c.State(ctx)
			if err != nil {
				b.Fatal(err)
			}
			wg.Go(func() {
				gen := st.Generation
				for {
					next, err := c.Next(ctx, gen)
					if err != nil {
						b.Errorf("worker %d: %v", i, err)
						return
					}
					if next.Draining() {
						now := time.Now()
						mu.Lock()
						last = later(last, now)
						mu.Unlock()
						return
					}
					gen = next.Generation
				}
			})
		}
		time.Sleep(100 * time.Millisecond) // the long-polls are parked
		start := time.Now()
		k, err := hs.hub.Draining(ctx, testNotice(start.Add(30*time.Second)))
		told = append(told, time.Since(start))
		if err != nil || k != n {
			b.Fatalf("Draining: told %d, %v", k, err)
		}
		wg.Wait()
		seen = append(seen, last.Sub(start))
		b.StopTimer()
		if k, err := hs.hub.Resumed(ctx, testNotice(time.Time{})); err != nil || k != n {
			b.Fatalf("Resumed: told %d, %v", k, err)
		}
		for _, p := range pods {
			if _, err := p.waitState(ctx, b, phaseIs(sidecar.PhaseRunning)); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	b.StopTimer()

	bin := filepath.Join(b.TempDir(), "sidecar")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "github.com/lastcall-dev/lastcall/cmd/sidecar")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build: what the image holds
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(quantile(told, 0.5)), "told-p50-ms")
	b.ReportMetric(ms(quantile(told, 0.99)), "told-p99-ms")
	b.ReportMetric(ms(quantile(seen, 0.5)), "workers-p50-ms")
	b.ReportMetric(ms(quantile(seen, 0.99)), "workers-p99-ms")
	b.ReportMetric(quantileF(rss, 0.5), "rss-KiB")
	b.ReportMetric(quantileF(rss, 1), "rss-max-KiB")
	b.ReportMetric(quantileF(cpu, 0.5), "rest-cpu-ms/min")
	b.ReportMetric(float64(fi.Size()), "bin-bytes")
	b.ReportMetric(0, "ns/op")
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func quantileF(fs []float64, q float64) float64 {
	s := slices.Clone(fs)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// cpuTicks returns utime+stime of pid in clock ticks.
func cpuTicks(tb testing.TB, pid int) int {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return ut + st
}

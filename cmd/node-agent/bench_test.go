package main_test

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// BenchmarkNodeAgent110 runs the built agent on a node with 110 pods (the
// kubelet's default maximum), whose deletions the fake kubelet finishes at
// once, and a GCE metadata fake. It measures the agent at rest for a
// minute (RSS, and its requests in the apiserver's audit log), then flips
// instance/preempted and measures detection to cordon, to all pods gone,
// and the agent's peak RSS while draining.
func BenchmarkNodeAgent110(b *testing.B) {
	const rest = time.Minute
	for b.Loop() {
		c := newClusterWith(b, 110, kubetest.KubeletOptions{FinishAtOnce: true})
		pods := watchWorkers(b, c)
		gce := newGCEMetadata(b)
		agentStart := time.Now()
		p := c.startAgent(b, "--cloud=gce", "--gce-metadata-host="+gce.host())

		// At rest: what the agent costs while nothing happens.
		// Past start-up: the first lists, and the access check, which
		// waits up to 10 s after start (main's checkSpread).
		time.Sleep(15 * time.Second)
		restStart := time.Now()
		time.Sleep(rest)
		events, err := c.env.AuditEvents(c.user, restStart)
		if err != nil {
			b.Fatal(err)
		}
		var verbs []string
		for _, ev := range events {
			verbs = append(verbs, ev.Verb+" "+ev.RequestURI)
		}
		b.Logf("apiserver requests at rest in %v: %d %v", rest, len(events), verbs)
		// The audit log does see the agent: its start-up requests (list and
		// watch of its pods, access review, its node) are there.
		if all, err := c.env.AuditEvents(c.user, agentStart); err != nil || len(all) == 0 {
			b.Fatalf("no requests of the agent in the audit log (%v): the count at rest proves nothing", err)
		} else {
			b.Logf("agent requests since start: %d", len(all))
		}
		rssRest := rssMiB(b, p.cmd.Process.Pid)
		b.Logf("agent memory at rest: %s", rssParts(b, p.cmd.Process.Pid))

		// The notice.
		peak := rssRest
		start := time.Now()
		gce.set("instance/preempted", "TRUE")
		var cordoned time.Duration
		for {
			if cordoned == 0 && c.cordoned(b) {
				cordoned = time.Since(start)
			}
			peak = max(peak, rssMiB(b, p.cmd.Process.Pid))
			if _, ok := pods.gone(); ok {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("not drained within the 30 s window: %d pods left, node cordoned %v", pods.left(), cordoned != 0)
			}
			time.Sleep(20 * time.Millisecond)
		}
		goneAt, _ := pods.gone()
		drained := goneAt.Sub(start)
		if cordoned == 0 || cordoned > drained {
			cordoned = drained // the cordon and the last deletion fell between two looks
		}
		peak = max(peak, rssMiB(b, p.cmd.Process.Pid))

		b.ReportMetric(float64(len(events))*float64(time.Minute)/float64(rest), "apiserver-req/min-at-rest")
		b.ReportMetric(rssRest, "MiB-rss-at-rest")
		b.ReportMetric(peak, "MiB-rss-peak-draining")
		b.ReportMetric(float64(cordoned.Milliseconds()), "ms-notice-to-cordon")
		b.ReportMetric(float64(drained.Milliseconds()), "ms-notice-to-110-gone")
		if s := p.metric(b, `lastcall_notice_to_cordon_seconds_sum{kind="preemption",source="gce"}`); s > 0 {
			b.ReportMetric(s*1000, "ms-detected-to-cordon")
		}
	}
}

// rssMiB reads the resident set size of pid from /proc.
func rssMiB(tb testing.TB, pid int) float64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb / 1024
		}
	}
	tb.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// rssParts returns the parts of pid's VmRSS as /proc says them: RssAnon
// (heap, stacks, the runtime's own) and RssFile (the mapped binary's pages
// read so far), for the benchmark's log.
func rssParts(tb testing.TB, pid int) string {
	tb.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	var parts []string
	for line := range strings.Lines(string(raw)) {
		for _, k := range []string{"VmRSS:", "RssAnon:", "RssFile:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				parts = append(parts, k+" "+strings.TrimSpace(v))
			}
		}
	}
	return strings.Join(parts, ", ")
}

// Command report turns the output of `go test -bench` (the benchmarks that
// `make bench` runs) into the markdown report bench/README.md: the date, Go
// version and machine, lastcall's numbers, and kubectl's drain library at
// client-go's default rate limits next to lastcall's drainer.
//
//	go test -run '^$' -bench . ./... | go run ./bench/report -o bench/README.md
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(context.Background(), os.Args[1:], os.Stdin); err != nil {
		logger.Error("report failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, in io.Reader) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	out := fs.String("o", "bench/README.md", "where to write the report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, raw, failed, err := Parse(in)
	if err != nil {
		return fmt.Errorf("parse benchmark output: %w", err)
	}
	if len(failed) > 0 {
		return fmt.Errorf("benchmarks failed, report not written: %s", strings.Join(failed, "; "))
	}
	if len(res) == 0 {
		return errors.New("no benchmark results in the input")
	}
	m := Machine{
		Date: time.Now().UTC(), GoVersion: goVersion(ctx), CPUs: runtime.NumCPU(),
		CPUModel: cpuModel(), OS: runtime.GOOS + "/" + runtime.GOARCH,
	}
	var b strings.Builder
	Render(&b, m, res, raw)
	if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// Results maps "pkg-suffix/BenchmarkName" (without the -N CPU suffix) to
// its metrics by unit.
type Results map[string]map[string]float64

// Parse reads `go test -bench` output. It returns the metrics of every
// benchmark line, keyed by its package (without the module path) and the
// benchmark's name, the lines it used (package headers and results), and
// the lines that report a failure.
func Parse(r io.Reader) (res Results, raw, failed []string, err error) {
	res = Results{}
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "--- FAIL") || strings.HasPrefix(line, "panic:") {
			failed = append(failed, strings.TrimSpace(line))
			continue
		}
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(strings.TrimSpace(p), "github.com/lastcall-dev/lastcall/")
			raw = append(raw, line)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue // a benchmark's name alone, before its log lines
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		metrics := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("line %q: %w", line, err)
			}
			metrics[f[i+1]] = v
		}
		res[pkg+"/"+name] = metrics
		raw = append(raw, line)
	}
	return res, raw, failed, sc.Err()
}

// Machine describes where the benchmarks ran.
type Machine struct {
	Date      time.Time
	GoVersion string
	CPUs      int
	CPUModel  string
	OS        string
}

func goVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimSpace(string(out))
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// get formats one metric, or "n/a" when the benchmark did not report it.
func (r Results) get(bench, unit string, scale float64, format string) string {
	v, ok := r.value(bench, unit)
	if !ok {
		return "n/a"
	}
	return fmt.Sprintf(format, v*scale)
}

func (r Results) value(bench, unit string) (float64, bool) {
	m, ok := r[bench]
	if !ok {
		return 0, false
	}
	v, ok := m[unit]
	return v, ok
}

// Render writes the report.
func Render(w io.Writer, m Machine, r Results, raw []string) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# lastcall benchmarks\n\n")
	p("Written by `make bench` (`go run ./bench/report`) from the benchmarks' own output; do not edit by hand.\n\n")
	p("- date: %s\n- Go: %s, %s\n- machine: %d CPUs (`nproc`), %s\n\n", m.Date.Format("2006-01-02 15:04 MST"), m.GoVersion, m.OS, m.CPUs, m.CPUModel)
	p("Everything runs on this one machine: a real kube-apiserver v1.34.4 and etcd, the built binaries, a fake kubelet that finishes each deletion at once, loopback metadata fakes.\n\n")

	p("## lastcall\n\n")
	p("| what | measured | benchmark |\n|---|---|---|\n")
	row := func(what, value, bench string) { p("| %s | %s | `%s` |\n", what, value, bench) }
	gce, ec2 := "watcher/gce/BenchmarkDetection", "watcher/ec2/BenchmarkDetection"
	row("GCE detection: `instance/preempted` flipped → Notice (hanging GET)",
		"p50 "+r.get(gce, "p50-ms", 1, "%.2f ms")+", p99 "+r.get(gce, "p99-ms", 1, "%.2f ms"), gce)
	row("AWS detection: spot notice appears → Notice (spot path read every 250 ms, the others in turn once a second)",
		"p50 "+r.get(ec2, "p50-ms", 1, "%.0f ms")+", p99 "+r.get(ec2, "p99-ms", 1, "%.0f ms")+" (100 notices), "+
			r.get(ec2, "imds-req/s-at-rest", 1, "%.1f")+" IMDS requests a second at rest", ec2)
	other := "watcher/ec2/BenchmarkDetectionOther/"
	for _, x := range []struct{ name, what string }{
		{"asg", "ASG `target-lifecycle-state` Terminated (read every 2 s)"},
		{"rebalance", "rebalance recommendation (read every 6 s)"},
		{"scheduled", "scheduled maintenance event (read every 6 s)"},
	} {
		row("AWS detection: "+x.what+" → Notice",
			"p50 "+r.get(other+x.name, "p50-ms", 1, "%.0f ms")+", p99 "+r.get(other+x.name, "p99-ms", 1, "%.0f ms")+" (12 notices)", other+x.name)
	}
	agent := "cmd/node-agent/BenchmarkNodeAgent110"
	row("notice → node cordoned (agent binary, 110 pods)", r.get(agent, "ms-notice-to-cordon", 1, "%.0f ms")+" from the flip, seen by the benchmark polling the Node; "+
		r.get(agent, "ms-detected-to-cordon", 1, "%.0f ms")+" from detection (the agent's `lastcall_notice_to_cordon_seconds`)", agent)
	row("notice → all 110 pods gone", r.get(agent, "ms-notice-to-110-gone", 1, "%.0f ms"), agent)
	notify := "sidecar/BenchmarkNotify110"
	row("notice → last of 110 sidecars told (110 sidecar processes)",
		"p50 "+r.get(notify, "told-p50-ms", 1, "%.0f ms")+", p99 "+r.get(notify, "told-p99-ms", 1, "%.0f ms"), notify)
	row("notice → last of 110 workers sees draining",
		"p50 "+r.get(notify, "workers-p50-ms", 1, "%.0f ms")+", p99 "+r.get(notify, "workers-p99-ms", 1, "%.0f ms"), notify)
	row("agent RSS", r.get(agent, "MiB-rss-at-rest", 1, "%.0f MiB")+" at rest, "+r.get(agent, "MiB-rss-peak-draining", 1, "%.0f MiB")+" peak while draining", agent)
	row("sidecar RSS at rest", r.get(notify, "rss-KiB", 1.0/1024, "%.1f MiB")+" (median of 110), binary "+r.get(notify, "bin-bytes", 1.0/1e6, "%.1f MB"), notify)
	row("agent's apiserver requests at rest", r.get(agent, "apiserver-req/min-at-rest", 1, "%.0f")+" per minute (audit log)", agent)
	dr := "drainer/BenchmarkDrain110"
	row("drainer alone: cordon; 110 evictions accepted; 110 gone (median of 5)",
		r.get(dr, "ms-to-cordon", 1, "%.0f ms")+"; "+r.get(dr, "ms-to-110-evictions", 1, "%.0f ms")+"; "+r.get(dr, "ms-to-110-gone", 1, "%.0f ms"), dr)

	p("\n## The same 110-pod drain, side by side\n\n")
	p("`bench/drain`, one run each against the same apiserver: `k8s.io/kubectl/pkg/drain` (`RunCordonOrUncordon`, then `RunNodeDrain`, which evicts and waits for the pods to be gone) with client-go's default client-side rate limit (QPS 5, burst 10: what aws-node-termination-handler uses), and lastcall's drainer (`Cordon`, `Drain`) with none.\n\n")
	kc, lc := "bench/drain/BenchmarkDrain110/kubectl-qps5", "bench/drain/BenchmarkDrain110/lastcall"
	p("| | kubectl drain, QPS 5 / burst 10 | lastcall drainer | kubectl ÷ lastcall |\n|---|---|---|---|\n")
	for _, x := range []struct{ what, unit string }{{"cordon", "ms-to-cordon"}, {"110 pods gone", "ms-to-110-gone"}} {
		ratio := "n/a"
		a, okA := r.value(kc, x.unit)
		b, okB := r.value(lc, x.unit)
		if okA && okB && b > 0 {
			ratio = fmt.Sprintf("%.0f×", a/b)
			if a/b < 10 {
				ratio = fmt.Sprintf("%.1f×", a/b)
			}
		}
		p("| %s | %s | %s | %s |\n", x.what, r.get(kc, x.unit, 1, "%.0f ms"), r.get(lc, x.unit, 1, "%.0f ms"), ratio)
	}
	renderPeer(p, r)
	p("\n## Raw results\n\n```\n%s\n```\n", strings.Join(raw, "\n"))
}

// renderPeer writes the side-by-side table of cmd/node-agent's
// BenchmarkPeerAWS110: lastcall and aws-node-termination-handler on the
// same spot notice.
func renderPeer(p func(string, ...any), r Results) {
	const base = "cmd/node-agent/BenchmarkPeerAWS110/"
	lc, nd, nq, fl := base+"lastcall", base+"nth-defaults", base+"nth-qps100", base+"floor"
	p("\n## aws-node-termination-handler, side by side\n\n")
	p("`cmd/node-agent/BenchmarkPeerAWS110`, in one run: each handler in turn on a node with 110 pods (deletions finished at once by the fake kubelet), the same apiserver, and the real amazon-ec2-metadata-mock behind a loopback proxy that counts requests and shows the spot interruption notice when the benchmark says. lastcall runs as `make build` builds it (static, stripped), at its defaults (`--cloud=aws`); aws-node-termination-handler (NTH, IMDS mode) as its release build is built from its Go module (the version in `hack/nth/go.mod`), at its defaults. Each acts as a service account bound to cluster-admin (NTH with in-cluster credentials, lastcall with a kubeconfig of such a token), so that the apiserver's flow control treats their requests alike, as it does in a cluster. Times are from the notice appearing to the Node seen unschedulable (the benchmark reads it every 20 ms) and to the last of the 110 pods gone (as a watch of the pods reports it: the benchmark does not list 110 pods over and over, a load on the apiserver that would slow the drain it measures). Memory: VmRSS (the mapped binary included), and the working set the kubelet would report for a container holding the process alone (a memory cgroup of its own: usage minus inactive file; the binary's page cache is charged to whoever read it first, on a node containerd, so this is the process's own memory), at rest after 20 s and at its peak while draining.\n\n")
	if _, ok := r[nq]; !ok {
		p("NTH at QPS 100 / burst 200 (`KUBE_API_QPS`, `KUBE_API_BURST`) did not run.\n\n")
	} else {
		p("NTH at QPS 100 / burst 200: its later releases read `KUBE_API_QPS` and `KUBE_API_BURST` into the client it drains with; the Go module proxy serves none of them, so the version in `hack/nth/go.mod` is built with that setting added and nothing else changed (`hack/nth/qps.sh`).\n\n")
	}
	p("| | lastcall | NTH, defaults (QPS 5 / burst 10) | NTH, QPS 100 / burst 200 | NTH defaults ÷ lastcall | NTH QPS 100 ÷ lastcall |\n|---|---|---|---|---|---|\n")
	for _, x := range []struct{ what, unit, format string }{
		{"notice → node unschedulable", "ms-notice-to-cordon", "%.0f ms"},
		{"notice → all 110 pods gone", "ms-notice-to-110-gone", "%.0f ms"},
		{"VmRSS at rest", "MiB-rss-at-rest", "%.1f MiB"},
		{"VmRSS, peak while draining", "MiB-rss-peak", "%.1f MiB"},
		{"working set at rest", "MiB-ws-at-rest", "%.1f MiB"},
		{"working set, peak while draining", "MiB-ws-peak", "%.1f MiB"},
		{"IMDS requests a second at rest", "imds-req/s-at-rest", "%.1f"},
	} {
		p("| %s | %s | %s | %s | %s | %s |\n", x.what, r.get(lc, x.unit, 1, x.format), r.get(nd, x.unit, 1, x.format), r.get(nq, x.unit, 1, x.format),
			r.ratio(nd, lc, x.unit), r.ratio(nq, lc, x.unit))
	}
	const gone = "ms-notice-to-110-gone"
	if _, ok := r.value(fl, gone); !ok {
		return
	}
	p("\nThe floor under every handler (`BenchmarkPeerAWS110/floor`, the same run): no handler runs; the benchmark itself, knowing the pods beforehand, cordons the node and sends all 110 evictions at once the moment the notice shows, with no detection and no client-side rate limit. What it measures is the apiserver's and the kubelet's own time to take 110 pods off this node: ")
	p("notice → all 110 pods gone **%s**. ", r.get(fl, gone, 1, "%.0f ms"))
	p("No handler can go faster here, so NTH at QPS 100 ÷ floor, **%s**, is the largest ratio any handler could show on this machine; ", r.ratio(nq, fl, gone))
	if l, ok := r.value(lc, gone); ok {
		f, _ := r.value(fl, gone)
		p("lastcall takes %.0f ms more than the floor (its IMDS poll, then the cordon before the evictions).\n", l-f)
	} else {
		p("lastcall did not run.\n")
	}
}

// ratio formats a's metric unit divided by b's, or "n/a".
func (r Results) ratio(a, b, unit string) string {
	x, okA := r.value(a, unit)
	y, okB := r.value(b, unit)
	if !okA || !okB || y <= 0 {
		return "n/a"
	}
	if x/y < 10 {
		return fmt.Sprintf("%.1f×", x/y)
	}
	return fmt.Sprintf("%.0f×", x/y)
}

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
)

// kubeletMessages are the kubelet's log lines (at -v=3) about stopping a
// container, as they appear in the timeline. In kuberuntime's
// killContainer, "Killing container with a grace period" is logged just
// before the runtime's StopContainer, which sends SIGTERM.
var kubeletMessages = map[string]string{
	"Running preStop hook":                       "kubelet: preStop started",
	"PreStop hook completed":                     "kubelet: preStop completed",
	"PreStop hook not completed in grace period": "kubelet: preStop timed out",
	"Killing container with a grace period":      "kubelet: SIGTERM",
	"Container exited normally":                  "kubelet: container exited",
}

var (
	klogHeader = regexp.MustCompile(`^[IWE](\d{4} \d{2}:\d{2}:\d{2}\.\d{6})\s+\d+ [^]]+\] "([^"]+)"`)
	klogPod    = regexp.MustCompile(`\bpod="([^"]+)"`)
	klogCont   = regexp.MustCompile(`\bcontainerName="([^"]+)"`)
	klogGrace  = regexp.MustCompile(`\bgracePeriod=(\d+)`)
)

// kubeletEvents returns the kubelet's container-stopping log lines about
// pods of namespace from its log file, at or after t0. Pod names are
// without the namespace; the container is in the detail.
func kubeletEvents(path, namespace string, t0 time.Time) ([]event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := klogHeader.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		what, ok := kubeletMessages[m[2]]
		if !ok {
			continue
		}
		pod := klogPod.FindStringSubmatch(line)
		if pod == nil || !strings.HasPrefix(pod[1], namespace+"/") {
			continue
		}
		at, err := time.ParseInLocation("0102 15:04:05.000000", m[1], time.Local)
		if err != nil {
			continue
		}
		at = at.AddDate(t0.Year(), 0, 0)
		if at.Before(t0) {
			continue
		}
		e := event{Pod: strings.TrimPrefix(pod[1], namespace+"/"), What: what, At: at}
		if c := klogCont.FindStringSubmatch(line); c != nil {
			e.Detail = "container " + c[1]
			e.What += " " + c[1]
		}
		if g := klogGrace.FindStringSubmatch(line); g != nil {
			e.Detail += " grace " + g[1] + "s"
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// containerMemory is a container's memory as the kubelet measures it.
type containerMemory struct {
	RSS, WorkingSet uint64
}

// podMemory returns the kubelet's /stats/summary memory of the containers
// of pod namespace/name, by container name.
func podMemory(ctx context.Context, c kubernetes.Interface, node, namespace, name string) (map[string]containerMemory, error) {
	raw, err := c.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", node, "proxy", "stats", "summary").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("stats/summary: %w", err)
	}
	var s struct {
		Pods []struct {
			PodRef struct {
				Name, Namespace string
			} `json:"podRef"`
			Containers []struct {
				Name   string `json:"name"`
				Memory struct {
					RSSBytes        uint64 `json:"rssBytes"`
					WorkingSetBytes uint64 `json:"workingSetBytes"`
				} `json:"memory"`
			} `json:"containers"`
		} `json:"pods"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	for _, p := range s.Pods {
		if p.PodRef.Namespace != namespace || p.PodRef.Name != name {
			continue
		}
		out := map[string]containerMemory{}
		for _, c := range p.Containers {
			out[c.Name] = containerMemory{RSS: c.Memory.RSSBytes, WorkingSet: c.Memory.WorkingSetBytes}
		}
		return out, nil
	}
	return nil, fmt.Errorf("pod %s/%s not in the kubelet's summary", namespace, name)
}

// processRSS returns the VmRSS of the process named comm on this machine
// (the node): unlike the kubelet's rssBytes (the cgroup's anonymous
// memory), it counts the mapped pages of the binary too.
func processRSS(comm string) (uint64, error) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, d := range dirs {
		name, err := os.ReadFile("/proc/" + d.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(name)) != comm {
			continue
		}
		status, err := os.ReadFile("/proc/" + d.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no process %s", comm)
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

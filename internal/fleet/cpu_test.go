package fleet

import (
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name, line, comm string
		pid, ppid        int
		used             time.Duration
		bad              bool
	}{
		{name: "plain", line: "7120 (kube-apiserver) S 7118 7118 1136 0 -1 4194304 98 0 0 0 250 50 0 0 20 0 1 0 46187",
			comm: "kube-apiserver", pid: 7120, ppid: 7118, used: 3 * time.Second},
		{name: "name with spaces and parentheses", line: "12 (a) (b c)) R 1 1 1 0 -1 0 0 0 0 0 1 2 0 0",
			comm: "a) (b c)", pid: 12, ppid: 1, used: 30 * time.Millisecond},
		{name: "no name", line: "12 R 1 1", bad: true},
		{name: "truncated", line: "12 (x) R 1 1 1", bad: true},
		{name: "bad time", line: "12 (x) R 1 1 1 0 -1 0 0 0 0 0 x 2 0 0", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			comm, pid, ppid, used, err := parseStat(tc.line)
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %q without an error", tc.line)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if comm != tc.comm || pid != tc.pid || ppid != tc.ppid || used != tc.used {
				t.Errorf("got %q %d %d %v, want %q %d %d %v", comm, pid, ppid, used, tc.comm, tc.pid, tc.ppid, tc.used)
			}
		})
	}
}

func TestSampleCPUCountsThisProcess(t *testing.T) {
	before, err := SampleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for x, start := 0, time.Now(); time.Since(start) < 200*time.Millisecond; x++ {
		_ = x * x // spin: this process uses CPU
	}
	after, err := SampleCPU()
	if err != nil {
		t.Fatal(err)
	}
	if after.Used["agents"] <= before.Used["agents"] {
		t.Errorf("this process's CPU time did not grow: %v then %v", before.Used["agents"], after.Used["agents"])
	}
	cores := after.Cores(before)
	if len(cores) == 0 || cores[len(cores)-1][:4] != "all " {
		t.Errorf("Cores = %q, want a total last", cores)
	}
}

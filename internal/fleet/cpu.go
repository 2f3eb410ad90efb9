package fleet

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// CPU is a sample of the CPU time (user and system) used so far by this
// process and by each of its children, by command name: where a run's two
// cores went. This process holds the agents and the metadata servers; its
// children are the control plane and KWOK.
type CPU struct {
	// At is when the sample was taken.
	At time.Time
	// Used is the CPU time by command name ("agents" for this process).
	Used map[string]time.Duration
}

// clockTick is the kernel's USER_HZ, the unit of /proc/PID/stat's times;
// 100 on every Linux architecture Go runs on.
const clockTick = 100

// SampleCPU reads /proc for this process and its children.
func SampleCPU() (s CPU, err error) {
	s = CPU{Used: map[string]time.Duration{}}
	// At is the end of the scan, which takes a millisecond when it runs:
	// a starved process is more likely descheduled before it than in it.
	defer func() { s.At = time.Now() }()
	self := os.Getpid()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return s, err
	}
	for _, path := range stats {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue // the process ended
		}
		comm, pid, ppid, used, err := parseStat(string(raw))
		if err != nil {
			return s, fmt.Errorf("%s: %w", path, err)
		}
		switch {
		case pid == self:
			s.Used["agents"] += used
		case ppid == self:
			s.Used[comm] += used
		}
	}
	return s, nil
}

// parseStat returns the command name, pid, parent pid and CPU time (utime
// + stime) of one /proc/PID/stat line. The name is in parentheses and may
// hold spaces and parentheses itself, so the fields are counted from the
// last ')'.
func parseStat(line string) (comm string, pid, ppid int, used time.Duration, err error) {
	open, end := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
	if open < 0 || end < open {
		return "", 0, 0, 0, fmt.Errorf("malformed stat line %q", line)
	}
	if pid, err = strconv.Atoi(strings.TrimSpace(line[:open])); err != nil {
		return "", 0, 0, 0, fmt.Errorf("malformed pid: %w", err)
	}
	comm = line[open+1 : end]
	// After the name: state(3) ppid(4) ... utime(14) stime(15).
	f := strings.Fields(line[end+1:])
	if len(f) < 13 {
		return "", 0, 0, 0, fmt.Errorf("stat line of %d fields after the name", len(f))
	}
	if ppid, err = strconv.Atoi(f[1]); err != nil {
		return "", 0, 0, 0, fmt.Errorf("malformed ppid: %w", err)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return "", 0, 0, 0, fmt.Errorf("malformed cpu time: %w", err)
		}
		ticks += n
	}
	return comm, pid, ppid, time.Duration(ticks) * time.Second / clockTick, nil
}

// Cores returns the CPU cores each command used on average between before
// and s, largest first, as "name 1.23" strings.
func (s CPU) Cores(before CPU) []string {
	wall := s.At.Sub(before.At).Seconds()
	if wall <= 0 {
		return nil
	}
	type use struct {
		name  string
		cores float64
	}
	var uses []use
	total := 0.0
	for name, d := range s.Used {
		c := (d - before.Used[name]).Seconds() / wall
		total += c
		uses = append(uses, use{name, c})
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].cores > uses[j].cores })
	out := make([]string, 0, len(uses)+1)
	for _, u := range uses {
		out = append(out, fmt.Sprintf("%s %.2f", u.name, u.cores))
	}
	return append(out, fmt.Sprintf("all %.2f", total))
}

package pod

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// sendSignal sends the configured signal to every process named
// SignalProcess.
func (s *Sidecar) sendSignal() {
	pids := findProcesses(s.cfg.ProcRoot, s.cfg.SignalProcess)
	if len(pids) == 0 {
		s.log.Warn("no worker process to signal (is shareProcessNamespace set?)", "process", s.cfg.SignalProcess)
		return
	}
	for _, pid := range pids {
		p, err := os.FindProcess(pid)
		if err == nil {
			err = p.Signal(s.cfg.Signal)
		}
		if err != nil {
			s.log.Warn("signaling worker failed", "pid", pid, "signal", s.cfg.Signal.String(), "err", err)
			continue
		}
		s.log.Info("worker signaled", "pid", pid, "signal", s.cfg.Signal.String(), "process", s.cfg.SignalProcess)
	}
}

// findProcesses returns the PIDs under procRoot, other than this process,
// whose comm or argv[0] base name is name. comm is cut at 15 bytes by the
// kernel, and so is name for that comparison.
func findProcesses(procRoot, name string) []int {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	comm := name
	if len(comm) > 15 {
		comm = comm[:15]
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		if b, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil && string(bytes.TrimSpace(b)) == comm {
			pids = append(pids, pid)
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			argv0, _, _ := bytes.Cut(b, []byte{0})
			if len(argv0) > 0 && filepath.Base(string(argv0)) == name {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

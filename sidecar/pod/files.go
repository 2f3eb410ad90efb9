package pod

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// The files in Config.Dir.
const (
	// StateFile holds the state as JSON, replaced atomically on every
	// change.
	StateFile = "state.json"
	// DrainingFile exists only while draining; its first line is the
	// deadline (RFC 3339, as wire.FormatTime writes it), its second the
	// reason.
	DrainingFile = "draining"
)

// mirror writes v to the state file and creates or removes the flag file.
func (s *Sidecar) mirror(v wire.State) error {
	if s.cfg.Dir == "" {
		return nil
	}
	b, err := wire.MarshalIndent(v)
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(s.cfg.Dir, StateFile), b); err != nil {
		return err
	}
	flag := filepath.Join(s.cfg.Dir, DrainingFile)
	if v.Phase != wire.PhaseDraining {
		if err := os.Remove(flag); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	deadline := ""
	if !v.Deadline.IsZero() {
		deadline = wire.FormatTime(v.Deadline)
	}
	return writeAtomic(flag, []byte(deadline+"\n"+v.Reason+"\n"))
}

// writeAtomic writes b to a temporary file beside path and renames it over
// path, so readers see the old content or the new, never a part.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(f.Name(), 0o644)); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// restore reads the state an earlier run of the sidecar left in the state
// file: a drain it showed goes on (until the agent says otherwise), and so
// do the workers' reports.
func (s *Sidecar) restore() {
	if s.cfg.Dir == "" {
		return
	}
	b, err := os.ReadFile(filepath.Join(s.cfg.Dir, StateFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("cannot read the earlier state", "err", err)
		}
		return
	}
	var v wire.State
	if err := json.Unmarshal(b, &v); err != nil {
		s.log.Warn("cannot parse the earlier state", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view.Generation = v.Generation
	s.done, s.inflight = v.Done, v.InFlight
	if v.Done || v.InFlight != 0 {
		s.reportVer++
		s.wakeReporter()
	}
	if v.Phase != wire.PhaseDraining {
		return
	}
	if v.Reason == wire.ReasonPodTerminating {
		s.terminating, s.termDeadline = true, v.Deadline
	} else {
		s.node = wire.NodeState{Generation: v.AgentGeneration, Phase: wire.PhaseDraining, Reason: v.Reason, Source: v.Source, Deadline: v.Deadline}
	}
	s.log.Info("carrying on with the earlier drain", "reason", v.Reason, "deadline", v.Deadline)
}

// InstallBinary copies the executable at src to dir/name (atomically,
// mode 0555, checked against its source), so that worker containers sharing
// dir (read-only) can run it as their
// preStop hook ("exec: [/lastcall/sidecar, prestop]") without having it in
// their image.
func InstallBinary(src, dir, name string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("install binary: %w", err)
	}
	defer in.Close()
	dst := filepath.Join(dir, name)
	// Streamed, not read whole: the sidecar's memory stays small.
	out, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return "", fmt.Errorf("install binary: %w", err)
	}
	sum := sha256.New()
	_, cerr := io.Copy(out, io.TeeReader(in, sum))
	// Read and execute only: the workers' preStop hooks run this file.
	if err := errors.Join(cerr, out.Close(), os.Chmod(out.Name(), 0o555)); err != nil {
		_ = os.Remove(out.Name())
		return "", fmt.Errorf("install binary: %w", err)
	}
	// Check the copy before anyone runs it: a short write or a full
	// emptyDir must not leave a broken preStop hook behind.
	if err := sameSum(out.Name(), sum.Sum(nil)); err != nil {
		_ = os.Remove(out.Name())
		return "", fmt.Errorf("install binary: %w", err)
	}
	if err := os.Rename(out.Name(), dst); err != nil {
		_ = os.Remove(out.Name())
		return "", fmt.Errorf("install binary: %w", err)
	}
	return dst, nil
}

// sameSum checks that the SHA-256 of file path is want.
func sameSum(path string, want []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return fmt.Errorf("%s differs from its source after the copy", path)
	}
	return nil
}

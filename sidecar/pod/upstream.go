package pod

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// Backoff between failed calls to the agent: short, because an agent
// restart takes seconds and the notice window is tens of seconds.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// sleep waits d with ±20% jitter, or until ctx is done; it reports whether
// the full wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// subscribe long-polls the agent until ctx is done, reconnecting with
// backoff.
func (s *Sidecar) subscribe(ctx context.Context) {
	backoff := minBackoff
	var gen uint64 // 0: answer at once, also right after a restart
	failing := false
	for ctx.Err() == nil {
		st, err := s.poll(ctx, gen)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				s.log.Warn("agent unreachable; retrying", "agent", s.agent.String(), "err", err)
				failing = true
			}
			s.setDisconnected()
			sleep(ctx, backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		if failing {
			s.log.Info("agent reachable again", "agent_generation", st.Generation)
			failing = false
		}
		backoff = minBackoff
		gen = st.Generation
		s.setNode(st)
	}
}

// poll makes one long-poll to the agent.
func (s *Sidecar) poll(ctx context.Context, gen uint64) (wire.NodeState, error) {
	wait := s.cfg.PollWait
	if gen == 0 {
		wait = 0
	}
	ctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	u := s.agent.JoinPath(wire.StatePath(s.cfg.Namespace, s.cfg.Name))
	u.RawQuery = wire.PollQuery{Generation: gen, Wait: wait}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return wire.NodeState{}, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return wire.NodeState{}, err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return wire.NodeState{}, err
	}
	var st wire.NodeState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return wire.NodeState{}, fmt.Errorf("decode agent state: %w", err)
	}
	if st.Phase != wire.PhaseRunning && st.Phase != wire.PhaseDraining {
		return wire.NodeState{}, fmt.Errorf("agent state has phase %q", st.Phase)
	}
	return st, nil
}

// statusError returns nil for a 2xx response, else an error with the
// start of the body, which the agent fills with its reason.
func statusError(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return fmt.Errorf("agent answered %s: %s", resp.Status, bytes.TrimSpace(b))
}

// report sends the pod's report to the agent whenever it changes or the
// agent reconnects, until ctx is done; then it makes one last try, so that
// a sidecar stopping because its workers are done still tells the agent.
func (s *Sidecar) report(ctx context.Context) {
	var sent uint64
	everSent := false
	backoff := minBackoff
	// pending returns the report to send, if one is due.
	pending := func() (uint64, wire.Report, bool) {
		s.mu.Lock()
		ver, rep, heard := s.reportVer, wire.Report{Done: s.done, InFlight: s.inflight}, s.heard
		s.mu.Unlock()
		if !heard {
			// Nothing is sent before the agent's first answer: a done
			// restored from an earlier run may no longer stand (the drain
			// was called off meanwhile), and a stale done released the
			// pod of workers back at work.
			return ver, rep, false
		}
		if ver == sent || (!everSent && rep == wire.Report{}) {
			sent = ver
			return ver, rep, false
		}
		return ver, rep, true
	}
	for {
		select {
		case <-s.reportWake:
		case <-ctx.Done():
			if _, rep, ok := pending(); ok {
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				defer cancel()
				if err := s.put(fctx, rep); err != nil {
					s.log.Warn("last report to agent failed", "err", err)
				}
			}
			return
		}
		for ctx.Err() == nil {
			ver, rep, ok := pending()
			if !ok {
				break
			}
			if err := s.put(ctx, rep); err != nil {
				if ctx.Err() == nil {
					s.log.Warn("report to agent failed; retrying", "err", err)
					sleep(ctx, backoff)
					backoff = min(2*backoff, maxBackoff)
				}
				continue
			}
			backoff = minBackoff
			sent, everSent = ver, true
		}
	}
}

func (s *Sidecar) put(ctx context.Context, rep wire.Report) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	u := s.agent.JoinPath(wire.ReportPath(s.cfg.Namespace, s.cfg.Name))
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

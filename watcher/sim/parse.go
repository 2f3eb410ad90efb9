package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

// Spec is one simulated notice as written in a notice file or POSTed to the
// trigger.
type Spec struct {
	Kind     watcher.Kind   `json:"kind"`
	State    watcher.State  `json:"state,omitempty"`
	ID       string         `json:"id,omitempty"`
	Source   watcher.Source `json:"source,omitempty"`
	Action   string         `json:"action,omitempty"`
	Deadline string         `json:"deadline,omitempty"`
	Seconds  *float64       `json:"seconds,omitempty"`
}

var errEmpty = errors.New("empty notice")

// maxSeconds bounds "seconds" to keep deadlines representable.
const maxSeconds = 366 * 24 * 3600

// parseNotices parses a notice file or trigger body: one Spec or an array.
func parseNotices(body []byte, detected time.Time) ([]watcher.Notice, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, errEmpty
	}
	var raws []json.RawMessage
	if body[0] == '[' {
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, fmt.Errorf("parse notices: %w", err)
		}
	} else {
		raws = []json.RawMessage{body}
	}
	ns := make([]watcher.Notice, 0, len(raws))
	for i, raw := range raws {
		n, err := parseNotice(raw, detected)
		if err != nil {
			return nil, fmt.Errorf("parse notice %d: %w", i, err)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

func parseNotice(raw []byte, detected time.Time) (watcher.Notice, error) {
	var s Spec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return watcher.Notice{}, err
	}
	switch s.Kind {
	case watcher.KindPreemption, watcher.KindSpotInterruption, watcher.KindRebalance, watcher.KindMaintenance, watcher.KindTermination:
	default:
		return watcher.Notice{}, fmt.Errorf("unknown kind %q", s.Kind)
	}
	switch s.State {
	case "":
		s.State = watcher.StateActive
	case watcher.StateActive, watcher.StateCanceled, watcher.StateInformational:
	default:
		return watcher.Notice{}, fmt.Errorf("unknown state %q", s.State)
	}
	switch s.Source {
	case "":
		s.Source = watcher.SourceSim
	case watcher.SourceSim, watcher.SourceGCE, watcher.SourceAWS, watcher.SourceAzure:
	default:
		return watcher.Notice{}, fmt.Errorf("unknown source %q", s.Source)
	}
	if len(s.ID) > 256 || len(s.Action) > 256 {
		return watcher.Notice{}, errors.New("id or action too long")
	}
	n := watcher.Notice{Source: s.Source, Kind: s.Kind, State: s.State, ID: s.ID, Action: s.Action, Detected: detected, Raw: raw}
	switch {
	case s.Deadline != "" && s.Seconds != nil:
		return watcher.Notice{}, errors.New("both deadline and seconds")
	case s.Deadline != "":
		t, err := time.Parse(time.RFC3339, s.Deadline)
		if err != nil {
			return watcher.Notice{}, fmt.Errorf("deadline: %w", err)
		}
		n.Deadline = t
	case s.Seconds != nil:
		if !(*s.Seconds >= 0 && *s.Seconds <= maxSeconds) {
			return watcher.Notice{}, fmt.Errorf("seconds %v out of range", *s.Seconds)
		}
		n.Deadline = detected.Add(time.Duration(*s.Seconds * float64(time.Second)))
	case s.State == watcher.StateActive && s.Kind != watcher.KindRebalance:
		return watcher.Notice{}, errors.New("an active notice needs a deadline or seconds")
	}
	if n.ID == "" {
		sum := sha256.Sum256(raw)
		n.ID = "sim-" + string(s.Kind) + "-" + hex.EncodeToString(sum[:6])
	}
	return n, nil
}

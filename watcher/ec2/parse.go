package ec2

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

// Paths read by the watcher, relative to /latest/meta-data/.
const (
	PathSpot      = "spot/instance-action"
	PathRebalance = "events/recommendations/rebalance"
	PathScheduled = "events/maintenance/scheduled"
	// PathHistory lists past scheduled events, canceled and completed ones
	// among them, in the format of PathScheduled.
	PathHistory = "events/maintenance/history"
	PathASG     = "autoscaling/target-lifecycle-state"
)

// IDASGTerminated is the ID of the notice sent when the Auto Scaling group
// moves this instance to Terminated; there is one such event per instance.
const IDASGTerminated = "aws-asg-terminated"

// scheduledTimeLayout is how IMDS writes NotBefore and NotAfter in
// events/maintenance/scheduled, e.g. "21 Jan 2019 09:00:43 GMT".
const scheduledTimeLayout = "2 Jan 2006 15:04:05 GMT"

var errEmpty = errors.New("empty body")

// spotNotice parses spot/instance-action, {"action": "terminate", "time":
// "2017-09-18T08:22:00Z"}. The deadline is its time; the ID is made of the
// action and the time, so every read of the same notice gives the same ID.
func spotNotice(body []byte, detected time.Time) (watcher.Notice, error) {
	var v struct {
		Action string `json:"action"`
		Time   string `json:"time"`
	}
	if err := unmarshal(body, &v); err != nil {
		return watcher.Notice{}, fmt.Errorf("parse %s: %w", PathSpot, err)
	}
	if !token(v.Action) {
		return watcher.Notice{}, fmt.Errorf("parse %s: bad action %q", PathSpot, truncate(v.Action))
	}
	t, err := time.Parse(time.RFC3339, v.Time)
	if err != nil {
		return watcher.Notice{}, fmt.Errorf("parse %s: time: %w", PathSpot, err)
	}
	t = t.UTC()
	return watcher.Notice{
		Source:   watcher.SourceAWS,
		Kind:     watcher.KindSpotInterruption,
		State:    watcher.StateActive,
		ID:       "aws-spot-" + v.Action + "-" + t.Format(time.RFC3339),
		Action:   v.Action,
		Detected: detected,
		Deadline: t,
		Raw:      body,
	}, nil
}

// rebalanceNotice parses events/recommendations/rebalance, {"noticeTime":
// "2020-10-27T08:22:00Z"}. A rebalance recommendation is advisory and has no
// deadline.
func rebalanceNotice(body []byte, detected time.Time) (watcher.Notice, error) {
	var v struct {
		NoticeTime string `json:"noticeTime"`
	}
	if err := unmarshal(body, &v); err != nil {
		return watcher.Notice{}, fmt.Errorf("parse %s: %w", PathRebalance, err)
	}
	t, err := time.Parse(time.RFC3339, v.NoticeTime)
	if err != nil {
		return watcher.Notice{}, fmt.Errorf("parse %s: noticeTime: %w", PathRebalance, err)
	}
	return watcher.Notice{
		Source:   watcher.SourceAWS,
		Kind:     watcher.KindRebalance,
		State:    watcher.StateActive,
		ID:       "aws-rebalance-" + t.UTC().Format(time.RFC3339),
		Action:   "rebalance",
		Detected: detected,
		Raw:      body,
	}, nil
}

// scheduledNotices parses events/maintenance/scheduled, a JSON array of
// events. Each event becomes one notice with its EventId as ID and its
// NotBefore as deadline; canceled and completed events become Canceled
// notices. Events it cannot read are left out and reported in the error,
// next to the notices for the others.
func scheduledNotices(body []byte, detected time.Time) ([]watcher.Notice, error) {
	var events []json.RawMessage
	if err := unmarshal(body, &events); err != nil {
		return nil, fmt.Errorf("parse %s: %w", PathScheduled, err)
	}
	var ns []watcher.Notice
	var errs []error
	for i, raw := range events {
		var e struct {
			Code      string
			State     string
			EventID   string `json:"EventId"`
			NotBefore string
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			errs = append(errs, fmt.Errorf("event %d: %w", i, err))
			continue
		}
		n := watcher.Notice{
			Source:   watcher.SourceAWS,
			Kind:     watcher.KindMaintenance,
			ID:       e.EventID,
			Action:   e.Code,
			Detected: detected,
			Raw:      raw,
		}
		if !token(e.EventID) {
			errs = append(errs, fmt.Errorf("event %d: bad EventId %q", i, truncate(e.EventID)))
			continue
		}
		switch e.State {
		case "active":
			n.State = watcher.StateActive
		case "canceled", "completed":
			n.State = watcher.StateCanceled
		default:
			errs = append(errs, fmt.Errorf("event %s: unknown State %q", e.EventID, truncate(e.State)))
			continue
		}
		t, err := time.Parse(scheduledTimeLayout, e.NotBefore)
		if err != nil {
			errs = append(errs, fmt.Errorf("event %s: NotBefore: %w", e.EventID, err))
			continue
		}
		n.Deadline = t.UTC()
		ns = append(ns, n)
	}
	if err := errors.Join(errs...); err != nil {
		return ns, fmt.Errorf("parse %s: %w", PathScheduled, err)
	}
	return ns, nil
}

// asgNotice parses autoscaling/target-lifecycle-state, a plain word such as
// InService or Terminated. Only Terminated is a notice (ok true). IMDS gives
// no deadline: it is detected plus notice, the time the operator knows the
// group's termination lifecycle hook allows (zero: drain at once).
func asgNotice(body []byte, detected time.Time, notice time.Duration) (n watcher.Notice, ok bool, err error) {
	s := strings.TrimSpace(string(body))
	if s == "" {
		return watcher.Notice{}, false, fmt.Errorf("parse %s: %w", PathASG, errEmpty)
	}
	if !token(s) {
		return watcher.Notice{}, false, fmt.Errorf("parse %s: bad state %q", PathASG, truncate(s))
	}
	if s != "Terminated" {
		return watcher.Notice{}, false, nil
	}
	return watcher.Notice{
		Source:   watcher.SourceAWS,
		Kind:     watcher.KindTermination,
		State:    watcher.StateActive,
		ID:       IDASGTerminated,
		Action:   s,
		Detected: detected,
		Deadline: detected.Add(notice),
		Raw:      body,
	}, true, nil
}

func unmarshal(body []byte, v any) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		return errEmpty
	}
	return json.Unmarshal(body, v)
}

// token reports whether s is a short printable word: letters, digits and
// - _ : . only.
func token(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == ':', r == '.':
		default:
			return false
		}
	}
	return true
}

func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

package azure

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

var errEmpty = errors.New("empty body")

// document is the answer of /metadata/scheduledevents.
type document struct {
	Incarnation int64   `json:"DocumentIncarnation"`
	Events      []event `json:"Events"`
}

type event struct {
	EventID      string   `json:"EventId"`
	EventType    string   `json:"EventType"`
	ResourceType string   `json:"ResourceType"`
	Resources    []string `json:"Resources"`
	EventStatus  string   `json:"EventStatus"`
	NotBefore    string   `json:"NotBefore"`
	Description  string   `json:"Description"`
	EventSource  string   `json:"EventSource"`
	Duration     int64    `json:"DurationInSeconds"`
}

// parseDocument parses a scheduled events document.
func parseDocument(body []byte) (document, error) {
	var d document
	if strings.TrimSpace(string(body)) == "" {
		return d, errEmpty
	}
	if err := json.Unmarshal(body, &d); err != nil {
		return document{}, fmt.Errorf("parse scheduled events: %w", err)
	}
	return d, nil
}

// notices returns the notices for the events in d that name vm. Events of
// unknown type or status are left out and reported in the error. A Preempt
// or Terminate event that has started (no NotBefore) has its deadline at
// detection.
func notices(d document, vm string, detected time.Time) ([]watcher.Notice, error) {
	var ns []watcher.Notice
	var errs []error
	for _, e := range d.Events {
		if !names(e.Resources, vm) {
			continue
		}
		if e.EventID == "" || len(e.EventID) > 128 {
			errs = append(errs, fmt.Errorf("event with bad EventId %q", truncate(e.EventID)))
			continue
		}
		n := watcher.Notice{
			Source:   watcher.SourceAzure,
			ID:       e.EventID,
			Action:   e.EventType,
			Detected: detected,
			State:    watcher.StateActive,
		}
		switch e.EventType {
		case "Preempt":
			n.Kind = watcher.KindPreemption
		case "Terminate":
			n.Kind = watcher.KindTermination
		case "Reboot", "Redeploy":
			n.Kind = watcher.KindMaintenance
		case "Freeze":
			n.Kind = watcher.KindMaintenance
			n.State = watcher.StateInformational
		default:
			errs = append(errs, fmt.Errorf("event %s: unknown EventType %q", e.EventID, truncate(e.EventType)))
			continue
		}
		switch e.EventStatus {
		case "Scheduled", "Started":
		case "Canceled", "Completed":
			n.State = watcher.StateCanceled
		default:
			errs = append(errs, fmt.Errorf("event %s: unknown EventStatus %q", e.EventID, truncate(e.EventStatus)))
			continue
		}
		switch {
		case e.NotBefore != "":
			t, err := http.ParseTime(e.NotBefore)
			if err != nil {
				errs = append(errs, fmt.Errorf("event %s: NotBefore: %w", e.EventID, err))
				continue
			}
			n.Deadline = t.UTC()
		case e.EventStatus == "Scheduled":
			errs = append(errs, fmt.Errorf("event %s: scheduled without NotBefore", e.EventID))
			continue
		default:
			n.Deadline = detected // started: it is happening now
		}
		raw, err := json.Marshal(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("event %s: %w", e.EventID, err))
			continue
		}
		n.Raw = raw
		ns = append(ns, n)
	}
	return ns, errors.Join(errs...)
}

// names reports whether resources lists vm (Azure compares names without
// regard to case).
func names(resources []string, vm string) bool {
	for _, r := range resources {
		if strings.EqualFold(strings.TrimSpace(r), vm) {
			return true
		}
	}
	return false
}

func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

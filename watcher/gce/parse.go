package gce

import (
	"fmt"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

// Values of instance/maintenance-event.
const (
	maintenanceNone      = "NONE"
	maintenanceMigrate   = "MIGRATE_ON_HOST_MAINTENANCE"
	maintenanceTerminate = "TERMINATE_ON_HOST_MAINTENANCE"
)

// IDs of the notices this package sends. They are constant for the life of a
// VM, so an agent restarted in the middle of an event computes the same ID.
const (
	IDPreempted   = "gce-preempted"
	IDMaintenance = "gce-maintenance"
)

// parsePreempted parses the value of instance/preempted: TRUE or FALSE.
func parsePreempted(v string) (bool, error) {
	switch strings.TrimSpace(v) {
	case "TRUE":
		return true, nil
	case "FALSE":
		return false, nil
	default:
		return false, fmt.Errorf("parse instance/preempted %q: want TRUE or FALSE", truncate(v))
	}
}

// parseMaintenance parses the value of instance/maintenance-event and returns
// one of the three known values.
func parseMaintenance(v string) (string, error) {
	switch s := strings.TrimSpace(v); s {
	case maintenanceNone, maintenanceMigrate, maintenanceTerminate:
		return s, nil
	default:
		return "", fmt.Errorf("parse instance/maintenance-event %q: unknown value", truncate(v))
	}
}

// preemptionNotice maps a value of instance/preempted to a notice; ok is false
// when there is nothing to send.
func preemptionNotice(v string, detected time.Time, notice time.Duration) (n watcher.Notice, ok bool, err error) {
	preempted, err := parsePreempted(v)
	if err != nil || !preempted {
		return watcher.Notice{}, false, err
	}
	return watcher.Notice{
		Source:   watcher.SourceGCE,
		Kind:     watcher.KindPreemption,
		State:    watcher.StateActive,
		ID:       IDPreempted,
		Action:   "TRUE",
		Detected: detected,
		Deadline: detected.Add(notice),
		Raw:      []byte(v),
	}, true, nil
}

// maintenanceNotice maps a value of instance/maintenance-event to a notice.
// prev is the state last sent for IDMaintenance (empty if none): NONE cancels
// an earlier notice and means nothing otherwise.
func maintenanceNotice(v string, prev watcher.State, detected time.Time, notice time.Duration) (n watcher.Notice, ok bool, err error) {
	event, err := parseMaintenance(v)
	if err != nil {
		return watcher.Notice{}, false, err
	}
	n = watcher.Notice{
		Source:   watcher.SourceGCE,
		Kind:     watcher.KindMaintenance,
		ID:       IDMaintenance,
		Action:   event,
		Detected: detected,
		Raw:      []byte(v),
	}
	switch event {
	case maintenanceTerminate:
		n.State = watcher.StateActive
		n.Deadline = detected.Add(notice)
	case maintenanceMigrate:
		// Live migration: the VM keeps running; the deadline says when the
		// migration is expected, for information only.
		n.State = watcher.StateInformational
		n.Deadline = detected.Add(notice)
	default: // NONE
		if prev != watcher.StateActive && prev != watcher.StateInformational {
			return watcher.Notice{}, false, nil
		}
		n.State = watcher.StateCanceled
	}
	return n, true, nil
}

func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

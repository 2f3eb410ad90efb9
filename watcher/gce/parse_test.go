package gce

import (
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

func TestParsePreempted(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    bool
		wantErr bool
	}{
		{"TRUE", true, false},
		{"FALSE", false, false},
		{"TRUE\n", true, false},
		{"true", false, true},
		{"", false, true},
		{"{}", false, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parsePreempted(tc.in)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Fatalf("parsePreempted(%q) = %v, %v", tc.in, got, err)
			}
		})
	}
}

func TestMaintenanceNoticeNeedsEarlierNotice(t *testing.T) {
	for _, prev := range []watcher.State{"", watcher.StateCanceled} {
		if _, ok, err := maintenanceNotice("NONE", prev, t0, time.Minute); ok || err != nil {
			t.Fatalf("NONE after %q sent a notice (err %v)", prev, err)
		}
	}
}

func FuzzPreemptionNotice(f *testing.F) {
	for _, s := range []string{"TRUE", "FALSE", "", "TRUE\n", " TRUE ", "true", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		n, ok, err := preemptionNotice(v, t0, 30*time.Second)
		if ok && err != nil {
			t.Fatalf("notice and error for %q", v)
		}
		// Only TRUE, give or take white space, is a preemption.
		if ok != (strings.TrimSpace(v) == "TRUE") {
			t.Fatalf("preemptionNotice(%q) ok=%v", v, ok)
		}
		if ok && (n.ID != IDPreempted || !n.Deadline.Equal(t0.Add(30*time.Second)) || string(n.Raw) != v) {
			t.Fatalf("bad notice %+v", n)
		}
	})
}

func FuzzMaintenanceNotice(f *testing.F) {
	for _, s := range []string{"NONE", "MIGRATE_ON_HOST_MAINTENANCE", "TERMINATE_ON_HOST_MAINTENANCE", "", "TERMINATE", "none\n"} {
		f.Add(s, "active")
	}
	f.Fuzz(func(t *testing.T, v, prev string) {
		n, ok, err := maintenanceNotice(v, watcher.State(prev), t0, time.Minute)
		if ok && err != nil {
			t.Fatalf("notice and error for %q", v)
		}
		if !ok {
			return
		}
		switch strings.TrimSpace(v) {
		case maintenanceTerminate:
			if n.State != watcher.StateActive {
				t.Fatalf("%q gave %v", v, n)
			}
		case maintenanceMigrate:
			if n.State != watcher.StateInformational {
				t.Fatalf("%q gave %v", v, n)
			}
		case maintenanceNone:
			if n.State != watcher.StateCanceled || (prev != string(watcher.StateActive) && prev != string(watcher.StateInformational)) {
				t.Fatalf("%q after %q gave %v", v, prev, n)
			}
		default:
			t.Fatalf("unknown value %q gave %v", v, n)
		}
	})
}

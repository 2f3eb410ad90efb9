package ec2

import (
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

func FuzzSpotNotice(f *testing.F) {
	for _, s := range []string{itn, `{"action":"stop","time":"2026-03-01T12:02:00+01:00"}`, `{}`, ``, `{"action":"terminate","time":"18 Sep 2017 08:22:00 GMT"}`, `null`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := spotNotice(body, t0)
		if err != nil {
			return
		}
		if n.Kind != watcher.KindSpotInterruption || n.State != watcher.StateActive || !token(n.Action) ||
			n.ID != "aws-spot-"+n.Action+"-"+n.Deadline.Format(time.RFC3339) || n.Deadline.Location() != time.UTC {
			t.Fatalf("bad notice %+v from %q", n, body)
		}
		// The same body gives the same ID.
		if n2, _ := spotNotice(body, t0.Add(time.Hour)); n2.ID != n.ID {
			t.Fatalf("ID not stable: %s, %s", n.ID, n2.ID)
		}
	})
}

func FuzzRebalanceNotice(f *testing.F) {
	for _, s := range []string{rebalance, `{"noticeTime":""}`, ``, `{"noticeTime": 5}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := rebalanceNotice(body, t0)
		if err != nil {
			return
		}
		if n.Kind != watcher.KindRebalance || !strings.HasPrefix(n.ID, "aws-rebalance-") || !n.Deadline.IsZero() {
			t.Fatalf("bad notice %+v from %q", n, body)
		}
	})
}

func FuzzScheduledNotices(f *testing.F) {
	for _, s := range []string{sprintf(scheduled, "active"), sprintf(scheduled, "canceled"), sprintf(scheduled, "completed"), `[]`, `null`, ``, `[{}]`, `[1, "x", null]`,
		`[{"EventId":"e-1","State":"active","Code":"system-reboot","NotBefore":"2026-03-01T12:30:00Z"}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ns, err := scheduledNotices(body, t0)
		for _, n := range ns {
			if n.Kind != watcher.KindMaintenance || !token(n.ID) || n.Deadline.IsZero() ||
				(n.State != watcher.StateActive && n.State != watcher.StateCanceled) {
				t.Fatalf("bad notice %+v from %q (err %v)", n, body, err)
			}
		}
	})
}

func FuzzASGNotice(f *testing.F) {
	for _, s := range []string{"Terminated", "InService", "", "Terminated\n", "Warmed:Terminated", "Terminated Terminated"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		n, ok, err := asgNotice(body, t0, time.Minute)
		if ok && err != nil {
			t.Fatal("notice and error")
		}
		if ok != (strings.TrimSpace(string(body)) == "Terminated") {
			t.Fatalf("asgNotice(%q) ok=%v", body, ok)
		}
		if ok && (n.ID != IDASGTerminated || !n.Deadline.Equal(t0.Add(time.Minute))) {
			t.Fatalf("bad notice %+v", n)
		}
	})
}

func TestScheduledPartial(t *testing.T) {
	body := `[{"EventId":"e-1","State":"active","Code":"system-reboot","NotBefore":"1 Mar 2026 12:30:00 GMT"},{"EventId":"e-2","State":"active","NotBefore":"soon"}]`
	ns, err := scheduledNotices([]byte(body), t0)
	if err == nil || len(ns) != 1 || ns[0].ID != "e-1" {
		t.Fatalf("got %v, %v; want e-1 and an error for e-2", ns, err)
	}
}

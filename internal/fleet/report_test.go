package fleet

import (
	"strings"
	"testing"
	"time"
)

// TestReportRenders renders a report of one node and checks its figures.
func TestReportRenders(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &Report{
		Nodes: 2, Preempted: 1, Window: time.Minute, IdleWindow: time.Minute,
		Records: []NodeRecord{{Node: "n", Cloud: GCE, Notice: t0, Deadline: t0.Add(30 * time.Second),
			Cordoned: t0.Add(time.Second), Emptied: t0.Add(2 * time.Second), LeftAtDeadline: []string{"ns/p"}}},
	}
	md := r.Markdown()
	for _, want := range []string{
		"| gce (30 s) | 1 | 1.00 s | 1.00 s | 1.00 s | 2.00 s | 2.00 s | 2.00 s | 1 | 1 | 0 |",
		"- n: ns/p",
		"Priority and Fairness (apiserver_flowcontrol_rejected_requests_total): none.",
		"until the agents were at rest: none.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

package azure

import (
	"testing"

	"github.com/lastcall-dev/lastcall/watcher"
)

func FuzzNotices(f *testing.F) {
	for _, s := range []string{
		`{"DocumentIncarnation": 1, "Events": [` + ev("e-1", "Preempt", "Scheduled", notBefore, "vm-1") + `]}`,
		`{"DocumentIncarnation": 2, "Events": [` + ev("e-1", "Freeze", "Started", "", "vm-1") + `,` + ev("e-2", "Reboot", "Scheduled", notBefore, "vm-2") + `]}`,
		`{"DocumentIncarnation": 0, "Events": []}`, `{}`, ``, `null`, `{"Events": [{}]}`,
	} {
		f.Add([]byte(s), "vm-1")
	}
	f.Fuzz(func(t *testing.T, body []byte, vm string) {
		d, err := parseDocument(body)
		if err != nil {
			return
		}
		ns, _ := notices(d, vm, t0)
		for _, n := range ns {
			if n.Source != watcher.SourceAzure || n.ID == "" || n.Deadline.IsZero() || n.Kind == "" {
				t.Fatalf("bad notice %+v from %q", n, body)
			}
			found := false
			for _, e := range d.Events {
				if e.EventID == n.ID && names(e.Resources, vm) {
					found = true
				}
			}
			if !found {
				t.Fatalf("notice %v for an event that does not name %q", n, vm)
			}
		}
	})
}

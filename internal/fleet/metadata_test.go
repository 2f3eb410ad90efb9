package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/ec2"
	"github.com/lastcall-dev/lastcall/watcher/gce"
)

// TestMetadataSpeaksToTheWatchers runs the agent's own GCE and EC2
// watchers against the fleet's metadata servers: nothing but the synced
// marker before Preempt, then one active termination notice with the
// deadline the fleet measures against.
func TestMetadataSpeaksToTheWatchers(t *testing.T) {
	for _, cloud := range []Cloud{GCE, AWS} {
		t.Run(string(cloud), func(t *testing.T) {
			m, err := ServeMetadata(cloud, "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			var w watcher.Watcher
			if cloud == GCE {
				w, err = gce.New(gce.Options{Host: m.Addr()})
			} else {
				w, err = ec2.New(ec2.Options{Endpoint: "http://" + m.Addr(), PollInterval: 50 * time.Millisecond})
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			out := make(chan watcher.Notice, 16)
			go func() { _ = w.Watch(ctx, out) }()
			next := func() watcher.Notice {
				select {
				case n := <-out:
					return n
				case <-ctx.Done():
					t.Fatal("no notice")
				}
				return watcher.Notice{}
			}
			if n := next(); n.State != watcher.StateSynced {
				t.Fatalf("first notice %v, want the synced marker", n)
			}
			deadline := time.Now().Add(2 * time.Minute).Truncate(time.Second)
			m.Preempt(deadline)
			n := next()
			if n.State != watcher.StateActive || n.Deadline.IsZero() {
				t.Fatalf("after Preempt: %v, want an active notice with a deadline", n)
			}
			if cloud == AWS && !n.Deadline.Equal(deadline) {
				t.Errorf("deadline %v, want the instance-action time %v", n.Deadline, deadline)
			}
			if cloud == GCE && n.Kind != watcher.KindPreemption {
				t.Errorf("kind %s, want preemption", n.Kind)
			}
		})
	}
}

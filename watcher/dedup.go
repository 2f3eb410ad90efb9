package watcher

import "sync"

// Dedup remembers the last State sent for each notice ID, so a source that
// reads the same event again (a poll, a hanging GET that timed out on the
// server) does not send it twice. It is safe for concurrent use.
type Dedup struct {
	mu   sync.Mutex
	last map[string]State // guarded by mu
}

// First reports whether n is new: its ID was never recorded, or was last
// recorded with a different State. It records n's State either way.
func (d *Dedup) First(n Notice) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		d.last = make(map[string]State)
	}
	if s, ok := d.last[n.ID]; ok && s == n.State {
		return false
	}
	d.last[n.ID] = n.State
	return true
}

// Last returns the State last recorded for id, and whether there was one.
func (d *Dedup) Last(id string) (State, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.last[id]
	return s, ok
}

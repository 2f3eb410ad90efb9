package demo

import (
	"context"
	"sync"
	"time"
)

// Commit is one acknowledgement the server confirmed.
type Commit struct {
	// Pod is the worker pod, namespace-less.
	Pod string
	// Node is the pod's node.
	Node string
	// At is when the server confirmed the acknowledgement.
	At time.Time
}

// Ledger records what the workers did with each message. It is safe for
// concurrent use.
type Ledger struct {
	mu      sync.Mutex // guards the fields below
	started map[string]int
	commits map[string][]Commit
	handed  map[string]int
	dropped map[string]int // held by a worker whose node died
	changed chan struct{}  // closed and replaced on every change
}

func newLedger() *Ledger {
	return &Ledger{
		started: map[string]int{}, commits: map[string][]Commit{},
		handed: map[string]int{}, dropped: map[string]int{},
		changed: make(chan struct{}),
	}
}

func (l *Ledger) noteLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *Ledger) start(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started[id]++
	l.noteLocked()
}

func (l *Ledger) commit(id string, c Commit) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.commits[id] = append(l.commits[id], c)
	l.noteLocked()
}

func (l *Ledger) handBack(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.handed[id]++
	l.noteLocked()
}

func (l *Ledger) drop(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropped[id]++
	l.noteLocked()
}

// Committed returns how many distinct messages were acknowledged.
func (l *Ledger) Committed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.commits)
}

// WaitCommitted blocks until n distinct messages are acknowledged or ctx
// is done; it returns ctx's error in that case.
func (l *Ledger) WaitCommitted(ctx context.Context, n int) error {
	for {
		l.mu.Lock()
		ok, ch := len(l.commits) >= n, l.changed
		l.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Summary is what became of the messages.
type Summary struct {
	// Messages is how many were published.
	Messages int
	// Processed is how many were acknowledged at least once.
	Processed int
	// Duplicates lists messages acknowledged more than once.
	Duplicates []string
	// Lost lists messages never acknowledged.
	Lost []string
	// HandedBack counts hand-backs (Nak) by draining workers.
	HandedBack int
	// Dropped counts messages held by a worker when its node died.
	Dropped int
	// Redelivered counts deliveries beyond the first.
	Redelivered int
	// Late lists acknowledgements after the deadline of their node.
	Late []string
	// HalfDone lists messages started more often than finished or handed
	// back, the node deaths aside.
	HalfDone []string
}

// Summarize returns what became of the messages ids, given each node's
// deadline (zero: not preempted).
func (l *Ledger) Summarize(ids []string, deadlines map[string]time.Time) Summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Summary{Messages: len(ids)}
	for _, id := range ids {
		cs := l.commits[id]
		switch {
		case len(cs) == 0:
			s.Lost = append(s.Lost, id)
		case len(cs) > 1:
			s.Duplicates = append(s.Duplicates, id)
		}
		if len(cs) > 0 {
			s.Processed++
		}
		for _, c := range cs {
			if d := deadlines[c.Node]; !d.IsZero() && c.At.After(d) {
				s.Late = append(s.Late, id+"@"+c.Pod)
			}
		}
		s.HandedBack += l.handed[id]
		s.Dropped += l.dropped[id]
		if st := l.started[id]; st > 1 {
			s.Redelivered += st - 1
		}
		if l.started[id] != len(cs)+l.handed[id]+l.dropped[id] {
			s.HalfDone = append(s.HalfDone, id)
		}
	}
	return s
}

package demo

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Delivery is one delivery of a message to a worker that lived to see it.
type Delivery struct {
	// Pod is the worker pod, namespace-less.
	Pod string
	// Node is the pod's node.
	Node string
	// N is the server's count of deliveries of the message, this one
	// included: more than 1 is a redelivery.
	N uint64
	// At is when the worker got it.
	At time.Time
}

// Result is one write of a message's result to the workers' results
// store. The store is keyed by message id and keeps the first write: a
// later one is a repeat it ignores (the work was done again because the
// message was redelivered after a worker saved its result but died before
// its acknowledgement reached the server).
type Result struct {
	// Pod is the worker pod, namespace-less.
	Pod string
	// Node is the pod's node.
	Node string
	// At is when it was written.
	At time.Time
}

// Commit is one acknowledgement the server confirmed.
type Commit struct {
	// Pod is the worker pod, namespace-less.
	Pod string
	// Node is the pod's node.
	Node string
	// At is when the server confirmed the acknowledgement.
	At time.Time
}

// Ledger records what the workers did with each message, and is their
// results store. It is safe for concurrent use.
type Ledger struct {
	mu         sync.Mutex // guards the fields below
	deliveries map[string][]Delivery
	results    map[string][]Result // the first is kept, the rest are repeats
	commits    map[string][]Commit
	handed     map[string]int
	dropped    map[string]int // held by a worker that died or whose ack failed
	unconfirm  map[string]int // of those, acknowledgements sent without a confirmation
	changed    chan struct{}  // closed and replaced on every change
}

func newLedger() *Ledger {
	return &Ledger{
		deliveries: map[string][]Delivery{}, results: map[string][]Result{}, commits: map[string][]Commit{},
		handed: map[string]int{}, dropped: map[string]int{}, unconfirm: map[string]int{},
		changed: make(chan struct{}),
	}
}

func (l *Ledger) noteLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *Ledger) deliver(id string, d Delivery) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deliveries[id] = append(l.deliveries[id], d)
	l.noteLocked()
}

// saveResult writes the message's result to the store, idempotently: the
// first write of a message is the one kept, a later one only recorded.
func (l *Ledger) saveResult(id string, r Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.results[id] = append(l.results[id], r)
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

// drop records that a delivery of the message ended with neither a
// confirmed acknowledgement nor a hand-back: its worker died, or its
// acknowledgement failed. ackSent says the acknowledgement had been sent:
// the server may have it.
func (l *Ledger) drop(id string, ackSent bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropped[id]++
	if ackSent {
		l.unconfirm[id]++
	}
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
	return l.wait(ctx, func() bool { return len(l.commits) >= n })
}

// waitSettled blocks until every message of ids has a confirmed
// acknowledgement or one sent without a confirmation, or ctx is done.
func (l *Ledger) waitSettled(ctx context.Context, ids []string) error {
	return l.wait(ctx, func() bool {
		for _, id := range ids {
			if len(l.commits[id]) == 0 && l.unconfirm[id] == 0 {
				return false
			}
		}
		return true
	})
}

// wait blocks until cond, called with l.mu held, holds or ctx is done.
func (l *Ledger) wait(ctx context.Context, cond func() bool) error {
	for {
		l.mu.Lock()
		ok, ch := cond(), l.changed
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

// Trace is everything the ledger knows about one message.
type Trace struct {
	// Deliveries are its deliveries to live workers, in order.
	Deliveries []Delivery
	// Results are the writes of its result, in order: the first is the
	// one the store kept.
	Results []Result
	// Commits are its confirmed acknowledgements.
	Commits []Commit
	// HandedBack counts its hand-backs (Nak).
	HandedBack int
	// Dropped counts its deliveries that ended with the worker's death or
	// a failed acknowledgement.
	Dropped int
	// Unconfirmed counts, of those, the ones whose acknowledgement had
	// been sent.
	Unconfirmed int
}

// Trace returns what the ledger knows about message id.
func (l *Ledger) Trace(id string) Trace {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Trace{
		Deliveries: slices.Clone(l.deliveries[id]), Results: slices.Clone(l.results[id]), Commits: slices.Clone(l.commits[id]),
		HandedBack: l.handed[id], Dropped: l.dropped[id], Unconfirmed: l.unconfirm[id],
	}
}

// Summary is what became of the messages.
type Summary struct {
	// Messages is how many were published.
	Messages int
	// Processed is how many were acknowledged at least once (confirmed,
	// or sent by a worker that died before the confirmation).
	Processed int
	// Duplicates lists messages whose acknowledgement the server confirmed
	// more than once.
	Duplicates []string
	// Repeats lists messages whose result was written more than once; the
	// results store kept the first write only.
	Repeats []string
	// Unconfirmed lists messages whose only acknowledgement was sent by a
	// worker that died (or whose wait for the answer failed) before the
	// server confirmed it: acknowledged if the server has nothing pending.
	Unconfirmed []string
	// Lost lists messages with no result, or never acknowledged.
	Lost []string
	// HandedBack counts hand-backs (Nak) by draining workers.
	HandedBack int
	// Dropped counts deliveries that ended with the worker's death or a
	// failed acknowledgement.
	Dropped int
	// Redelivered counts deliveries the server made more than once
	// (Delivery.N > 1) that reached a live worker.
	Redelivered int
	// Late lists acknowledgements after the deadline of their node.
	Late []string
	// HalfDone lists messages delivered more often than acknowledged,
	// handed back or dropped.
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
		case len(l.results[id]) == 0 || len(cs) == 0 && l.unconfirm[id] == 0:
			s.Lost = append(s.Lost, id)
		case len(cs) == 0:
			s.Unconfirmed = append(s.Unconfirmed, id)
		case len(cs) > 1:
			s.Duplicates = append(s.Duplicates, id)
		}
		if len(cs) > 0 || l.unconfirm[id] > 0 {
			s.Processed++
		}
		if len(l.results[id]) > 1 {
			s.Repeats = append(s.Repeats, id)
		}
		for _, c := range cs {
			if d := deadlines[c.Node]; !d.IsZero() && c.At.After(d) {
				s.Late = append(s.Late, id+"@"+c.Pod)
			}
		}
		s.HandedBack += l.handed[id]
		s.Dropped += l.dropped[id]
		for _, d := range l.deliveries[id] {
			if d.N > 1 {
				s.Redelivered++
			}
		}
		if len(l.deliveries[id]) != len(cs)+l.handed[id]+l.dropped[id] {
			s.HalfDone = append(s.HalfDone, id)
		}
	}
	return s
}

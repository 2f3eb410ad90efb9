package demo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/lastcall-dev/lastcall/sidecar"
)

func newSidecarClient(addr string) (*sidecar.Client, error) {
	sc, err := sidecar.NewClient(addr)
	if err != nil {
		return nil, fmt.Errorf("sidecar client: %w", err)
	}
	sc.Wait = 5 * time.Second
	return sc, nil
}

// runPod runs the pod's workers until its node dies or the cluster closes:
// they pull while the sidecar says running; once it says draining they stop
// pulling, finish or hand back what they hold, and the pod reports done.
// If the drain is then called off, they pull again.
func (c *Cluster) runPod(n *Node, p *Pod, sc *sidecar.Client) {
	ctx := n.ctx
	for ctx.Err() == nil {
		drain := sc.Draining(ctx)
		var told sync.Once
		context.AfterFunc(drain, func() {
			if st, ok := sidecar.DrainingState(drain); ok {
				told.Do(func() {
					now := time.Now()
					c.emit(Event{Time: now, Node: n.Name, Pod: p.Name, What: "told", Detail: "sidecar says draining, deadline " + st.Deadline.Format("15:04:05.000")})
					c.emit(Event{Time: now, Node: n.Name, Pod: p.Name, What: "stopped pulling", Detail: "pull requests cancelled"})
				})
			}
		})
		var wg sync.WaitGroup
		for range c.opts.WorkersPerPod {
			wg.Go(func() { c.work(ctx, drain, n, p) })
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
		if _, ok := sidecar.DrainingState(drain); ok {
			c.emit(Event{Time: time.Now(), Node: n.Name, Pod: p.Name, What: "idle", Detail: "workers hold nothing"})
			if err := sc.Done(ctx); err != nil {
				c.log.Warn("report done", "pod", p.Name, "err", err)
			} else {
				c.emit(Event{Time: time.Now(), Node: n.Name, Pod: p.Name, What: "done", Detail: "reported to the sidecar"})
			}
			if sidecar.WaitResumed(ctx, drain) != nil {
				return
			}
		}
		c.emit(Event{Time: time.Now(), Node: n.Name, Pod: p.Name, What: "resumed", Detail: "the drain was called off: pulling again"})
	}
}

// work is one worker: it pulls one message at a time while drain is not
// done and works on it in 10ms steps. Once draining, it finishes a message
// only if the rest of the work fits before the deadline less the margin,
// and hands it back (Nak) otherwise. When ctx ends (the node died) it
// stops where it is: the kill has accounted for what it held.
func (c *Cluster) work(ctx, drain context.Context, n *Node, p *Pod) {
	for drain.Err() == nil && ctx.Err() == nil {
		// A short pull that the drain does not cancel: a pull cancelled
		// while the server sends a message strands that message until its
		// ack wait runs out. What arrives after the drain started goes
		// straight back (Nak).
		msg, err := p.cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() == nil && drain.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
				time.Sleep(50 * time.Millisecond) // the server is restarting or gone: do not spin
			}
			continue
		}
		id := string(msg.Data())
		job := jobOf(msg)
		d := Delivery{Pod: p.Name, Node: n.Name, At: time.Now()}
		if md, err := msg.Metadata(); err == nil {
			d.N = md.NumDelivered
		}
		h := &held{id: id, cost: job.Cost}
		h.phase.Store(PhaseWorking)
		if !n.alive(func() { c.ledger.deliver(id, d); p.busy.Store(id, h) }) {
			return // the node died as the message arrived: the server redelivers it
		}
		if drain.Err() != nil {
			err := msg.Nak()
			n.alive(func() { c.handedBack(p, id, err) })
			return
		}
		c.handle(ctx, drain, n, p, msg, h, job)
	}
}

// handedBack records the end of a hand-back (Nak) that err says succeeded
// or not.
func (c *Cluster) handedBack(p *Pod, id string, err error) {
	if err != nil {
		c.ledger.drop(id, false)
	} else {
		c.ledger.handBack(id)
	}
	p.busy.Delete(id)
}

// handle works on the message: job.Cost of work, then its result saved to
// the results store (idempotent: keyed by message id), then job.Tail of
// work that follows the commit, then the acknowledgement. A worker that
// dies after the save leaves the message to be redelivered and done again;
// the store ignores the repeated result, and the message is acknowledged
// once, by the worker that got the redelivery.
func (c *Cluster) handle(ctx, drain context.Context, n *Node, p *Pod, msg jetstream.Msg, h *held, job Job) {
	const step = 10 * time.Millisecond
	id := h.id
	lastProgress := time.Now()
	progress := func() {
		if time.Since(lastProgress) > 500*time.Millisecond {
			_ = msg.InProgress() // long work: keep the message from being redelivered
			lastProgress = time.Now()
		}
	}
	for left := job.Cost; left > 0; left -= step {
		if ctx.Err() != nil {
			return
		}
		if st, ok := sidecar.DrainingState(drain); ok && time.Until(st.Deadline)-c.opts.Margin < left+job.Tail {
			err := msg.Nak()
			if !n.alive(func() { c.handedBack(p, id, err) }) || err != nil {
				return
			}
			c.emit(Event{Time: time.Now(), Node: n.Name, Pod: p.Name, What: "handed back", Detail: fmt.Sprintf("message %s (%v of work left)", id, (left + job.Tail).Round(time.Millisecond))})
			return
		}
		time.Sleep(min(left, step))
		progress()
	}
	if !n.alive(func() {
		c.ledger.saveResult(id, Result{Pod: p.Name, Node: n.Name, At: time.Now()})
		h.phase.Store(PhaseCommitted)
	}) {
		return
	}
	// What follows the commit is finished even when draining: handing the
	// message back now would only have the work done again.
	for left := job.Tail; left > 0; left -= step {
		if ctx.Err() != nil {
			return
		}
		time.Sleep(min(left, step))
		progress()
	}
	if !n.alive(func() { h.phase.Store(PhaseAcking) }) {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := msg.DoubleAck(actx)
	if !n.alive(func() {
		if err != nil {
			c.ledger.drop(id, true)
		} else {
			c.ledger.commit(id, Commit{Pod: p.Name, Node: n.Name, At: time.Now()})
		}
		p.busy.Delete(id)
	}) || err != nil {
		return
	}
	if drain.Err() != nil {
		c.emit(Event{Time: time.Now(), Node: n.Name, Pod: p.Name, What: "finished", Detail: fmt.Sprintf("message %s (%v of work)", id, (job.Cost + job.Tail).Round(time.Millisecond))})
	}
}

// watchNodes reports cordons as they happen.
func (c *Cluster) watchNodes() {
	ctx := c.ctx
	seen := map[string]bool{}
	for ctx.Err() == nil {
		w, err := c.env.Client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			node, ok := ev.Object.(*corev1.Node)
			if !ok || c.byName[node.Name] == nil || seen[node.Name] || !node.Spec.Unschedulable {
				continue
			}
			seen[node.Name] = true
			c.emit(Event{Time: time.Now(), Node: node.Name, What: "cordoned", Detail: "node unschedulable and tainted"})
		}
		w.Stop()
	}
}

// watchPods reports evictions (deletion started) and pods gone.
func (c *Cluster) watchPods() {
	ctx := c.ctx
	evicted := map[string]bool{}
	for ctx.Err() == nil {
		w, err := c.env.Client.CoreV1().Pods(c.ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			switch {
			case ev.Type == watch.Deleted:
				c.emit(Event{Time: time.Now(), Node: pod.Spec.NodeName, Pod: pod.Name, What: "gone", Detail: "pod deleted"})
			case pod.DeletionTimestamp != nil && !evicted[pod.Name]:
				evicted[pod.Name] = true
				grace := int64(0)
				if pod.DeletionGracePeriodSeconds != nil {
					grace = *pod.DeletionGracePeriodSeconds
				}
				c.emit(Event{Time: time.Now(), Node: pod.Spec.NodeName, Pod: pod.Name, What: "evicted", Detail: fmt.Sprintf("grace %ds", grace)})
			}
		}
		w.Stop()
	}
}

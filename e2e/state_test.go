package e2e

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastcall-dev/lastcall/agent"
	"github.com/lastcall-dev/lastcall/drainer"
)

// state describes, for a wait that timed out, what the e2e waits on: the
// messages not yet acknowledged and the stream's counts, the last ledger
// events, the pods with their phase, deletion, readiness and containers,
// the node's cordon, taints and lastcall's condition, and the agent's last
// log lines. A flake is then diagnosed from the test's log alone. It never
// fails: what it cannot read it says so.
func (c *cluster) state() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	b.WriteString("state at " + time.Now().Format("15:04:05.000") + ":\n")
	c.messagesState(ctx, &b)
	for _, ns := range []string{workNS, releaseNS} {
		podsState(ctx, c, ns, &b)
	}
	c.nodeState(ctx, &b)
	c.agentLog(ctx, &b, 25)
	return b.String()
}

func (c *cluster) messagesState(ctx context.Context, b *strings.Builder) {
	r := c.ledger.check(c.published)
	fmt.Fprintf(b, "  messages so far: %s\n", r)
	for i, p := range r.problems {
		if i == 10 {
			fmt.Fprintf(b, "    ... and %d more\n", len(r.problems)-i)
			break
		}
		b.WriteString("    " + strings.Replace(p, "lost (never acknowledged)", "not acknowledged yet", 1) + "\n")
	}
	if c.js != nil {
		if cons, err := c.js.Consumer(ctx, "JOBS", "workers"); err != nil {
			fmt.Fprintf(b, "  stream: consumer: %v\n", err)
		} else if info, err := cons.Info(ctx); err != nil {
			fmt.Fprintf(b, "  stream: consumer info: %v\n", err)
		} else {
			fmt.Fprintf(b, "  stream: %d pending, %d delivered and not acknowledged, %d redelivered\n",
				info.NumPending, info.NumAckPending, info.NumRedelivered)
		}
	}
	es := c.ledger.since(time.Time{})
	if len(es) > 15 {
		es = es[len(es)-15:]
	}
	b.WriteString("  last ledger events:\n")
	for _, e := range es {
		fmt.Fprintf(b, "    %s %-32s %-12s %d %s\n", e.At.Format("15:04:05.000"), e.Pod, e.What, e.Seq, e.Detail)
	}
}

func podsState(ctx context.Context, c *cluster, ns string, b *strings.Builder) {
	pods, err := c.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(b, "  pods in %s: %v\n", ns, err)
		return
	}
	fmt.Fprintf(b, "  pods in %s: %d\n", ns, len(pods.Items))
	for _, p := range pods.Items {
		del := "-"
		if p.DeletionTimestamp != nil {
			del = "deleting since " + p.DeletionTimestamp.Format("15:04:05") + " grace " + fmt.Sprint(ptrOr(p.DeletionGracePeriodSeconds)) + "s"
		}
		fmt.Fprintf(b, "    %s: %s ready=%v node=%q %s\n", p.Name, p.Status.Phase, ready(&p), p.Spec.NodeName, del)
		statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
		for _, s := range statuses {
			fmt.Fprintf(b, "      %s: %s restarts=%d\n", s.Name, containerState(s.State), s.RestartCount)
		}
	}
}

func containerState(s corev1.ContainerState) string {
	switch {
	case s.Running != nil:
		return "running since " + s.Running.StartedAt.Format("15:04:05")
	case s.Waiting != nil:
		return "waiting: " + s.Waiting.Reason + " " + s.Waiting.Message
	case s.Terminated != nil:
		return fmt.Sprintf("terminated: %s exit %d at %s", s.Terminated.Reason, s.Terminated.ExitCode, s.Terminated.FinishedAt.Format("15:04:05"))
	}
	return "unknown"
}

func (c *cluster) nodeState(ctx context.Context, b *strings.Builder) {
	n, err := c.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		fmt.Fprintf(b, "  node: %v\n", err)
		return
	}
	var taints []string
	for _, t := range n.Spec.Taints {
		taints = append(taints, t.ToString())
	}
	sort.Strings(taints)
	fmt.Fprintf(b, "  node %s: unschedulable=%v taints=%v\n", n.Name, n.Spec.Unschedulable, taints)
	if rec, ok := n.Annotations[drainer.RecordAnnotation]; ok {
		fmt.Fprintf(b, "    %s: %s\n", drainer.RecordAnnotation, rec)
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == agent.ConditionType || cond.Type == corev1.NodeReady {
			fmt.Fprintf(b, "    condition %s=%s (%s) %s\n", cond.Type, cond.Status, cond.Reason, cond.Message)
		}
	}
}

// agentLog writes the last n lines of the agent's log.
func (c *cluster) agentLog(ctx context.Context, b *strings.Builder, n int64) {
	pods, err := c.client.CoreV1().Pods(releaseNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node-agent"})
	if err != nil || len(pods.Items) == 0 {
		fmt.Fprintf(b, "  agent log: no agent pod (%v)\n", err)
		return
	}
	for _, p := range pods.Items {
		rc, err := c.client.CoreV1().Pods(releaseNS).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &n}).Stream(ctx)
		if err != nil {
			fmt.Fprintf(b, "  agent log of %s: %v\n", p.Name, err)
			continue
		}
		out, _ := io.ReadAll(rc)
		rc.Close()
		fmt.Fprintf(b, "  agent log of %s, last %d lines:\n", p.Name, n)
		for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			b.WriteString("    " + l + "\n")
		}
	}
}

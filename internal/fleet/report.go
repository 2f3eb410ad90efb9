package fleet

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// Report is what `make fleet` prints.
type Report struct {
	// Nodes, Preempted and Pods size the run.
	Nodes, Preempted, Pods int
	// Setup is the time to bring the fleet up, agents included.
	Setup time.Duration
	// Records are the preempted nodes'.
	Records []NodeRecord
	// Window is from the first notice to the last deadline plus a margin;
	// Before and After scrape the apiserver at its ends.
	Window        time.Duration
	Before, After Metrics
	// Agents are the agents' requests during Window (audit log).
	Agents []kubetest.AuditEvent
	// Start are the agents' requests from their start until all were
	// ready, in StartTook.
	Start     []kubetest.AuditEvent
	StartTook time.Duration
	// StartSpread is the time over which the agents were started;
	// NotReady counts those not ready after StartTook.
	StartSpread time.Duration
	NotReady    int
	// Idle are the agents' requests in Idle minutes at rest.
	Idle       []kubetest.AuditEvent
	IdleWindow time.Duration
	// NoAgents and Rest scrape the apiserver before the agents started and
	// at rest with all of them.
	NoAgents, Rest Metrics
	// Evictions are the preempted nodes' agents' lastcall_evictions_total
	// by outcome.
	Evictions map[string]float64
	// Drains are their lastcall_drains_total by result.
	Drains map[string]float64
	// Agent is how the agents ran.
	Agent string
	// FlowControl says whether the chart's priority level and flow schema
	// were installed.
	FlowControl bool
	// CPU samples at the ends of the idle window and of Window.
	IdleCPU, IdleCPUEnd, CPU, CPUEnd CPU
}

// percentile returns the p-th percentile (nearest rank) of ds, sorted.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// byVerb counts events by verb, and those answered 429.
func byVerb(evs []kubetest.AuditEvent) (map[string]int, int) {
	out := map[string]int{}
	tooMany := 0
	for _, e := range evs {
		out[e.Verb]++
		if e.ResponseStatus.Code == 429 {
			tooMany++
		}
	}
	return out, tooMany
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// auditVerb is the audit log's verb for apiserver_request_total's.
func auditVerb(metricVerb string) string {
	switch metricVerb {
	case "POST":
		return "create"
	case "PUT":
		return "update"
	case "APPLY":
		return "patch"
	}
	return strings.ToLower(metricVerb)
}

// Markdown renders the report.
func (r *Report) Markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Fleet: %d nodes, %d preempted at once\n\n", r.Nodes, r.Preempted)
	p("%d pods (%d Deployments, 3 in 4 with a PodDisruptionBudget; %d DaemonSets; a system-critical Deployment), KWOK nodes, real kube-apiserver (default API Priority and Fairness), etcd, kube-controller-manager and kube-scheduler. Fleet up, agents ready: %s. Agents: %s.\n\n",
		r.Pods, Deployments, len(DaemonSets), r.Setup.Round(time.Second), r.Agent)
	if r.FlowControl {
		p("The chart's flow control is installed: the agents' node updates have the priority level lastcall-node, their other requests the level lastcall, one flow per namespace.\n\n")
	} else {
		p("Without the chart's flow control: the agents' requests fall in the service-accounts flow schema (priority level workload-low, one flow: every agent is the same user).\n\n")
	}

	p("## Notice to cordon, notice to last pod gone\n\n")
	p("Times are from the metadata server's first announcement (the agent's detection delay included) to the observer's watch seeing the change.\n\n")
	p("| kind | nodes | cordon p50 | p99 | max | last pod gone p50 | p99 | max | not empty at deadline | pods left | never emptied |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, cloud := range []Cloud{GCE, AWS} {
		var cordon, gone []time.Duration
		n, notEmpty, left, never, uncordoned := 0, 0, 0, 0, 0
		for _, rec := range r.Records {
			if rec.Cloud != cloud {
				continue
			}
			n++
			if rec.Cordoned.IsZero() {
				uncordoned++
			} else {
				cordon = append(cordon, rec.Cordoned.Sub(rec.Notice))
			}
			if rec.Emptied.IsZero() {
				never++
			} else {
				gone = append(gone, rec.Emptied.Sub(rec.Notice))
			}
			if len(rec.LeftAtDeadline) > 0 {
				notEmpty++
				left += len(rec.LeftAtDeadline)
			}
		}
		slices.Sort(cordon)
		slices.Sort(gone)
		window := "30 s"
		if cloud == AWS {
			window = "2 min"
		}
		p("| %s (%s)%s | %d | %s | %s | %s | %s | %s | %s | %d | %d | %d |\n", cloud, window, map[bool]string{true: fmt.Sprintf(", %d never cordoned", uncordoned)}[uncordoned > 0], n,
			secs(percentile(cordon, 50)), secs(percentile(cordon, 99)), secs(percentile(cordon, 100)),
			secs(percentile(gone, 50)), secs(percentile(gone, 99)), secs(percentile(gone, 100)), notEmpty, left, never)
	}
	var leftovers []string
	for _, rec := range r.Records {
		for _, pod := range rec.LeftAtDeadline {
			leftovers = append(leftovers, rec.Node+": "+pod)
		}
	}
	if len(leftovers) > 0 {
		sort.Strings(leftovers)
		if len(leftovers) > 20 {
			leftovers = append(leftovers[:20], fmt.Sprintf("... %d more", len(leftovers)-20))
		}
		p("\nPods on a node at its deadline:\n\n")
		for _, l := range leftovers {
			p("- %s\n", l)
		}
	}

	landed, afterCordon := 0, 0
	for _, rec := range r.Records {
		landed += rec.Landed
		afterCordon += rec.LandedAfterCordon
	}
	p("\n## Budgets and replacements\n\n")
	p("- Evictions by outcome, summed over the preempted nodes' agents (lastcall_evictions_total): ")
	for i, k := range sortedKeys(r.Evictions) {
		if i > 0 {
			p(", ")
		}
		p("%s %.0f", k, r.Evictions[k])
	}
	p(".\n- Drains by result (lastcall_drains_total): ")
	for i, k := range sortedKeys(r.Drains) {
		if i > 0 {
			p(", ")
		}
		p("%s %.0f", k, r.Drains[k])
	}
	refused := 0
	for _, e := range r.Agents {
		if e.Verb == "create" && strings.Contains(e.RequestURI, "/eviction") && e.ResponseStatus.Code == 429 {
			refused++
		}
	}
	p(".\n- Eviction requests answered 429 (a budget allowing no disruption, or flow control): %d.\n", refused)
	p("- Pods bound to a preempted node after its notice: %d; after the observer saw it cordoned: %d.\n", landed, afterCordon)

	secsOf := r.Window.Seconds()
	p("\n## The apiserver during the preemption (%s)\n\n", r.Window.Round(time.Second))
	before := r.Before.Sum("apiserver_request_total", "verb", nil)
	after := r.After.Sum("apiserver_request_total", "verb", nil)
	agents, agents429 := byVerb(r.Agents)
	p("| verb | all clients, req/s | agents, req/s | agents' share |\n|---|---|---|---|\n")
	var total, agentTotal float64
	for _, verb := range sortedKeys(after) {
		all := after[verb] - before[verb]
		if all <= 0 {
			continue
		}
		a := float64(agents[auditVerb(verb)])
		total += all
		agentTotal += a
		p("| %s | %.1f | %.1f | %.0f %% |\n", verb, all/secsOf, a/secsOf, 100*a/all)
	}
	if total > 0 {
		p("| all | %.1f | %.1f | %.0f %% |\n", total/secsOf, agentTotal/secsOf, 100*agentTotal/total)
	}
	p("\n- 429s from API Priority and Fairness (apiserver_flowcontrol_rejected_requests_total): %s", rejected(r.Before, r.After))
	p(".\n- Time requests waited in API Priority and Fairness queues, p99 (bucket bound) over the requests of the window: ")
	for i, level := range []string{"lastcall-node", "lastcall", "workload-low", "workload-high", "system"} {
		q, n := r.After.Quantile(r.Before, "apiserver_flowcontrol_request_wait_duration_seconds", map[string]string{"priority_level": level}, 0.99)
		if i > 0 {
			p("; ")
		}
		p("%s %g s (%.0f requests)", level, q, n)
	}
	q, n := r.After.Quantile(r.Before, "apiserver_request_duration_seconds", map[string]string{"verb": "POST", "subresource": "eviction"}, 0.99)
	p(".\n- Eviction request duration in the apiserver, p99 (bucket bound): %g s over %.0f requests", q, n)
	p(".\n- All responses 429 (budgets included): %.0f; to the agents: %d.\n",
		r.After.Total("apiserver_request_total", map[string]string{"code": "429"})-r.Before.Total("apiserver_request_total", map[string]string{"code": "429"}), agents429)
	p("- CPU cores used, on average over the window (\"agents\" is the benchmark's process: the agents, the metadata servers and the observer): %s.\n",
		strings.Join(r.CPUEnd.Cores(r.CPU), ", "))

	p("\n## At rest\n\n")
	p("- Watches open (apiserver_longrunning_requests, verb WATCH): %.0f before the agents, %.0f with them (pods: %.0f).\n",
		r.NoAgents.Total("apiserver_longrunning_requests", map[string]string{"verb": "WATCH"}),
		r.Rest.Total("apiserver_longrunning_requests", map[string]string{"verb": "WATCH"}),
		r.Rest.Total("apiserver_longrunning_requests", map[string]string{"verb": "WATCH", "resource": "pods"}))
	p("- apiserver resident memory: %.0f MiB before the agents, %.0f MiB with their watches.\n",
		r.NoAgents.Total("process_resident_memory_bytes", nil)/(1<<20), r.Rest.Total("process_resident_memory_bytes", nil)/(1<<20))
	idle, _ := byVerb(r.Idle)
	polls := 0
	for verb, n := range idle {
		if verb != "watch" {
			polls += n
		}
	}
	p("- The agents' requests in %s at rest: %d (%.1f per minute), of which polls (anything but a watch): %d; watches re-opened: %d (client-go ends a watch after 5 to 10 min and re-opens it).\n",
		r.IdleWindow.Round(time.Second), len(r.Idle), float64(len(r.Idle))/r.IdleWindow.Minutes(), polls, idle["watch"])
	p("- CPU cores used at rest: %s.\n", strings.Join(r.IdleCPUEnd.Cores(r.IdleCPU), ", "))
	start, start429 := byVerb(r.Start)
	p("- Start of the agents, evenly over %s: %d requests until %d of %d were ready, %s after the first started (", r.StartSpread, len(r.Start), r.Nodes-r.NotReady, r.Nodes, r.StartTook.Round(time.Second))
	for i, k := range sortedKeys(start) {
		if i > 0 {
			p(", ")
		}
		p("%s %d", k, start[k])
	}
	p("), %d answered 429; API Priority and Fairness rejected, until the agents were at rest: %s.\n", start429, rejected(r.NoAgents, r.Rest))
	return b.String()
}

// rejected lists the requests flow control rejected between two scrapes,
// by priority level, or says none.
func rejected(before, after Metrics) string {
	const name = "apiserver_flowcontrol_rejected_requests_total"
	was := before.Sum(name, "priority_level", nil)
	now := after.Sum(name, "priority_level", nil)
	var out []string
	for _, k := range sortedKeys(now) {
		if d := now[k] - was[k]; d > 0 {
			out = append(out, fmt.Sprintf("%s %.0f", k, d))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "; ")
}

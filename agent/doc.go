// Package agent is the node agent's core: notices in; the node cordoned,
// the sidecars told and the node drained before the earliest deadline; the
// cordon undone once the metadata says no notice holds.
//
// # The notice lifecycle
//
// The agent is level-triggered. Its inputs only update what it observes
// (Observed); one pure function, Decide, says from all of it what the node
// and the sidecars should be (Desired); reconcile makes it so, after every
// input and at start. A restarted agent is not a special case, only a
// first reconcile.
//
// Inputs:
//
//   - a notice active (new, or seen again with another deadline: an AWS
//     scheduled event moved), with the action its kind's policy gives:
//     drain, cordon (advisory: an AWS rebalance recommendation by default)
//     or none (an Event, nothing else);
//   - a notice canceled (AWS scheduled event canceled, completed or gone,
//     GCE maintenance back to NONE, Azure event gone), or informational
//     (GCE live migration: an Event only);
//   - the watcher's synced marker: its first full read of the metadata is
//     done, so the active notices are all there are;
//   - the agent's start: its node read once, with the cordon record an
//     earlier run may have left (RecordOf) and the node condition;
//   - pods landing on the node or leaving it; sidecars' done reports;
//   - the end of the work reconcile started (cordon, uncordon, condition,
//     drain runs), with its error.
//
// State: the active notices by ID, with their deadlines (a notice without
// one, advisory, gets detection + 2 min; a GCE notice seen again after a
// restart keeps the deadline of its first sighting if the record is younger
// than the notice window, and a stale record is ignored); whether the
// metadata was read in full; lastcall's cordon record on the node; the
// drain run under way, its target notice and the pods it covered; what the
// sidecars were last told.
//
// Decide:
//
//	Cordon    = some active notice's action is cordon or drain
//	Drain     = the active drain notice with the earliest deadline, or none
//	Tell      = draining(Drain)           if Drain is set
//	          = running                   else, once the metadata was read in full
//	          = nothing (sidecars keep what they were told)  otherwise
//	Uncordon  = the metadata was read in full and no notice is active
//
// Invariants, checked after every step of a randomized test
// (TestLifecycleInvariants):
//
//   - the drain always runs to the earliest deadline among active drain
//     notices, and none runs when there is none;
//   - sidecars are told the earliest deadline among active drain notices,
//     and never told running while such a notice is active, nor before the
//     agent knows the node's state;
//   - advisory (cordon-only) notices cordon the node but tell the workers
//     nothing: the machine may live for hours;
//   - when no notice is active and the metadata confirms it, lastcall's own
//     cordon is undone and its node condition cleared, also when it was left
//     by an earlier run;
//   - every pod on the node, but DaemonSet, mirror, finished pods and the
//     agent's own, gets an eviction request before the deadline, or at once
//     if the deadline has passed (drainer.Drain), and pods landing during or
//     after a drain get one too;
//   - a done report belongs to the pod's UID and is dropped when the pod
//     goes; a pod is released only by a done report of its own UID that
//     still stands (a retracted one holds it again); an Azure event is
//     acknowledged only after a complete drain;
//   - no worker is shown a deadline later than its pod's stop time: each
//     pod's sidecar is told the StopBy of the plan its drain runs, or its
//     deletion's end, whichever is first (PodDeadlines), and the drain
//     rounds grace periods up so that no pod stops before it;
//   - what lastcall applied to the node is read back from the node's watch,
//     and undone once nothing holds, whether or not a write's reply
//     arrived; GCE deadlines count from each notice's first sighting, kept
//     in the cordon record across restarts;
//   - while another tool's drain holds (ForeignSignals) and no drain notice
//     does, workers are told draining with no deadline; lastcall never
//     changes that tool's taints.
//
// Beside Decide's node updates, reconcile adds the out-of-service taint
// (Config.OutOfService) once the drain towards Desired.Drain has ended, and
// checks the pods on the node for a sidecar they asked for and lack
// (reconcilePods, which reads the pod cache once per reconcile).
//
// What an operator sees, as Events (recorded from the notice loop, never
// blocking it) and metrics: the notice's arrival as a Warning whose reason
// names its kind (EventReason); a notice ignored by policy as a Warning
// NoticeIgnored on the node and every pod on it; a refused cordon as
// CordonFailed; a refused eviction, at once, as EvictionRefused on the pod
// and the node (Agent.EvictionRefused, the drainer's Refused hook); a drain that ended with pods left as a Warning Drained and,
// on each such pod, EvictionFailed, EvictionBlocked or DrainIncomplete; a
// pod labelled for the sidecar without one as SidecarNotInjected. Metrics
// holds the deadline of each kind's earliest active notice.
//
// Reconcile starts work and never waits for it: node updates run one at a
// time and are retried with backoff while they are still wanted; a new
// drain starts once the cordon is done or failed, or Config.CordonWait
// after the notice, whichever is first (a cordon queued in a busy
// apiserver must not cost the drain its window); a drain is
// restarted when its target changes (an earlier deadline arrives, or the
// notice that superseded it is canceled) and run again when pods land on
// the node after it finished; the notice loop is never blocked by any of it.
//
// The package declares the interfaces it consumes (Drainer, Notifier);
// drainer.Drainer and the sidecar package provide them. It holds no flags
// and reads no environment: cmd/node-agent parses those and passes values
// in.
package agent

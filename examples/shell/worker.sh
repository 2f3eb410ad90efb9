#!/bin/sh
# A shell worker that follows lastcall's sidecar with nothing but the flag
# file and curl. It takes one job at a time (here from a directory; in real
# life `redis-cli BRPOPLPUSH`, `aws sqs receive-message`, ...) and stops
# taking jobs the moment /lastcall/draining appears. A job that cannot
# finish before the deadline is put back.
#
#   LASTCALL_DIR   the sidecar's shared emptyDir (default /lastcall)
#   LASTCALL_ADDR  the sidecar's workers' API (default 127.0.0.1:10575)
#   JOBS           spool directory: one file per job (default /jobs)
set -eu
dir=${LASTCALL_DIR:-/lastcall}
api=http://${LASTCALL_ADDR:-127.0.0.1:10575}
jobs=${JOBS:-/jobs}

draining() { [ -e "$dir/draining" ]; }

# Seconds left before the deadline (first line of the flag file).
seconds_left() {
	deadline=$(head -n 1 "$dir/draining")
	echo $(( $(date -d "$deadline" +%s) - $(date +%s) ))
}

while ! draining; do
	job=$(ls "$jobs" 2>/dev/null | head -n 1)
	if [ -z "$job" ]; then
		# Nothing to do: wait for a state change instead of spinning.
		# The long-poll returns at once when draining starts.
		gen=$(curl -fsS "$api/v1/state" | sed -n 's/.*"generation":\([0-9]*\).*/\1/p')
		curl -fsS -m 35 "$api/v1/state?generation=${gen:-0}&wait=30s" >/dev/null || sleep 1
		continue
	fi
	mv "$jobs/$job" "/tmp/$job" 2>/dev/null || continue # another worker took it
	cost=$(wc -c < "/tmp/$job")                         # the job's cost in seconds
	if draining && [ "$cost" -ge "$(seconds_left)" ]; then
		mv "/tmp/$job" "$jobs/$job" # cannot finish in time: hand it back
		break
	fi
	sleep "$cost" # the work
	rm "/tmp/$job"
done

curl -fsS -X POST "$api/v1/done"
echo "drained: $(sed -n 2p "$dir/draining" 2>/dev/null)"

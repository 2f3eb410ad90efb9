#!/bin/sh
# Writes into the directory $1, inside the hack/nth module, the main package
# of aws-node-termination-handler (the version in hack/nth/go.mod) with the
# KUBE_API_QPS and KUBE_API_BURST settings of its later releases: the client
# it drains with gets that rate limit instead of client-go's default (QPS 5,
# burst 10). Those releases are not served by the Go module proxy here; this
# adds only that setting, so that the peer benchmark can run NTH at its best
# settings; every other file is NTH's own, from the module cache. Build it
# with `go build ./<dir>` in hack/nth. (go build -overlay refuses files of
# the module cache.)
set -eu
mkdir -p "$1"
out=$(cd "$1" && pwd)
dir=$(cd "$(dirname "$0")" && go list -m -f '{{.Dir}}' github.com/aws/aws-node-termination-handler)
src="$dir/cmd/node-termination-handler.go"
anchor='clientset, err := kubernetes.NewForConfig(clusterConfig)'
grep -q "$anchor" "$src" || { echo "$src: no line '$anchor' to add the rate limit before" >&2; exit 1; }
awk -v anchor="$anchor" '
	$0 ~ /^\t"os\/signal"$/ { print; print "\t\"strconv\""; next }
	index($0, anchor) {
		print "\tif q, err := strconv.ParseFloat(os.Getenv(\"KUBE_API_QPS\"), 32); err == nil {"
		print "\t\tclusterConfig.QPS = float32(q)"
		print "\t}"
		print "\tif b, err := strconv.Atoi(os.Getenv(\"KUBE_API_BURST\")); err == nil {"
		print "\t\tclusterConfig.Burst = b"
		print "\t}"
	}
	{ print }
' "$src" > "$out/node-termination-handler.go"
grep -q '"strconv"' "$out/node-termination-handler.go" || { echo "$src: no os/signal import to add strconv after" >&2; exit 1; }

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/lastcall-dev/lastcall/injector"
)

const injectUsage = `injector inject adds the sidecar to the pods of manifests, for GitOps
repositories that keep what runs (like istioctl kube-inject): every Pod, and
the pod template of every Deployment, StatefulSet, DaemonSet, ReplicaSet,
Job and CronJob, but pods labelled lastcall.dev/inject=disabled, pods in
excluded namespaces and pods already injected. Other documents pass through.

  injector inject --image IMAGE -f deploy.yaml > deploy.injected.yaml

Flags:
`

// injectMain runs the inject subcommand: manifests from -f (or standard
// input) to stdout, injected.
func injectMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("injector inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, injectUsage)
		fs.PrintDefaults()
	}
	file := fs.String("f", "-", "the manifests to inject; - reads standard input")
	sf := addSidecarFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "injector inject: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg, err := sf.config("")
	if err != nil {
		fmt.Fprintln(stderr, "injector inject:", err)
		return 2
	}
	in := stdin
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			fmt.Fprintln(stderr, "injector inject:", err)
			return 1
		}
		defer f.Close()
		in = f
	}
	n, err := injector.InjectManifests(in, stdout, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "injector inject:", err)
		return 1
	}
	fmt.Fprintf(stderr, "injector inject: %d pods injected\n", n)
	return 0
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

// probeMain is the sidecar container's startup probe: it exits 0 when the
// workers' API at --addr answers /healthz with 200, 1 otherwise. The
// kubelet starts a pod's workers only once its native sidecar's startup
// probe passed.
func probeMain(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sidecar probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr(getenv, "LASTCALL_LISTEN", "127.0.0.1:10575"), "the sidecar's workers' API [LASTCALL_LISTEN]")
	timeout := fs.Duration("timeout", time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := probe(ctx, *addr); err != nil {
		fmt.Fprintln(stderr, "sidecar probe:", err)
		return 1
	}
	return 0
}

func probe(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("call sidecar: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("sidecar answered %s", resp.Status)
	}
	return nil
}

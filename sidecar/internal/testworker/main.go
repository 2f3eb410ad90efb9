// Command testworker is a worker for the sidecar package's tests: it
// watches its sidecar over HTTP, the draining flag file and a signal, and
// prints one line on stdout for each thing it sees, in the order it sees
// them:
//
//	ready
//	http <phase> <reason>     the state over HTTP changed
//	file                      <dir>/draining appeared
//	signal <name>             the drain signal arrived
//	done                      it told the sidecar it is done
//	sigterm <phase>           SIGTERM arrived; phase is the last state seen over HTTP
//
// It says done once it has seen the drain every way listed in --want.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
)

func main() {
	addr := flag.String("addr", sidecar.DefaultAddr, "the sidecar's workers' API")
	dir := flag.String("dir", "", "the sidecar's state directory")
	want := flag.String("want", "http", "comma-separated ways the drain must be seen before saying done: http, file, signal")
	done := flag.Bool("done", true, "say done once the drain was seen every way in --want")
	flag.Parse()
	os.Exit(run(*addr, *dir, strings.Split(*want, ","), *done))
}

type worker struct {
	mu    sync.Mutex // guards out, seen, phase, said
	out   *bufio.Writer
	seen  map[string]bool
	phase sidecar.Phase
	said  bool
}

func (w *worker) emit(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintf(w.out, format+"\n", args...)
	_ = w.out.Flush()
}

func run(addr, dir string, want []string, sayDone bool) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTSTP, syscall.SIGUSR1, syscall.SIGTERM)
	c, err := sidecar.NewClient(addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	w := &worker{out: bufio.NewWriter(os.Stdout), seen: map[string]bool{}}
	w.emit("ready")

	saw := func(how string) {
		w.mu.Lock()
		w.seen[how] = true
		all := true
		for _, h := range want {
			all = all && w.seen[h]
		}
		ready := all && sayDone && !w.said
		if ready {
			w.said = true
		}
		w.mu.Unlock()
		if ready {
			if err := c.Done(ctx); err != nil {
				w.emit("error %v", err)
				return
			}
			w.emit("done")
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		_ = c.Watch(ctx, func(st sidecar.State) {
			w.mu.Lock()
			changed := st.Phase != w.phase
			w.phase = st.Phase
			w.mu.Unlock()
			if changed {
				w.emit("http %s %s", st.Phase, st.Reason)
			}
			if st.Draining() {
				saw("http")
			}
		})
	})
	if dir != "" {
		wg.Go(func() {
			t := time.NewTicker(5 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if _, err := os.Stat(filepath.Join(dir, "draining")); err == nil {
					w.emit("file")
					saw("file")
					return
				}
			}
		})
	}
	for sig := range sigs {
		if sig == syscall.SIGTERM {
			w.mu.Lock()
			phase := w.phase
			w.mu.Unlock()
			w.emit("sigterm %s", phase)
			cancel()
			return 0
		}
		w.emit("signal %s", sig)
		saw("signal")
	}
	return 0
}

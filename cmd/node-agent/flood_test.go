package main_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// flood keeps conns connections open to addr from many loopback source
// addresses (127.200.x.y, so that the caps per address do not stop it at
// once), redialling each one the server closes, until ctx ends. Every
// fifth connection drips a request header a byte at a time; the others say
// nothing. It returns how many dials succeeded.
func flood(ctx context.Context, addr string, conns, sources int, wg *sync.WaitGroup) *atomic.Int64 {
	var dials atomic.Int64
	for i := range conns {
		src := &net.TCPAddr{IP: net.IPv4(127, 200, byte(i%sources/250), byte(1+i%sources%250))}
		slow := i%5 == 0
		wg.Go(func() {
			d := net.Dialer{LocalAddr: src, Timeout: time.Second}
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					select {
					case <-ctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
					continue
				}
				dials.Add(1)
				go func() { <-ctx.Done(); c.Close() }()
				req := "GET /v1/pods/default/victim/state?generation=0&wait=2m HTTP/1.1\r\nHost: node\r\n"
				for j := 0; ctx.Err() == nil; j++ {
					if slow {
						if _, err := c.Write([]byte{req[j%len(req)]}); err != nil {
							break
						}
					}
					_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
					if _, err := c.Read(make([]byte, 512)); err != nil && !isTimeout(err) {
						break // closed by the server
					}
				}
				c.Close()
				// Redial after a pause: the flood holds connections, it does
				// not have to starve the machine's other processes (tests of
				// other packages run alongside).
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		})
	}
	return &dials
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func procMiB(t testing.TB, pid int, field string) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(rest), "%f", &kb)
			return kb / 1024
		}
	}
	t.Fatalf("no %s for pid %d", field, pid)
	return 0
}

// TestConnectionFloodBounded opens thousands of idle and slow connections
// to the agent's sidecar and metrics ports, from hundreds of addresses, and
// keeps them coming for ten seconds, as any pod in the cluster could: the
// agent's memory stays bounded, every liveness probe (from the node's IP,
// here 127.0.0.1, as the kubelet's) is answered, a real sidecar stays
// subscribed and is told of a notice during the flood. Measured with 3,000
// and 1,000 connections: the agent before the caps peaked at 70 MiB; with
// them, at about 50 MiB.
func TestConnectionFloodBounded(t *testing.T) {
	c := newCluster(t, 2, kubetest.WithGrace(5))
	c.waitRunning(t, 3)
	trigger := freeAddr(t)
	p := c.startAgent(t, "--cloud=sim", "--sim-listen="+trigger, "--node-ip=127.0.0.1")
	sc := c.startSidecar(t, p.hub, "worker-0")
	eventually(t, 15*time.Second, "sidecar subscribed", func() bool { return p.metric(t, "lastcall_sidecars_connected") == 1 })
	pid := p.cmd.Process.Pid
	rest := procMiB(t, pid, "VmRSS")

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	hubDials := flood(ctx, p.hub, 3000, 300, &wg)
	metricsDials := flood(ctx, p.addr, 1000, 100, &wg)
	// The kubelet's probes (every 10 s in the chart; here every 250 ms)
	// and the sidecar's subscription, sampled all through the flood.
	probe := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	probes, answered, unsubscribed := 0, 0, 0
	var failed []string
	sample := func() {
		probes++
		resp, err := probe.Get("http://" + p.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		if err == nil && resp.StatusCode == http.StatusOK {
			answered++
		} else if len(failed) < 5 {
			failed = append(failed, fmt.Sprint(err))
		}
		if !sc.agentConnected() {
			unsubscribed++
		}
	}
	for start := time.Now(); time.Since(start) < 2*time.Second; time.Sleep(250 * time.Millisecond) {
		sample()
	}
	// A sidecar that starts during the flood (a new pod, a restarted
	// sidecar) must get in: its first connections are newcomers.
	late := c.startSidecar(t, p.hub, "worker-1")
	lateIn := time.Now()
	for !late.agentConnected() && time.Since(lateIn) < 5*time.Second {
		sample()
		time.Sleep(250 * time.Millisecond)
	}
	if !late.agentConnected() {
		t.Errorf("a sidecar started during the flood was not subscribed within 5 s")
	} else {
		t.Logf("a sidecar started during the flood subscribed in %.1f s", time.Since(lateIn).Seconds())
	}
	post(t, trigger, `{"kind":"preemption","seconds":60,"id":"flood"}`)
	eventually(t, 5*time.Second, "the sidecars are told during the flood", func() bool {
		return sc.phase() == "draining" && late.phase() == "draining"
	})
	peak := rest
	for ctx.Err() == nil {
		peak = max(peak, procMiB(t, pid, "VmRSS"))
		sample()
		time.Sleep(250 * time.Millisecond)
	}
	wg.Wait()
	t.Logf("during the flood: %d of %d liveness probes answered; the sidecar said it had lost the agent at %d samples", answered, probes, unsubscribed)
	if answered != probes {
		t.Errorf("%d of %d liveness probes answered during the flood, want all (first failures: %v)", answered, probes, failed)
	}
	if unsubscribed != 0 {
		t.Errorf("the sidecar said it had lost the agent at %d of %d samples during the flood, want none", unsubscribed, probes)
	}
	hwm := procMiB(t, pid, "VmHWM")
	refusedHub := p.metric(t, `lastcall_http_connections_shed_total{reason="per_address",server="sidecars"}`) +
		p.metric(t, `lastcall_http_connections_shed_total{reason="total",server="sidecars"}`)
	t.Logf("agent RSS: %.1f MiB at rest, %.1f MiB peak under the flood (high-water %.1f MiB); %d connections to the sidecar port, %d to the metrics port; %.0f shed by the sidecar port's caps",
		rest, peak, hwm, hubDials.Load(), metricsDials.Load(), refusedHub)
	if hwm > 96 {
		t.Errorf("agent RSS high-water %.1f MiB under the flood, want it bounded under 96 MiB", hwm)
	}
	if refusedHub == 0 {
		t.Error("no connection shed by the caps: the flood did not reach them")
	}
	if code, body := p.get("/readyz"); code != 200 {
		t.Errorf("agent not ready after the flood: %d %s", code, body)
	}
}

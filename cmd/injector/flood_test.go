package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/lastcall-dev/lastcall/injector"
)

// injectorProc is the injector binary, serving with certificates from a
// folder (as with cert-manager), so that it needs no apiserver to answer.
type injectorProc struct {
	cmd           *exec.Cmd
	addr, metrics string
	client        *http.Client // the apiserver's side: TLS, keep-alive
	out           bytes.Buffer
	outMu         sync.Mutex
	done          chan struct{}
}

// buildInjector builds the injector binary once for the tests that run it.
var buildInjector = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "injector-test-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "injector")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build injector: %w\n%s", err, out)
	}
	return bin, nil
})

func startInjector(t *testing.T) *injectorProc {
	t.Helper()
	dir := t.TempDir()
	bin, err := buildInjector()
	if err != nil {
		t.Fatal(err)
	}
	certs, err := injector.NewCerts([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "certs")
	if err := os.Mkdir(certDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": certs.ServeCert, "tls.key": certs.ServeKey} {
		if err := os.WriteFile(filepath.Join(certDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A kubeconfig that is never dialled: with --cert-dir the webhook and
	// the injection need no apiserver.
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &injectorProc{addr: freePort(t), metrics: freePort(t), done: make(chan struct{})}
	p.cmd = exec.Command(bin, "--image=sidecar:test", "--namespace=lastcall", "--cert-dir="+certDir,
		"--kubeconfig="+kubeconfig, "--listen="+p.addr, "--metrics-listen="+p.metrics, "--log-format=text")
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("injector output:\n%s", p.output())
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certs.CACert)
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := p.client.Get("https://" + p.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("injector not serving after 20 s: %v\n%s", err, p.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *injectorProc) Write(b []byte) (int, error) {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	return p.out.Write(b)
}

func (p *injectorProc) output() string {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	return p.out.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// review is what the apiserver sends for a labelled pod's CREATE.
func review(t *testing.T) []byte {
	t.Helper()
	pod := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "w", Namespace: "work", Labels: map[string]string{"lastcall.dev/inject": "enabled"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "worker", Image: "worker:1"}}},
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "u", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "work", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mutate POSTs an AdmissionReview as the apiserver does and reports whether
// it came back with the sidecar's patch.
func (p *injectorProc) mutate(body []byte) error {
	resp, err := p.client.Post("https://"+p.addr+"/mutate", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Errorf("status %d: %w", resp.StatusCode, err)
	}
	if out.Response == nil || !out.Response.Allowed || len(out.Response.Patch) == 0 {
		return fmt.Errorf("response %+v: want allowed with a patch", out.Response)
	}
	return nil
}

// A body larger than an AdmissionReview can be is refused from its header,
// before it is sent (before, the injector read up to 8 MiB of it).
func TestInjectorRefusesHugeBodyEarly(t *testing.T) {
	p := startInjector(t)
	c, err := tls.Dial("tcp", p.addr, p.client.Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 15<<19); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 128)
	n, err := io.ReadAtLeast(c, buf, 12)
	if !bytes.Contains(buf[:n], []byte(" 413 ")) {
		t.Fatalf("a 7.5 MiB body announced, none sent: got %q (%v), want 413 at once", buf[:n], err)
	}
}

// The metrics port holds at most 8 connections from one address (before:
// every one, idle for ever).
func TestInjectorMetricsCapped(t *testing.T) {
	p := startInjector(t)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 2, 1)}}
	var conns []net.Conn
	for range 100 {
		c, err := d.Dial("tcp", p.metrics)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond)
	open := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); isTimeout(err) {
			open++
		}
	}
	if open > 8 {
		t.Errorf("%d of 100 idle connections from one address still open, want at most 8", open)
	}
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a scrape after the flood: %d", resp.StatusCode)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestInjectorFlood: 2,048 connections from 256 loopback addresses to the
// webhook port and 512 from 128 to the metrics port, held and redialled for
// 8 s, with four 7.5 MiB bodies POSTed in parallel now and then: every
// AdmissionReview the apiserver's side sends meanwhile (its own address,
// keep-alive TLS) is answered with the sidecar's patch, and the injector's
// memory stays under its 64 MiB limit.
func TestInjectorFlood(t *testing.T) {
	p := startInjector(t)
	body := review(t)
	if err := p.mutate(body); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	hold := func(addr string, conns, sources int, third byte) {
		for i := range conns {
			src := &net.TCPAddr{IP: net.IPv4(127, third, byte(i%sources/250), byte(1+i%sources%250))}
			wg.Go(func() {
				d := net.Dialer{LocalAddr: src, Timeout: time.Second}
				for ctx.Err() == nil {
					c, err := d.DialContext(ctx, "tcp", addr)
					if err == nil {
						stop := context.AfterFunc(ctx, func() { c.Close() })
						_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
						_, _ = c.Read(make([]byte, 64)) // until the server closes it
						stop()
						c.Close()
					}
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
				}
			})
		}
	}
	hold(p.addr, 2048, 256, 3)
	hold(p.metrics, 512, 128, 4)
	big := bytes.Repeat([]byte("x"), 15<<19)
	// The big bodies come from an address of their own, as an attacker's.
	attacker := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: p.client.Transport.(*http.Transport).TLSClientConfig,
		DialContext:     (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 5, 0, 1)}}).DialContext,
	}}
	wg.Go(func() {
		for ctx.Err() == nil {
			var big4 sync.WaitGroup
			for range 4 {
				big4.Go(func() {
					resp, err := attacker.Post("https://"+p.addr+"/mutate", "application/json", bytes.NewReader(big))
					if err == nil {
						resp.Body.Close()
					}
				})
			}
			big4.Wait()
			time.Sleep(500 * time.Millisecond)
		}
	})
	pid := p.cmd.Process.Pid
	reviews, answered := 0, 0
	var failed []string
	for ctx.Err() == nil {
		reviews++
		if err := p.mutate(body); err != nil {
			if len(failed) < 5 {
				failed = append(failed, err.Error())
			}
		} else {
			answered++
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	hwm := procStatusMiB(t, pid, "VmHWM")
	t.Logf("during the flood: %d of %d AdmissionReviews answered; injector RSS high-water %.1f MiB", answered, reviews, hwm)
	if answered != reviews {
		t.Errorf("%d of %d AdmissionReviews answered during the flood, want all (first failures: %v)", answered, reviews, failed)
	}
	if hwm > 64 {
		t.Errorf("injector RSS high-water %.1f MiB, over its 64 MiB limit", hwm)
	}
}

func procStatusMiB(t *testing.T, pid int, field string) float64 {
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

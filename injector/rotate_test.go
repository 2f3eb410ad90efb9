package injector

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lastcall-dev/lastcall/internal/kubetest"
)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time)     { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }
func (c *clock) add(d time.Duration) { c.set(c.now().Add(d)) }

// TestRotator serves TLS from a Rotator, moves its clock to a month before
// the serving certificate ends and then to before the CA ends: each time
// the server, never restarted, hands out a new certificate that verifies
// against the caBundle the apiserver holds at that moment, and the
// previous CA stays trusted while the new one takes over. The Secret is
// owned by the webhook configuration.
func TestRotator(t *testing.T) {
	e := kubetest.Need(t, env)
	ctx := t.Context()
	ns, err := e.CreateNamespace(ctx, "rotate")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	name := e.UniqueName("lastcall-injector")
	whc := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := whc.Create(ctx, webhookConfig(name, "https://"+ln.Addr().String()+"/mutate", ns), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = whc.Delete(t.Context(), name, metav1.DeleteOptions{}) })

	clk := &clock{t: time.Now()}
	r := &Rotator{Client: e.Client, Namespace: ns, Secret: "tls", WebhookConfig: name, Hosts: []string{"127.0.0.1"}, Now: clk.now}
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Ready() {
		t.Error("ready before the caBundle was written")
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: &tls.Config{GetCertificate: r.GetCertificate}, ReadHeaderTimeout: time.Second}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	// handshake returns the certificate the server serves, verified at the
	// clock's time against the caBundle stored in the apiserver.
	handshake := func(t *testing.T) *x509.Certificate {
		t.Helper()
		got, err := whc.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(got.Webhooks[0].ClientConfig.CABundle) {
			t.Fatal("no caBundle in the webhook configuration")
		}
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", Time: clk.now})
		if err != nil {
			t.Fatalf("TLS handshake at %s against the stored caBundle: %v", clk.now().Format(time.DateOnly), err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}

	if err := r.Check(ctx); err != nil || !r.Ready() {
		t.Fatalf("Check: %v, ready %v", err, r.Ready())
	}
	first := handshake(t)
	t.Logf("serving certificate valid until %s", first.NotAfter.Format(time.DateOnly))

	clk.set(first.NotAfter.Add(-10 * 24 * time.Hour))
	if err := r.Check(ctx); err != nil {
		t.Fatal(err)
	}
	second := handshake(t)
	if second.Equal(first) || !second.NotAfter.After(first.NotAfter) || second.Issuer.String() != first.Issuer.String() {
		t.Errorf("10 days before the end: serving %s until %s; want a new one from the same CA", second.SerialNumber, second.NotAfter)
	}
	t.Logf("renewed at %s without a restart: valid until %s", clk.now().Format(time.DateOnly), second.NotAfter.Format(time.DateOnly))
	if err := r.Check(ctx); err != nil || !handshake(t).Equal(second) {
		t.Errorf("a second check renewed again: %v", err)
	}

	// The CA's end: a new CA, the old one still in the bundle.
	s, err := e.Client.CoreV1().Secrets(ns).Get(ctx, "tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldCA, err := parseCert(s.Data["ca.crt"])
	if err != nil {
		t.Fatal(err)
	}
	// 40 days before: a serving certificate that ends with the CA.
	clk.set(oldCA.NotAfter.Add(-40 * 24 * time.Hour))
	if err := r.Check(ctx); err != nil {
		t.Fatal(err)
	}
	oldLeaf := handshake(t)
	clk.set(oldCA.NotAfter.Add(-10 * 24 * time.Hour))
	if err := r.Check(ctx); err != nil {
		t.Fatal(err)
	}
	third := handshake(t)
	oldOnly := x509.NewCertPool()
	oldOnly.AddCert(oldCA)
	if _, err := third.Verify(x509.VerifyOptions{Roots: oldOnly, CurrentTime: clk.now()}); err == nil {
		t.Errorf("10 days before the CA's end: still signed by the old CA")
	}
	t.Logf("new CA at %s; serving certificate valid until %s", clk.now().Format(time.DateOnly), third.NotAfter.Format(time.DateOnly))
	got, _ := whc.Get(ctx, name, metav1.GetOptions{})
	bundle := x509.NewCertPool()
	bundle.AppendCertsFromPEM(got.Webhooks[0].ClientConfig.CABundle)
	if _, err := oldLeaf.Verify(x509.VerifyOptions{Roots: bundle, CurrentTime: clk.now()}); err != nil {
		t.Errorf("a replica still serving the old certificate would fail: %v", err)
	}
	clk.add(11 * 24 * time.Hour) // the old CA has expired: out of the bundle
	if err := r.Check(ctx); err != nil {
		t.Fatal(err)
	}
	handshake(t)
	got, _ = whc.Get(ctx, name, metav1.GetOptions{})
	if n := len(splitPEM(got.Webhooks[0].ClientConfig.CABundle)); n != 1 {
		t.Errorf("caBundle holds %d certificates after the old CA expired, want 1", n)
	}

	s, err = e.Client.CoreV1().Secrets(ns).Get(ctx, "tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].Kind != "MutatingWebhookConfiguration" || s.OwnerReferences[0].Name != name {
		t.Errorf("Secret owners %+v, want the webhook configuration", s.OwnerReferences)
	}
}

// splitPEM returns the certificates of a PEM bundle.
func splitPEM(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

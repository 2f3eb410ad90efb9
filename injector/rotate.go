package injector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// Rotator keeps the webhook's TLS valid while the injector runs: every
// Interval it reads the certificates from the Secret (EnsureCerts, which
// renews them renewBefore their end and picks up what another replica
// renewed), writes the CA bundle into the webhook configuration's caBundle
// (a reinstall resets it) and only then serves the new certificate, so the
// apiserver never meets a certificate it cannot verify. It also makes the
// webhook configuration the Secret's owner, so that deleting it (helm
// uninstall) deletes the Secret too. Create it with its fields set; call
// Load, then Run.
type Rotator struct {
	// Client talks to the apiserver.
	Client kubernetes.Interface
	// Namespace and Secret name the Secret that keeps the certificates.
	Namespace, Secret string
	// WebhookConfig is the MutatingWebhookConfiguration whose caBundle
	// Rotator keeps, and which owns the Secret.
	WebhookConfig string
	// Hosts are the names the serving certificate carries.
	Hosts []string
	// Interval is the time between two checks. Default 1 minute.
	Interval time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives the rotator's log. Default: discard.
	Logger *slog.Logger

	cert  atomic.Pointer[tls.Certificate]
	serve atomic.Pointer[[]byte] // the serving certificate's PEM, to tell a change
	ready atomic.Bool
}

// GetCertificate returns the certificate to serve, for tls.Config.
func (r *Rotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c := r.cert.Load()
	if c == nil {
		return nil, errors.New("no serving certificate yet")
	}
	return c, nil
}

// Ready reports whether the caBundle has been written for the certificate
// served.
func (r *Rotator) Ready() bool { return r.ready.Load() }

func (r *Rotator) now() time.Time {
	if r.Now == nil {
		return time.Now()
	}
	return r.Now()
}

func (r *Rotator) log() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// Load reads (or creates) the certificates and serves them; the webhook is
// not ready until Run has written the caBundle. It blocks until the
// apiserver answers or ctx is done.
func (r *Rotator) Load(ctx context.Context) error {
	certs, err := EnsureCerts(ctx, r.Client, r.Namespace, r.Secret, r.Hosts, r.now())
	if err != nil {
		return err
	}
	return r.use(certs)
}

// use serves certs' serving certificate.
func (r *Rotator) use(certs *Certs) error {
	if old := r.serve.Load(); old != nil && slices.Equal(*old, certs.ServeCert) {
		return nil
	}
	cert, err := certs.TLSCertificate()
	if err != nil {
		return err
	}
	pem := slices.Clone(certs.ServeCert)
	r.cert.Store(&cert)
	r.serve.Store(&pem)
	if cert.Leaf != nil {
		r.log().Info("serving certificate loaded", "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Run checks every Interval until ctx ends, retrying failures with
// backoff; it returns nil when ctx ends.
func (r *Rotator) Run(ctx context.Context) error {
	interval := r.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	newBackoff := func() wait.Backoff {
		return wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 8, Cap: 30 * time.Second}
	}
	backoff := newBackoff()
	delay := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		err := r.Check(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			r.log().Warn("certificate check failed", "err", err)
			delay = backoff.Step()
		default:
			backoff = newBackoff()
			delay = interval
		}
	}
}

// Check runs one round: renew the certificates if they need it, make the
// webhook configuration their Secret's owner, write the CA bundle into its
// caBundle, then serve the serving certificate.
func (r *Rotator) Check(ctx context.Context) error {
	now := r.now()
	certs, err := EnsureCerts(ctx, r.Client, r.Namespace, r.Secret, r.Hosts, now)
	if err != nil {
		return err
	}
	owner, err := r.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, r.WebhookConfig, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get mutatingwebhookconfiguration %s: %w", r.WebhookConfig, err)
	}
	if err := r.own(ctx, owner); err != nil {
		return err
	}
	changed, err := PatchCABundle(ctx, r.Client, r.WebhookConfig, certs.Bundle(now))
	if err != nil {
		return err
	}
	if changed {
		r.log().Info("caBundle written", "mutatingwebhookconfiguration", r.WebhookConfig)
	}
	if err := r.use(certs); err != nil {
		return err
	}
	r.ready.Store(true)
	return nil
}

// own makes the webhook configuration the Secret's owner: the garbage
// collector deletes the Secret with it.
func (r *Rotator) own(ctx context.Context, owner *admissionregistrationv1.MutatingWebhookConfiguration) error {
	secrets := r.Client.CoreV1().Secrets(r.Namespace)
	s, err := secrets.Get(ctx, r.Secret, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get secret %s/%s: %w", r.Namespace, r.Secret, err)
	}
	if slices.ContainsFunc(s.OwnerReferences, func(o metav1.OwnerReference) bool { return o.UID == owner.UID }) {
		return nil
	}
	s.OwnerReferences = append(s.OwnerReferences, metav1.OwnerReference{
		APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration", Name: owner.Name, UID: owner.UID,
	})
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set the owner of secret %s/%s: %w", r.Namespace, r.Secret, err)
	}
	return nil
}

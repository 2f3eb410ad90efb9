package injector

import (
	"context"
	"encoding/json"

	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Keys of the Secret that holds the certificates.
const (
	keyCACert    = "ca.crt"
	keyCAKey     = "ca.key"
	keyServeCert = "tls.crt"
	keyServeKey  = "tls.key"
	keyPrevCA    = "ca-previous.crt"
)

// ensureAttempts bounds the create/update races between replicas starting
// together.
const ensureAttempts = 5

// EnsureCerts returns the webhook's certificates for hosts from the Secret
// namespace/name: it creates the Secret with new certificates when it is
// missing, and reuses what it holds when that is valid for hosts (Renew),
// or updates it. Replicas that start together agree: a lost create or
// update race is followed by a fresh read. It needs get, create and
// update on that Secret.
func EnsureCerts(ctx context.Context, client kubernetes.Interface, namespace, name string, hosts []string, now time.Time) (*Certs, error) {
	secrets := client.CoreV1().Secrets(namespace)
	var lastErr error
	for range ensureAttempts {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			certs, err := NewCerts(hosts, now)
			if err != nil {
				return nil, err
			}
			s = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name,
					Labels: map[string]string{"app.kubernetes.io/part-of": "lastcall", "app.kubernetes.io/component": "injector"}},
				Type: corev1.SecretTypeOpaque,
				Data: certs.data(),
			}
			_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
			if err == nil {
				return certs, nil
			}
			if !apierrors.IsAlreadyExists(err) {
				return nil, fmt.Errorf("create secret %s/%s: %w", namespace, name, err)
			}
			lastErr = err // another replica was first: read its certificates
		case err != nil:
			return nil, fmt.Errorf("get secret %s/%s: %w", namespace, name, err)
		default:
			held := certsFrom(s.Data)
			certs, changed, err := held.Renew(hosts, now)
			if err != nil {
				return nil, err
			}
			if !changed {
				return certs, nil
			}
			s = s.DeepCopy()
			s.Data = certs.data()
			_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
			if err == nil {
				return certs, nil
			}
			if !apierrors.IsConflict(err) {
				return nil, fmt.Errorf("update secret %s/%s: %w", namespace, name, err)
			}
			lastErr = err // another replica renewed them: read again
		}
	}
	return nil, fmt.Errorf("secret %s/%s keeps changing: %w", namespace, name, lastErr)
}

func (c *Certs) data() map[string][]byte {
	d := map[string][]byte{keyCACert: c.CACert, keyCAKey: c.CAKey, keyServeCert: c.ServeCert, keyServeKey: c.ServeKey}
	if len(c.PreviousCA) > 0 {
		d[keyPrevCA] = c.PreviousCA
	}
	return d
}

func certsFrom(data map[string][]byte) *Certs {
	return &Certs{CACert: data[keyCACert], CAKey: data[keyCAKey], ServeCert: data[keyServeCert], ServeKey: data[keyServeKey],
		PreviousCA: data[keyPrevCA]}
}

// PatchCABundle writes caPEM into the clientConfig.caBundle of every
// webhook of the MutatingWebhookConfiguration name, and reports whether it
// had to change anything. It needs get and patch on that configuration.
func PatchCABundle(ctx context.Context, client kubernetes.Interface, name string, caPEM []byte) (bool, error) {
	api := client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	cfg, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("get mutatingwebhookconfiguration %s: %w", name, err)
	}
	if len(cfg.Webhooks) == 0 {
		return false, fmt.Errorf("mutatingwebhookconfiguration %s has no webhooks", name)
	}
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value,omitempty"`
	}
	// The resourceVersion test makes a concurrent change fail the patch
	// rather than be overwritten by indexes that moved.
	ops := []op{{Op: "test", Path: "/metadata/resourceVersion", Value: cfg.ResourceVersion}}
	for i, wh := range cfg.Webhooks {
		if string(wh.ClientConfig.CABundle) != string(caPEM) {
			ops = append(ops, op{Op: "add", Path: fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), Value: caPEM})
		}
	}
	if len(ops) == 1 {
		return false, nil
	}
	raw, err := json.Marshal(ops)
	if err != nil {
		return false, fmt.Errorf("encode patch: %w", err)
	}
	if _, err := api.Patch(ctx, name, types.JSONPatchType, raw, metav1.PatchOptions{}); err != nil {
		return false, fmt.Errorf("patch mutatingwebhookconfiguration %s: %w", name, err)
	}
	return true, nil
}

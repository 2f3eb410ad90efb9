package injector

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"testing"
	"time"
)

func TestCerts(t *testing.T) {
	now := time.Now()
	hosts := []string{"svc.ns.svc", "127.0.0.1"}
	c, err := NewCerts(hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Check(hosts, now); err != nil {
		t.Fatalf("fresh certs: %v", err)
	}
	ca, err := parseCert(c.CACert)
	if err != nil {
		t.Fatal(err)
	}
	if key, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || key.Curve != elliptic.P256() || !ca.IsCA {
		t.Errorf("CA key %T (CA %v), want ECDSA P-256", ca.PublicKey, ca.IsCA)
	}
	if _, err := c.TLSCertificate(); err != nil {
		t.Fatal(err)
	}

	t.Run("reused while valid", func(t *testing.T) {
		got, changed, err := c.Renew(hosts, now.Add(24*time.Hour))
		if err != nil || changed || got != c {
			t.Errorf("Renew: changed %v err %v, want the same certs", changed, err)
		}
	})
	t.Run("new host: new serving cert, same CA", func(t *testing.T) {
		more := append([]string{"svc.ns.svc.cluster.local"}, hosts...)
		if err := c.Check(more, now); err == nil {
			t.Fatal("Check passed for a name the cert lacks")
		}
		got, changed, err := c.Renew(more, now)
		if err != nil || !changed {
			t.Fatalf("Renew: changed %v err %v", changed, err)
		}
		if !bytes.Equal(got.CACert, c.CACert) || bytes.Equal(got.ServeCert, c.ServeCert) {
			t.Error("want the same CA and a new serving cert")
		}
		if err := got.Check(more, now); err != nil {
			t.Error(err)
		}
	})
	t.Run("CA near its end: all new", func(t *testing.T) {
		late := now.Add(caLifetime - renewBefore/2)
		got, changed, err := c.Renew(hosts, late)
		if err != nil || !changed || bytes.Equal(got.CACert, c.CACert) {
			t.Fatalf("Renew: changed %v err %v, want a new CA", changed, err)
		}
		if err := got.Check(hosts, late); err != nil {
			t.Error(err)
		}
	})
	t.Run("garbage: all new", func(t *testing.T) {
		got, changed, err := (&Certs{CACert: []byte("x")}).Renew(hosts, now)
		if err != nil || !changed || got.Check(hosts, now) != nil {
			t.Errorf("Renew of garbage: changed %v err %v", changed, err)
		}
	})
	t.Run("serving cert verifies", func(t *testing.T) {
		cert, err := c.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(c.CACert)
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "svc.ns.svc"}); err != nil {
			t.Error(err)
		}
	})
}

package injector

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// Lifetimes of the certificates. A running injector renews them
// renewBefore their end (Rotator); a new CA is trusted next to the old one
// until the old one expires.
const (
	caLifetime    = 10 * 365 * 24 * time.Hour
	leafLifetime  = 365 * 24 * time.Hour
	renewBefore   = 30 * 24 * time.Hour
	clockSkewSlop = 5 * time.Minute
)

// Certs are the webhook's CA and its serving certificate, PEM-encoded.
type Certs struct {
	CACert, CAKey       []byte
	ServeCert, ServeKey []byte
	// PreviousCA is the CA that CACert replaced, trusted too (in the
	// caBundle) until it expires, so that serving certificates it signed
	// still verify while replicas switch.
	PreviousCA []byte
}

// Bundle returns the caBundle for the webhook configuration: the CA, and
// the previous one while it is still valid at now.
func (c *Certs) Bundle(now time.Time) []byte {
	if prev, err := parseCert(c.PreviousCA); err == nil && now.Before(prev.NotAfter) {
		return append(append([]byte{}, c.CACert...), c.PreviousCA...)
	}
	return c.CACert
}

// TLSCertificate returns the serving certificate for a tls.Config.
func (c *Certs) TLSCertificate() (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(c.ServeCert, c.ServeKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("serving key pair: %w", err)
	}
	return cert, nil
}

// NewCerts generates a CA (ECDSA P-256) and a serving certificate it signs
// for hosts (DNS names or IP addresses), valid from now.
func NewCerts(hosts []string, now time.Time) (*Certs, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "lastcall-injector-ca"},
		NotBefore:             now.Add(-clockSkewSlop),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	c := &Certs{CACert: pemBlock("CERTIFICATE", caDER)}
	if c.CAKey, err = encodeKey(caKey); err != nil {
		return nil, err
	}
	if err := c.issue(ca, caKey, hosts, now); err != nil {
		return nil, err
	}
	return c, nil
}

// issue signs a new serving certificate for hosts with the CA.
func (c *Certs) issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string, now time.Time) error {
	if len(hosts) == 0 {
		return errors.New("no host names for the serving certificate")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-clockSkewSlop),
		NotAfter:     now.Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("create serving certificate: %w", err)
	}
	c.ServeCert = pemBlock("CERTIFICATE", der)
	c.ServeKey, err = encodeKey(key)
	return err
}

// Check returns an error unless c holds a CA and a serving certificate it
// signed for every one of hosts, both valid at now for at least another
// 30 days.
func (c *Certs) Check(hosts []string, now time.Time) error {
	ca, _, err := c.parseCA()
	if err != nil {
		return err
	}
	leaf, err := parseCert(c.ServeCert)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	if _, err := tls.X509KeyPair(c.ServeCert, c.ServeKey); err != nil {
		return fmt.Errorf("serving key pair: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, at := range []time.Time{now, now.Add(renewBefore)} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: at}); err != nil {
			return fmt.Errorf("serving certificate at %s: %w", at.Format(time.RFC3339), err)
		}
	}
	for _, h := range hosts {
		if err := leaf.VerifyHostname(h); err != nil {
			return fmt.Errorf("serving certificate: %w", err)
		}
	}
	if !slices.Equal(leaf.DNSNames, dnsNames(hosts)) {
		return fmt.Errorf("serving certificate names %v, want %v", leaf.DNSNames, dnsNames(hosts))
	}
	return nil
}

// Renew returns certificates valid for hosts at now: c itself when Check
// passes, a new serving certificate from the same CA when only it is
// wrong (the caBundle stays), or all new ones.
func (c *Certs) Renew(hosts []string, now time.Time) (*Certs, bool, error) {
	if c.Check(hosts, now) == nil {
		return c, false, nil
	}
	ca, caKey, err := c.parseCA()
	if err != nil || now.Add(renewBefore).After(ca.NotAfter) || now.Before(ca.NotBefore) {
		fresh, err := NewCerts(hosts, now)
		if err == nil && ca != nil && now.Before(ca.NotAfter) {
			fresh.PreviousCA = c.CACert
		}
		return fresh, true, err
	}
	out := &Certs{CACert: c.CACert, CAKey: c.CAKey, PreviousCA: c.PreviousCA}
	if err := out.issue(ca, caKey, hosts, now); err != nil {
		return nil, false, err
	}
	return out, true, nil
}

// parseCA returns the CA certificate and key.
func (c *Certs) parseCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	ca, err := parseCert(c.CACert)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !ca.IsCA {
		return nil, nil, errors.New("CA certificate is not a CA")
	}
	block, _ := pem.Decode(c.CAKey)
	if block == nil {
		return nil, nil, errors.New("CA key: no PEM block")
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	if !key.PublicKey.Equal(ca.PublicKey) {
		return nil, nil, errors.New("CA key does not match the CA certificate")
	}
	return ca, key, nil
}

func dnsNames(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		if net.ParseIP(h) == nil {
			out = append(out, h)
		}
	}
	return out
}

func parseCert(pemBytes []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pemBlock("EC PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// serial returns a random 128-bit certificate serial number.
func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return n
}

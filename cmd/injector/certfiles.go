package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// certFiles serves the key pair in dir (tls.crt, tls.key, as cert-manager
// writes them into a mounted Secret), read again when it changes.
type certFiles struct {
	dir string

	mu      sync.Mutex // guards the fields below
	modTime time.Time
	cert    *tls.Certificate
}

func newCertFiles(dir string) *certFiles { return &certFiles{dir: dir} }

// get implements tls.Config.GetCertificate.
func (f *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	certPath, keyPath := filepath.Join(f.dir, "tls.crt"), filepath.Join(f.dir, "tls.key")
	st, err := os.Stat(certPath)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cert != nil && st.ModTime().Equal(f.modTime) {
		return f.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		if f.cert != nil {
			return f.cert, nil // half-written update: keep the old pair
		}
		return nil, fmt.Errorf("serving key pair in %s: %w", f.dir, err)
	}
	f.cert, f.modTime = &cert, st.ModTime()
	return f.cert, nil
}

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/injector"
)

// writePair writes a new key pair into dir as cert-manager would, with the
// given modification time, and returns its certificate.
func writePair(t *testing.T, dir string, mtime time.Time) []byte {
	t.Helper()
	c, err := injector.NewCerts([]string{"svc.ns.svc"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"tls.crt": c.ServeCert, "tls.key": c.ServeKey} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	return c.ServeCert
}

func TestCertFiles(t *testing.T) {
	dir := t.TempDir()
	f := newCertFiles(dir)
	if _, err := f.get(nil); err == nil {
		t.Fatal("no files: want an error")
	}
	t0 := time.Now().Add(-time.Hour)
	writePair(t, dir, t0)
	first, err := f.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := f.get(nil); again != first {
		t.Error("unchanged files read again")
	}
	writePair(t, dir, t0.Add(time.Minute))
	renewed, err := f.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(renewed.Certificate[0], first.Certificate[0]) {
		t.Error("renewed files not read")
	}
	// A half-written update keeps the pair in use.
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(dir, "tls.crt"), t0.Add(2*time.Minute), t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if kept, err := f.get(nil); err != nil || kept != renewed {
		t.Errorf("half-written update: %v, want the previous pair kept", err)
	}
}

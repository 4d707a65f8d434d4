package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// asCA wraps p for the e2e helpers that take a *ca (the push's trust).
func asCA(p *harness.CA) *ca { return &ca{p} }

// opensslCNOnly makes the seed's certificate with the real openssl:
// `openssl req -x509 -subj /CN=<cn>`, a self-signed certificate with only a
// Common Name, used as the registry's serving certificate and as its CA.
func opensslCNOnly(t *testing.T, cn string) harness.Serving {
	t.Helper()
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "domain.crt"), filepath.Join(dir, "domain.key")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
		"-keyout", key, "-out", crt, "-subj", "/CN="+cn).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req -x509: %v\n%s", err, out)
	}
	var s harness.Serving
	if s.CertPEM, err = os.ReadFile(crt); err != nil {
		t.Fatal(err)
	}
	if s.KeyPEM, err = os.ReadFile(key); err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(s.CertPEM)
	if b == nil {
		t.Fatalf("openssl wrote no PEM certificate to %s", crt)
	}
	if s.Cert, err = x509.ParseCertificate(b.Bytes); err != nil {
		t.Fatal(err)
	}
	return s
}

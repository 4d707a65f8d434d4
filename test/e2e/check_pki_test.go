package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// pkiCert is a certificate with its key, able to sign others: the check
// suite's PKI needs intermediates and expired leaves, which harness.CA
// does not make.
type pkiCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

// pkiTemplate is what differs between the check suite's certificates.
type pkiTemplate struct {
	cn        string
	ca        bool
	names     []string // DNS names or IP addresses
	notBefore time.Time
	notAfter  time.Time
	aia       string // the issuer's URL (Authority Information Access)
}

// issuePKI signs t by parent, or self-signed when parent is nil.
func issuePKI(t *testing.T, tmpl pkiTemplate, parent *pkiCert) *pkiCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.notBefore.IsZero() {
		tmpl.notBefore, tmpl.notAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	}
	c := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: tmpl.cn},
		NotBefore: tmpl.notBefore, NotAfter: tmpl.notAfter,
		BasicConstraintsValid: true, IsCA: tmpl.ca,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.ca {
		c.KeyUsage |= x509.KeyUsageCertSign
		c.ExtKeyUsage = nil
	}
	if tmpl.aia != "" {
		c.IssuingCertificateURL = []string{tmpl.aia}
	}
	for _, n := range tmpl.names {
		if ip := net.ParseIP(n); ip != nil {
			c.IPAddresses = append(c.IPAddresses, ip)
		} else {
			c.DNSNames = append(c.DNSNames, n)
		}
	}
	signer, signerCert := key, c
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, c, signerCert, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	if c, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	return &pkiCert{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// serving is p as the registry's TLS certificate, followed by chain.
func (p *pkiCert) serving(t *testing.T, chain ...*pkiCert) harness.Serving {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(p.key)
	if err != nil {
		t.Fatal(err)
	}
	s := harness.Serving{Cert: p.cert, CertPEM: append([]byte{}, p.pem...),
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})}
	for _, c := range chain {
		s.CertPEM = append(s.CertPEM, c.pem...)
	}
	return s
}

// asCA wraps p for the e2e helpers that take a *ca (the push's trust).
func (p *pkiCert) asCA() *ca { return &ca{&harness.CA{Cert: p.cert, PEM: p.pem}} }

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

// Package certstest makes throwaway CAs and leaf certificates for tests.
package certstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Template describes a certificate to issue. Zero values get sensible
// defaults: valid from an hour ago for a day.
type Template struct {
	CommonName string
	IsCA       bool
	DNSNames   []string
	IPs        []net.IP
	NotBefore  time.Time
	NotAfter   time.Time
}

// Pair is an issued certificate with its private key.
type Pair struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// CertPEM returns the certificate as PEM.
func (p Pair) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Cert.Raw})
}

// KeyPEM returns the private key as PKCS#8 PEM.
func (p Pair) KeyPEM(t testing.TB) []byte {
	b, err := p.EncodeKey()
	require.NoError(t, err)
	return b
}

// EncodeKey returns the private key as PKCS#8 PEM.
func (p Pair) EncodeKey() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(p.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// NewCA issues a self-signed CA certificate.
func NewCA(t testing.TB, cn string) Pair {
	return Issue(t, Template{CommonName: cn, IsCA: true}, nil)
}

// Issue creates a certificate from tmpl, signed by parent or self-signed
// when parent is nil.
func Issue(t testing.TB, tmpl Template, parent *Pair) Pair {
	t.Helper()
	p, err := Create(tmpl, parent)
	require.NoError(t, err)
	return p
}

// Create is Issue for harnesses that run outside a test.
func Create(tmpl Template, parent *Pair) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return Pair{}, err
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	c := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: tmpl.CommonName},
		NotBefore:             tmpl.NotBefore,
		NotAfter:              tmpl.NotAfter,
		IsCA:                  tmpl.IsCA,
		BasicConstraintsValid: true,
		DNSNames:              tmpl.DNSNames,
		IPAddresses:           tmpl.IPs,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	signer, signerCert := key, c
	if parent != nil {
		signer, signerCert = parent.Key, parent.Cert
	}
	der, err := x509.CreateCertificate(rand.Reader, c, signerCert, &key.PublicKey, signer)
	if err != nil {
		return Pair{}, err
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		return Pair{}, err
	}
	return Pair{Cert: parsed, Key: key}, nil
}

package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"time"
)

func mustPool(pemData []byte) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemData) {
		panic("no certificates in CA PEM")
	}
	return p
}

// CA is a test certificate authority that can sign registry serving certificates.
type CA struct {
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
	// KeyPEM is the CA's private key, for "private key in tls.crt" rejections.
	KeyPEM []byte
}

// Serving is a serving certificate with its key, for a registry's TLS.
type Serving struct {
	Cert            *x509.Certificate
	CertPEM, KeyPEM []byte
}

// NewCA makes a CA valid for a day.
func NewCA(cn string) *CA {
	s, key := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, nil)
	return &CA{Cert: s.Cert, PEM: s.CertPEM, key: key, KeyPEM: s.KeyPEM}
}

// Leaf signs a serving certificate for registry reg ("host" or "host:port").
func (ca *CA) Leaf(reg string) *x509.Certificate {
	return ca.Serving(RegistryHost(reg)).Cert
}

// Serving signs a serving certificate for names, each a DNS name or an IP
// address; the first is its common name.
func (ca *CA) Serving(names ...string) Serving {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	s, _ := issue(tmpl, ca.Cert, ca.key)
	return s
}

// issue signs tmpl, valid for a day, with a new key: by parent's key, or
// itself when parent is nil. It panics on failure, which only a broken
// crypto/rand causes.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (Serving, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, big.NewInt(1<<62)); err != nil {
		panic(err)
	}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		panic(err)
	}
	return Serving{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}, key
}

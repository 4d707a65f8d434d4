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

// CA is a test certificate with its key: a certificate authority that can
// sign registry serving certificates and intermediates, or a leaf that Issue made.
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
func NewCA(cn string) *CA { return Issue(Template{CN: cn, CA: true}, nil) }

// Template is what differs between the suites' certificates.
type Template struct {
	CN string
	CA bool
	// Names are DNS names or IP addresses.
	Names []string
	// NotBefore and NotAfter default to an hour ago and a day from now.
	NotBefore, NotAfter time.Time
	// AIA is the issuer's URL (Authority Information Access).
	AIA string
}

// Issue signs tmpl by parent, or self-signed when parent is nil: a CA (an
// intermediate under parent) when tmpl.CA, else a serving certificate.
func Issue(tmpl Template, parent *CA) *CA {
	c := &x509.Certificate{
		Subject:   pkix.Name{CommonName: tmpl.CN},
		NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter,
		BasicConstraintsValid: true, IsCA: tmpl.CA,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.CA {
		c.KeyUsage |= x509.KeyUsageCertSign
		c.ExtKeyUsage = nil
	}
	if tmpl.AIA != "" {
		c.IssuingCertificateURL = []string{tmpl.AIA}
	}
	for _, n := range tmpl.Names {
		if ip := net.ParseIP(n); ip != nil {
			c.IPAddresses = append(c.IPAddresses, ip)
		} else {
			c.DNSNames = append(c.DNSNames, n)
		}
	}
	var parentCert *x509.Certificate
	var parentKey *ecdsa.PrivateKey
	if parent != nil {
		parentCert, parentKey = parent.Cert, parent.key
	}
	s, key := issue(c, parentCert, parentKey)
	return &CA{Cert: s.Cert, PEM: s.CertPEM, key: key, KeyPEM: s.KeyPEM}
}

// Chain is ca's certificate and key as a registry's serving certificate,
// followed by chain.
func (ca *CA) Chain(chain ...*CA) Serving {
	s := Serving{Cert: ca.Cert, CertPEM: append([]byte{}, ca.PEM...), KeyPEM: ca.KeyPEM}
	for _, c := range chain {
		s.CertPEM = append(s.CertPEM, c.PEM...)
	}
	return s
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

// issue signs tmpl with a new key, valid for a day unless tmpl says
// otherwise: by parent's key, or itself when parent is nil. It panics on failure, which only a broken
// crypto/rand causes.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (Serving, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, big.NewInt(1<<62)); err != nil {
		panic(err)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	}
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

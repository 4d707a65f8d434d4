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
	"time"
)

// registryHost is the registry's name in image references: not loopback, so
// containerd does not fall back to plain HTTP (REAL-COMPONENTS.md, Trap 1).
const registryHost = "registry.nodetrust.test"

// ca is a fresh certificate authority with its key, able to sign the
// registry's serving certificate.
type ca struct {
	cert   *x509.Certificate
	pem    []byte
	keyPEM []byte
	key    *ecdsa.PrivateKey
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n
}

func newCA(cn string) (*ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"nodetrust e2e"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	cert, certPEM, keyPEM, err := sign(tmpl, tmpl, key, key)
	if err != nil {
		return nil, err
	}
	return &ca{cert: cert, pem: certPEM, keyPEM: keyPEM, key: key}, nil
}

// sign issues tmpl for key, signed by parent's parentKey, and returns the
// certificate and both PEM encodings.
func sign(tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) (*x509.Certificate, []byte, []byte, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// pool is a cert pool holding only this CA.
func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// servingCert is a registry serving certificate and its key.
type servingCert struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
}

// serving signs a serving certificate with SANs IP:127.0.0.1, DNS:localhost
// and DNS:registry.nodetrust.test.
func (c *ca) serving() (*servingCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: registryHost},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", registryHost},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	cert, certPEM, keyPEM, err := sign(tmpl, c.cert, key, c.key)
	if err != nil {
		return nil, err
	}
	return &servingCert{cert: cert, certPEM: certPEM, keyPEM: keyPEM}, nil
}

package loaders

import (
	"crypto/x509"
	"net"
	"testing"

	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
)

const (
	registryHost = "registry.nodetrust.test"
	registryPort = registryHost + ":5443"
)

// testCA is a throw-away certificate authority.
type testCA struct {
	certstest.Pair
	pem    []byte // CERTIFICATE block
	keyPEM []byte // PKCS#8 "PRIVATE KEY" block
}

func newCA(t *testing.T, cn string) *testCA {
	t.Helper()
	p := certstest.NewCA(t, cn)
	return &testCA{Pair: p, pem: p.CertPEM(), keyPEM: p.KeyPEM(t)}
}

// leaf issues a serving certificate for the given DNS names (and 127.0.0.1).
func (ca *testCA) leaf(t *testing.T, dnsNames ...string) *x509.Certificate {
	t.Helper()
	return certstest.Issue(t, certstest.Template{CommonName: dnsNames[0], DNSNames: dnsNames,
		IPs: []net.IP{net.ParseIP("127.0.0.1")}}, &ca.Pair).Cert
}

// verifyLeaf verifies leaf for dnsName against roots the way crypto/tls does
// for a client handshake (nil roots = the system pool).
func verifyLeaf(leaf *x509.Certificate, roots *x509.CertPool, dnsName string) error {
	_, err := leaf.Verify(x509.VerifyOptions{
		DNSName:   dnsName,
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

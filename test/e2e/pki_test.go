package e2e

import (
	"crypto/x509"

	"github.com/nodetrust/nodetrust/test/harness"
)

// registryHost is the registry's name in image references: not loopback, so
// containerd does not fall back to plain HTTP (REAL-COMPONENTS.md, Trap 1).
const registryHost = "registry.nodetrust.test"

// ca is a fresh certificate authority (test/harness's), able to sign
// the registry's serving certificate.
type ca struct{ *harness.CA }

func newCA(cn string) *ca { return &ca{harness.NewCA(cn)} }

// pool is a cert pool holding only this CA.
func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

// serving signs the registry's serving certificate, with SANs
// DNS:registry.nodetrust.test, DNS:localhost and IP:127.0.0.1.
func (c *ca) serving() harness.Serving {
	return c.Serving(registryHost, "localhost", "127.0.0.1")
}

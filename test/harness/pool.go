package harness

import (
	"crypto/x509"
	"testing"
)

// PoolWith returns pool with certs added (the system pool for nil, as
// containerd starts from it when a host names a ca); pool itself is left as
// it was.
func PoolWith(t testing.TB, pool *x509.CertPool, certs ...*x509.Certificate) *x509.CertPool {
	t.Helper()
	if len(certs) == 0 {
		return pool
	}
	if pool == nil {
		sys, err := x509.SystemCertPool()
		if err != nil {
			t.Fatal(err)
		}
		pool = sys
	} else {
		pool = pool.Clone()
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

// SamePool is x509.CertPool.Equal that treats two nils as equal.
func SamePool(a, b *x509.CertPool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}

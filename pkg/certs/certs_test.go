package certs_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/certs"
	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
)

func TestParse(t *testing.T) {
	a := certstest.NewCA(t, "A")
	b := certstest.NewCA(t, "B")
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})
	pkcs8, err := x509.MarshalPKCS8PrivateKey(a.Key)
	require.NoError(t, err)
	sec1, err := x509.MarshalECPrivateKey(a.Key)
	require.NoError(t, err)
	keyAsCert := func(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}) }

	tests := map[string]struct {
		data     []byte
		wantCNs  []string
		skipped  int
		errMatch string
	}{
		"single":                 {data: a.CertPEM(), wantCNs: []string{"A"}},
		"bundle with comments":   {data: join([]byte("# A\n"), a.CertPEM(), []byte("# B\n"), b.CertPEM()), wantCNs: []string{"A", "B"}},
		"DER":                    {data: a.Cert.Raw, wantCNs: []string{"A"}},
		"empty":                  {data: nil},
		"not PEM":                {data: []byte("hello")},
		"unparsable cert":        {data: join(bad, a.CertPEM()), wantCNs: []string{"A"}, skipped: 1},
		"private key":            {data: join(a.CertPEM(), a.KeyPEM(t)), errMatch: `PEM block 2 is "PRIVATE KEY", not CERTIFICATE (a private key is never distributed)`},
		"RSA private key type":   {data: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{1}}), errMatch: "a private key is never distributed"},
		"certificate request":    {data: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1}}), errMatch: `"CERTIFICATE REQUEST", not CERTIFICATE`},
		"headers":                {data: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: a.Cert.Raw}), errMatch: "headers"},
		"key before certificate": {data: join(a.KeyPEM(t), a.CertPEM()), errMatch: "PEM block 1"},
		"PKCS8 key typed CERTIFICATE": {data: join(a.CertPEM(), keyAsCert(pkcs8)),
			errMatch: `PEM block 2 is labelled "CERTIFICATE" but holds a private key, not a certificate (a private key is never distributed)`},
		"SEC1 key typed CERTIFICATE": {data: keyAsCert(sec1), errMatch: `PEM block 1 is labelled "CERTIFICATE" but holds a private key`},
		"DER key":                    {data: append(pkcs8, '\n'), errMatch: "holds a DER-encoded private key, not a certificate"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, skipped, err := certs.Parse(tc.data)
			if tc.errMatch != "" {
				require.ErrorContains(t, err, tc.errMatch)
				require.Nil(t, got)
				return
			}
			require.NoError(t, err)
			require.Len(t, skipped, tc.skipped)
			var cns []string
			for _, c := range got {
				cns = append(cns, c.Subject.CommonName)
			}
			require.Equal(t, tc.wantCNs, cns)
		})
	}
}

// TestParseDERWhitespaceEnd is the regression test for DER certificates
// whose last byte is a white-space value (about 1 in 40 ECDSA signatures).
func TestParseDERWhitespaceEnd(t *testing.T) {
	for tries := 0; tries < 5000; tries++ {
		a := certstest.NewCA(t, "A")
		last := a.Cert.Raw[len(a.Cert.Raw)-1]
		if last != ' ' && last != '\n' && last != '\t' && last != '\r' && last != '\v' && last != '\f' {
			continue
		}
		got, _, err := certs.Parse(a.Cert.Raw)
		require.NoError(t, err)
		require.Len(t, got, 1)
		got, _, err = certs.Parse(append(append([]byte{}, a.Cert.Raw...), '\n'))
		require.NoError(t, err)
		require.Len(t, got, 1, "trailing newline after DER")
		return
	}
	t.Fatal("no certificate ending in white space was generated")
}

func TestNormalizeDedupesAndSorts(t *testing.T) {
	a := certstest.NewCA(t, "A")
	b := certstest.NewCA(t, "B")
	ab, _, err := certs.Parse(join(a.CertPEM(), b.CertPEM(), a.CertPEM()))
	require.NoError(t, err)
	ba, _, err := certs.Parse(join(b.CertPEM(), a.CertPEM()))
	require.NoError(t, err)

	n1, n2 := certs.Normalize(ab), certs.Normalize(ba)
	require.Len(t, n1, 2)
	require.Equal(t, certs.EncodePEM(n1), certs.EncodePEM(n2))
	require.Less(t, n1[0].SHA256, n1[1].SHA256)
}

func TestValidityProblem(t *testing.T) {
	now := time.Now()
	expired := certstest.Issue(t, certstest.Template{CommonName: "old", IsCA: true, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, nil)
	future := certstest.Issue(t, certstest.Template{CommonName: "new", IsCA: true, NotBefore: now.Add(time.Hour)}, nil)
	ok := certstest.NewCA(t, "ok")
	for pair, want := range map[*certstest.Pair]string{&expired: "expired at", &future: "not valid before", &ok: ""} {
		got := certs.ValidityProblem(mustOne(t, pair.CertPEM()), now)
		if want == "" {
			require.Empty(t, got)
		} else {
			require.Contains(t, got, want)
		}
	}
}

func TestServingCertMismatch(t *testing.T) {
	ca := certstest.NewCA(t, "Example Root CA")
	// openssl req -x509 -subj /CN=registry.example: self-signed, CA, no SANs.
	cnOnly := certstest.Issue(t, certstest.Template{CommonName: "registry.example", IsCA: true}, nil)
	withSAN := certstest.Issue(t, certstest.Template{CommonName: "registry.example", DNSNames: []string{"registry.example"}}, nil)
	leaf := certstest.Issue(t, certstest.Template{CommonName: "registry.example"}, &ca)

	tests := []struct {
		name string
		pair certstest.Pair
		host string
		want bool
	}{
		{"root CA without SANs is a CA, not a serving cert", ca, "registry.example", false},
		{"CN-only self-signed serving cert", cnOnly, "registry.example", true},
		{"self-signed with matching SAN", withSAN, "registry.example", false},
		{"self-signed with SAN for another host", withSAN, "other.example", true},
		{"CA-issued leaf is not self-signed", leaf, "other.example", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, certs.ServingCertMismatch(mustOne(t, tc.pair.CertPEM()), tc.host))
		})
	}
}

// FuzzParse checks that whatever Parse accepts, its output holds only
// CERTIFICATE blocks, so no key material can pass through.
func FuzzParse(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("# comment\n"))
	f.Add([]byte{0x30, 0x82, 0x01, 0x0a})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, _, err := certs.Parse(data)
		if err != nil {
			require.Nil(t, got)
			return
		}
		out := certs.EncodePEM(got)
		for rest := out; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				require.Empty(t, bytes.TrimSpace(rest))
				break
			}
			require.Equal(t, "CERTIFICATE", block.Type)
		}
	})
}

func mustOne(t *testing.T, data []byte) certs.Cert {
	t.Helper()
	got, _, err := certs.Parse(data)
	require.NoError(t, err)
	require.Len(t, got, 1)
	return got[0]
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// Package certs parses CA certificate data strictly: only PEM blocks of type
// CERTIFICATE (or a single DER certificate) are accepted, and any other block
// — a private key above all — is an error, so nothing but public
// certificates can ever reach a host. Certificates are deduplicated by
// SHA-256 and sorted, so equal input always renders byte-identical output.
package certs

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Cert is one parsed certificate with its fingerprint.
type Cert struct {
	*x509.Certificate
	// SHA256 is the hex SHA-256 of the DER encoding.
	SHA256 string
}

// BlockError reports a PEM block that is not a certificate.
type BlockError struct {
	Index int    // 1-based position of the block in the data
	Type  string // the PEM type found
	// PrivateKey: the block is typed CERTIFICATE but holds a private key.
	PrivateKey bool
}

func (e *BlockError) Error() string {
	if e.PrivateKey {
		return fmt.Sprintf("PEM block %d is labelled %q but holds a private key, not a certificate (a private key is never distributed)", e.Index, e.Type)
	}
	msg := fmt.Sprintf("PEM block %d is %q, not CERTIFICATE", e.Index, e.Type)
	if strings.Contains(e.Type, "PRIVATE KEY") {
		msg += " (a private key is never distributed)"
	}
	return msg
}

// errDERKey reports data without PEM blocks that is a DER private key.
var errDERKey = errors.New("holds a DER-encoded private key, not a certificate (a private key is never distributed)")

// isPrivateKey reports whether der is a PKCS #8, PKCS #1 or SEC 1 private key.
func isPrivateKey(der []byte) bool {
	if _, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return true
	}
	if _, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return true
	}
	_, err := x509.ParseECPrivateKey(der)
	return err == nil
}

// Parse reads every certificate in data. Text outside PEM blocks (comments
// in a CA bundle) is ignored. A non-CERTIFICATE block, a block with PEM
// headers, and a private key in any form (a CERTIFICATE block holding one,
// a bare DER key) are errors. A CERTIFICATE block that does not parse is skipped
// and described in skipped. Data with no PEM block at all is tried as one
// DER certificate.
func Parse(data []byte) (found []Cert, skipped []string, err error) {
	rest := data
	for index := 1; ; index++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, nil, &BlockError{Index: index, Type: block.Type}
		}
		if len(block.Headers) > 0 {
			return nil, nil, fmt.Errorf("PEM block %d has headers, which a certificate must not have", index)
		}
		c, perr := x509.ParseCertificate(block.Bytes)
		if perr != nil && isPrivateKey(block.Bytes) {
			return nil, nil, &BlockError{Index: index, Type: block.Type, PrivateKey: true}
		}
		if perr != nil {
			skipped = append(skipped, fmt.Sprintf("certificate %d does not parse: %v", index, perr))
			continue
		}
		found = append(found, newCert(c))
	}
	if found == nil && skipped == nil && !bytes.Contains(data, []byte("-----BEGIN")) {
		if c := parseDER(data); c != nil {
			found = append(found, newCert(c))
		} else if der := derElement(data); der != nil && isPrivateKey(der) {
			return nil, nil, errDERKey
		}
	}
	return found, skipped, nil
}

// parseDER parses one DER certificate, allowing only white space after it
// (a DER file saved with a trailing newline). The DER itself may end in a
// white-space byte, so its end is taken from its ASN.1 length, not trimmed.
func parseDER(data []byte) *x509.Certificate {
	der := derElement(data)
	if der == nil {
		return nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil
	}
	return c
}

// derElement is the one ASN.1 element data holds, followed by nothing but
// white space, or nil.
func derElement(data []byte) []byte {
	rest, err := asn1.Unmarshal(data, &asn1.RawValue{})
	if err != nil || len(bytes.TrimSpace(rest)) > 0 {
		return nil
	}
	return data[:len(data)-len(rest)]
}

func newCert(c *x509.Certificate) Cert {
	sum := sha256.Sum256(c.Raw)
	return Cert{Certificate: c, SHA256: hex.EncodeToString(sum[:])}
}

// Normalize removes duplicates (by SHA-256) and sorts by fingerprint.
func Normalize(in []Cert) []Cert {
	out := make([]Cert, 0, len(in))
	seen := make(map[string]bool, len(in))
	for _, c := range in {
		if !seen[c.SHA256] {
			seen[c.SHA256] = true
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SHA256 < out[j].SHA256 })
	return out
}

// EncodePEM renders certificates as concatenated CERTIFICATE PEM blocks.
func EncodePEM(cs []Cert) []byte {
	var b bytes.Buffer
	for _, c := range cs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// ValidityProblem describes why c is not valid at now, or returns "".
func ValidityProblem(c Cert, now time.Time) string {
	switch {
	case now.After(c.NotAfter):
		return fmt.Sprintf("certificate %q expired at %s", c.Subject.String(), c.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(c.NotBefore):
		return fmt.Sprintf("certificate %q is not valid before %s", c.Subject.String(), c.NotBefore.UTC().Format(time.RFC3339))
	}
	return ""
}

// SelfSigned reports whether c is signed by its own key.
func SelfSigned(c Cert) bool {
	if !bytes.Equal(c.RawIssuer, c.RawSubject) {
		return false
	}
	return c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// ServingCertMismatch reports, for a self-signed certificate that looks like a
// registry's own serving certificate used as its CA (not a CA, or carrying
// subjectAltNames, or named after the host), whether its subjectAltNames fail
// to cover hostname. Go-based runtimes ignore the Common Name, so such a
// certificate makes pulls fail with an x509 error even when trusted.
func ServingCertMismatch(c Cert, hostname string) bool {
	if !SelfSigned(c) {
		return false
	}
	hasSANs := len(c.DNSNames)+len(c.IPAddresses) > 0
	serving := !c.IsCA || hasSANs || strings.EqualFold(c.Subject.CommonName, hostname)
	return serving && c.VerifyHostname(hostname) != nil
}

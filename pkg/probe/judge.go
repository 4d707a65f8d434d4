package probe

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// trust is the pool a runtime would verify with, and its certificates for
// explaining a failure.
type trust struct {
	pool       *x509.CertPool
	configured []*x509.Certificate
	system     int
}

func newTrust(t Target) trust {
	tr := trust{pool: x509.NewCertPool()}
	for _, c := range parsePEM(t.System) {
		tr.pool.AddCert(c)
		tr.system++
	}
	for _, data := range t.CAs {
		for _, c := range parsePEM(data) {
			tr.pool.AddCert(c)
			tr.configured = append(tr.configured, c)
		}
	}
	return tr
}

// parsePEM returns the certificates in data, skipping anything else, as
// x509.CertPool.AppendCertsFromPEM does.
func parsePEM(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for len(data) > 0 {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" || len(b.Headers) != 0 {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// describeTrust names the configured CAs and counts the system roots.
func (tr trust) describe() string {
	var n []string
	for _, c := range tr.configured {
		n = append(n, c.Subject.String())
	}
	s := "no configured CA"
	if len(n) > 0 {
		s = "configured " + strings.Join(n, "; ")
	}
	return fmt.Sprintf("%s, %d system roots", s, tr.system)
}

// judge verifies the served chain as crypto/tls would (the same pool,
// intermediates from the handshake, the server name) and explains the
// first error Go reports, so the verdict matches what a Go runtime's pull
// fails with.
func judge(served []*x509.Certificate, t Target, now time.Time) Result {
	if len(served) == 0 {
		return Result{Verdict: TLSError, Reason: "the server sent no certificate"}
	}
	leaf := served[0]
	tr := newTrust(t)
	inter := x509.NewCertPool()
	for _, c := range served[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		DNSName:       t.ServerName,
		Roots:         tr.pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err == nil {
		anchor := chains[0][len(chains[0])-1]
		return Result{Verdict: Verified, Reason: fmt.Sprintf("%s verified: %s, anchored at %s",
			t.ServerName, chainString(chains[0]), anchor.Subject)}
	}
	var (
		hostErr    x509.HostnameError
		invalidErr x509.CertificateInvalidError
		unknownErr x509.UnknownAuthorityError
	)
	switch {
	case errors.As(err, &hostErr):
		return nameResult(leaf, t.ServerName)
	case errors.As(err, &invalidErr) && invalidErr.Reason == x509.Expired:
		return validityResult(served, tr, now)
	case errors.As(err, &unknownErr):
		return authorityResult(served, tr)
	default:
		return Result{Verdict: TLSError, Reason: fmt.Sprintf("certificate of %s rejected: %v", t.ServerName, err)}
	}
}

func chainString(chain []*x509.Certificate) string {
	var n []string
	for _, c := range chain {
		n = append(n, c.Subject.String())
	}
	return strings.Join(n, " ← ")
}

// nameResult explains a certificate that does not cover the server name,
// with the Common-Name-only case called out: Go ignores the CN.
func nameResult(leaf *x509.Certificate, name string) Result {
	san := "DNS:" + name
	if net.ParseIP(name) != nil {
		san = "IP:" + name
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses) == 0 {
		cn := leaf.Subject.CommonName
		return Result{
			Verdict: NameNotCovered,
			Reason:  fmt.Sprintf("certificate has no subjectAltName, only CN=%s: it covers no name for a Go runtime, %s included", cn, name),
			Hint:    fmt.Sprintf("certificate has only CN=%s; Go runtimes ignore the Common Name: reissue with subjectAltName %s", cn, san),
		}
	}
	return Result{
		Verdict: NameNotCovered,
		Reason:  fmt.Sprintf("certificate covers %s, not %s", names(leaf), name),
		Hint:    fmt.Sprintf("reissue with subjectAltName %s, or pull by a name the certificate covers", san),
	}
}

// validityResult names the certificate (served or trusted) outside its
// validity period.
func validityResult(served []*x509.Certificate, tr trust, now time.Time) Result {
	type checked struct {
		role string
		c    *x509.Certificate
	}
	var all []checked
	for i, c := range served {
		role := "serving certificate"
		if i > 0 {
			role = "served intermediate"
		}
		all = append(all, checked{role, c})
	}
	for _, c := range tr.configured {
		all = append(all, checked{"trusted CA", c})
	}
	for _, x := range all {
		if now.After(x.c.NotAfter) {
			return Result{Verdict: Expired,
				Reason: fmt.Sprintf("%s %s expired at %s (now %s)", x.role, x.c.Subject, stamp(x.c.NotAfter), stamp(now)),
				Hint:   "renew it: the runtimes refuse it whatever the trust"}
		}
		if now.Before(x.c.NotBefore) {
			return Result{Verdict: NotYetValid,
				Reason: fmt.Sprintf("%s %s is not valid before %s (now %s)", x.role, x.c.Subject, stamp(x.c.NotBefore), stamp(now)),
				Hint:   "check this node's clock, or the certificate's start date"}
		}
	}
	return Result{Verdict: Expired, Reason: "a certificate of the chain is outside its validity period (now " + stamp(now) + ")"}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// authorityResult explains a chain that reaches no trusted CA: either the
// trust holds the wrong CA, or the registry leaves out an intermediate.
func authorityResult(served []*x509.Certificate, tr trust) Result {
	top := served[0]
	path := []*x509.Certificate{top}
	for !selfSigned(top) {
		next := issuerIn(top, served)
		if next == nil || len(path) > len(served) {
			break
		}
		top = next
		path = append(path, top)
	}
	issuer := top.Issuer.String()
	if selfSigned(top) {
		return Result{Verdict: UnknownAuthority,
			Reason: fmt.Sprintf("the labelled CA did not sign this chain: issuer is %s (self-signed, sent by the registry); trusted: %s", issuer, tr.describe()),
			Hint:   fmt.Sprintf("label the CA %s (the registry's own certificate, if it is its own CA)", issuer)}
	}
	if c := sameName(top, tr.configured); c != nil {
		return Result{Verdict: UnknownAuthority,
			Reason: fmt.Sprintf("the labelled CA did not sign this chain: issuer is %s, and the trusted CA of that name has another key (AuthorityKeyId %x not found)", issuer, top.AuthorityKeyId),
			Hint:   "the CA was re-issued or the wrong one is labelled: label the CA that signed the registry's certificate"}
	}
	// Only the leaf was usable and it names where its issuer lives, or the
	// registry sent other certificates that do not chain to its leaf: the
	// path has a hole, an intermediate the registry must send.
	if top == served[0] && (len(top.IssuingCertificateURL) > 0 || len(served) > 1) {
		where := ""
		if len(top.IssuingCertificateURL) > 0 {
			where = " (its AIA names " + top.IssuingCertificateURL[0] + "; Go runtimes do not fetch it)"
		}
		return Result{Verdict: IncompleteChain,
			Reason: fmt.Sprintf("incomplete chain: the issuer of %s, %s, is missing: neither sent by the registry nor trusted%s; trusted: %s",
				top.Subject, issuer, where, tr.describe()),
			Hint: fmt.Sprintf("serve the intermediate %s after the registry's certificate (append it to the certificate file), or add it to the labelled bundle", issuer)}
	}
	return Result{Verdict: UnknownAuthority,
		Reason: fmt.Sprintf("the labelled CA did not sign this chain: issuer is %s (sent: %s); trusted: %s", issuer, chainString(path), tr.describe()),
		Hint:   fmt.Sprintf("label the CA %s; if it is an intermediate, the registry must send it after its certificate", issuer)}
}

// issuerIn finds c's issuer among cands: name, key id when both have one,
// and signature.
func issuerIn(c *x509.Certificate, cands []*x509.Certificate) *x509.Certificate {
	for _, p := range cands {
		if p == c || !bytes.Equal(p.RawSubject, c.RawIssuer) {
			continue
		}
		if len(c.AuthorityKeyId) > 0 && len(p.SubjectKeyId) > 0 && !bytes.Equal(c.AuthorityKeyId, p.SubjectKeyId) {
			continue
		}
		if c.CheckSignatureFrom(p) == nil {
			return p
		}
	}
	return nil
}

// sameName returns a trusted certificate named like c's issuer that did
// not sign c.
func sameName(c *x509.Certificate, cands []*x509.Certificate) *x509.Certificate {
	for _, p := range cands {
		if bytes.Equal(p.RawSubject, c.RawIssuer) {
			return p
		}
	}
	return nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

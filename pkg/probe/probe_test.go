package probe_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/probe"
)

const alias = "registry.nodetrust.test"

// serve starts a TLS server on 127.0.0.1 sending chain (leaf first) and
// answering GET /v2/ with 401, as a registry does without credentials.
func serve(t *testing.T, leaf certstest.Pair, chain ...*x509.Certificate) string {
	t.Helper()
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" || r.Header.Get("Authorization") != "" {
			http.Error(w, "unexpected", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
	}))
	raw := [][]byte{leaf.Cert.Raw}
	for _, c := range chain {
		raw = append(raw, c.Raw)
	}
	s.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: raw, PrivateKey: leaf.Key}}}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// withAIA issues a leaf for names signed by parent that names its issuer's
// URL (Authority Information Access), as enterprise and public CAs do.
func withAIA(t *testing.T, parent certstest.Pair, names ...string) certstest.Pair {
	t.Helper()
	p := certstest.Issue(t, certstest.Template{CommonName: "aia leaf"}, nil) // a fresh key
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "aia leaf"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		DNSNames:              names,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IssuingCertificateURL: []string{"http://pki.nodetrust.test/intermediate.crt"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.Cert, &p.Key.PublicKey, parent.Key)
	require.NoError(t, err)
	p.Cert, err = x509.ParseCertificate(der)
	require.NoError(t, err)
	return p
}

func prober() *probe.Prober {
	return &probe.Prober{Hosts: probe.ParseHosts([]byte("127.0.0.1 " + alias + "\n")), Timeout: 2 * time.Second}
}

// aliased replaces 127.0.0.1 in addr by the alias name.
func aliased(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return net.JoinHostPort(alias, port)
}

func TestProbeVerdicts(t *testing.T) {
	root := certstest.NewCA(t, "Registry Root CA")
	other := certstest.NewCA(t, "Some Other CA")
	inter := certstest.Issue(t, certstest.Template{CommonName: "Registry Intermediate CA", IsCA: true}, &root)
	sans := certstest.Template{CommonName: alias, DNSNames: []string{alias, "localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
	leaf := certstest.Issue(t, sans, &root)
	viaInter := certstest.Issue(t, sans, &inter)
	cnOnly := certstest.Issue(t, certstest.Template{CommonName: "docker-registry", IsCA: true}, nil)
	wrongName := certstest.Issue(t, certstest.Template{CommonName: "x", DNSNames: []string{"harbor.example"}}, &root)
	expiredTmpl := sans
	expiredTmpl.NotBefore, expiredTmpl.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	expired := certstest.Issue(t, expiredTmpl, &root)
	aia := withAIA(t, inter, alias)

	tests := []struct {
		name       string
		addr       string
		serverName string
		cas        [][]byte
		system     []byte
		skip       bool
		now        time.Time
		want       probe.Verdict
		reason     string
		hint       string
		chain      int
	}{
		{name: "right CA", addr: aliased(serve(t, leaf)), cas: [][]byte{root.CertPEM()},
			want: probe.Verified, reason: "anchored at CN=Registry Root CA", chain: 1},
		{name: "system bundle alone", addr: aliased(serve(t, leaf)), system: root.CertPEM(),
			want: probe.Verified, chain: 1},
		{name: "intermediate sent by the registry", addr: aliased(serve(t, viaInter, inter.Cert)), cas: [][]byte{root.CertPEM()},
			want: probe.Verified, reason: "CN=Registry Intermediate CA ← CN=Registry Root CA", chain: 2},
		{name: "IP literal", addr: serve(t, leaf), serverName: "127.0.0.1", cas: [][]byte{root.CertPEM()},
			want: probe.Verified},
		{name: "wrong CA", addr: aliased(serve(t, leaf)), cas: [][]byte{other.CertPEM()}, system: other.CertPEM(),
			want:   probe.UnknownAuthority,
			reason: "the labelled CA did not sign this chain: issuer is CN=Registry Root CA (sent: CN=registry.nodetrust.test); trusted: configured CN=Some Other CA, 1 system roots"},
		{name: "no trust at all", addr: aliased(serve(t, leaf)),
			want: probe.UnknownAuthority, reason: "trusted: no configured CA, 0 system roots"},
		{name: "same CA name, other key", addr: aliased(serve(t, leaf)), cas: [][]byte{certstest.NewCA(t, "Registry Root CA").CertPEM()},
			want: probe.UnknownAuthority, reason: "the trusted CA of that name has another key"},
		{name: "self-signed served root, untrusted", addr: aliased(serve(t, viaInter, inter.Cert, root.Cert)), cas: [][]byte{other.CertPEM()},
			want: probe.UnknownAuthority, reason: "issuer is CN=Registry Root CA (self-signed, sent by the registry)"},
		{name: "CN-only self-signed certificate as its own CA", addr: serve(t, cnOnly), serverName: "docker-registry", cas: [][]byte{cnOnly.CertPEM()},
			want: probe.NameNotCovered,
			hint: "certificate has only CN=docker-registry; Go runtimes ignore the Common Name: reissue with subjectAltName DNS:docker-registry"},
		{name: "SANs that miss the name", addr: aliased(serve(t, wrongName)), cas: [][]byte{root.CertPEM()},
			want: probe.NameNotCovered, reason: "certificate covers DNS:harbor.example, not registry.nodetrust.test",
			hint: "reissue with subjectAltName DNS:registry.nodetrust.test"},
		{name: "expired serving certificate", addr: aliased(serve(t, expired)), cas: [][]byte{root.CertPEM()},
			want: probe.Expired, reason: "serving certificate CN=registry.nodetrust.test expired at " + expired.Cert.NotAfter.UTC().Format(time.RFC3339)},
		{name: "not yet valid (clock behind)", addr: aliased(serve(t, leaf)), cas: [][]byte{root.CertPEM()}, now: time.Now().Add(-72 * time.Hour),
			want: probe.NotYetValid, reason: "serving certificate CN=registry.nodetrust.test is not valid before"},
		{name: "missing intermediate, leaf names it (AIA)", addr: aliased(serve(t, aia)), cas: [][]byte{root.CertPEM()},
			want:   probe.IncompleteChain,
			reason: "the issuer of CN=aia leaf, CN=Registry Intermediate CA, is missing: neither sent by the registry nor trusted (its AIA names http://pki.nodetrust.test/intermediate.crt",
			hint:   "serve the intermediate CN=Registry Intermediate CA after the registry's certificate"},
		{name: "missing intermediate, root sent instead", addr: aliased(serve(t, viaInter, root.Cert)), cas: [][]byte{root.CertPEM()},
			want: probe.IncompleteChain, reason: "the issuer of CN=registry.nodetrust.test, CN=Registry Intermediate CA, is missing"},
		{name: "missing intermediate, no evidence: said as unknown authority with the intermediate hint", addr: aliased(serve(t, viaInter)), cas: [][]byte{root.CertPEM()},
			want: probe.UnknownAuthority, hint: "if it is an intermediate, the registry must send it after its certificate"},
		{name: "skip_verify with the wrong CA", addr: aliased(serve(t, leaf)), cas: [][]byte{other.CertPEM()}, skip: true,
			want: probe.SkipVerify, reason: "skip_verify is set, so this is not checked: the labelled CA did not sign"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := prober()
			if !tt.now.IsZero() {
				p.Now = func() time.Time { return tt.now }
			}
			name := tt.serverName
			if name == "" {
				name = alias
			}
			r := p.Probe(context.Background(), probe.Target{Addr: tt.addr, ServerName: name, CAs: tt.cas, System: tt.system, SkipVerify: tt.skip})
			require.Equal(t, tt.want, r.Verdict, r.Reason)
			require.Contains(t, r.Reason, tt.reason)
			require.Contains(t, r.Hint, tt.hint)
			t.Logf("%s | %s", r.Reason, r.Hint)
			require.Equal(t, []string{"127.0.0.1"}, r.Addresses)
			require.NotEmpty(t, r.Chain)
			require.False(t, r.LeafNotAfter.IsZero())
			require.Equal(t, r.Chain[0].NotAfter, r.LeafNotAfter.UTC())
			if tt.chain > 0 {
				require.Len(t, r.Chain, tt.chain)
			}
			if r.Verdict.OK() {
				require.Equal(t, http.StatusUnauthorized, r.V2Status, "one unauthenticated GET /v2/")
			} else {
				require.Zero(t, r.V2Status, "nothing is sent over an unverified connection")
				require.NotEmpty(t, r.Hint)
			}
		})
	}
}

type fakeResolver struct{ err error }

func (f fakeResolver) LookupHost(context.Context, string) ([]string, error) { return nil, f.err }

type blockingDialer struct{}

func (blockingDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestProbeConnectionVerdicts(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	require.NoError(t, closed.Close())

	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { silent.Close() })
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()

	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	t.Cleanup(plain.Close)

	tests := []struct {
		name     string
		addr     string
		resolver probe.Resolver
		dialer   probe.Dialer
		plain    bool
		want     probe.Verdict
		reason   string
	}{
		{name: "closed port", addr: aliased(closedAddr), want: probe.Refused, reason: "connection refused by " + closedAddr},
		{name: "connect timeout", addr: aliased(closedAddr), dialer: blockingDialer{}, want: probe.Timeout, reason: "connecting to " + closedAddr + " timed out after 200ms"},
		{name: "handshake timeout", addr: aliased(silent.Addr().String()), want: probe.Timeout, reason: "TLS handshake with registry.nodetrust.test"},
		{name: "unknown name", addr: "nosuch.nodetrust.test:5000",
			resolver: fakeResolver{&net.DNSError{Err: "no such host", Name: "nosuch.nodetrust.test", Server: "10.0.0.53:53", IsNotFound: true}},
			want:     probe.DNS, reason: "cannot resolve nosuch.nodetrust.test: no such host (not in the node's hosts file; asked DNS server 10.0.0.53:53)"},
		{name: "not TLS", addr: aliased(plain.Listener.Addr().String()), want: probe.TLSError, reason: "first record does not look like a TLS handshake"},
		{name: "plain http endpoint", addr: aliased(plain.Listener.Addr().String()), plain: true, want: probe.PlainHTTP},
		{name: "bad address", addr: "no-port", want: probe.Unreachable, reason: `bad address "no-port"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := prober()
			p.Timeout = 200 * time.Millisecond
			p.Resolver, p.Dialer = tt.resolver, tt.dialer
			start := time.Now()
			r := p.Probe(context.Background(), probe.Target{Addr: tt.addr, ServerName: alias, PlainHTTP: tt.plain})
			require.Equal(t, tt.want, r.Verdict, r.Reason)
			require.Contains(t, r.Reason, tt.reason)
			require.Less(t, time.Since(start), 2*time.Second, "bounded by the timeout")
			require.Empty(t, r.Chain)
			if tt.plain {
				require.Equal(t, http.StatusOK, r.V2Status)
			}
		})
	}
}

func TestParseHosts(t *testing.T) {
	h := probe.ParseHosts([]byte(strings.Join([]string{
		"# comment",
		"127.0.0.1 localhost",
		"10.0.0.7  Registry.Example registry  # trailing comment",
		"::1 localhost ip6-localhost",
		"fe80::1%eth0 linklocal",
		"not-an-ip foo",
		"192.0.2.1",
		"",
	}, "\n")))
	require.Equal(t, []string{"127.0.0.1", "::1"}, h.Lookup("localhost"))
	require.Equal(t, []string{"10.0.0.7"}, h.Lookup("registry.example."))
	require.Equal(t, []string{"10.0.0.7"}, h.Lookup("REGISTRY"))
	require.Equal(t, []string{"fe80::1%eth0"}, h.Lookup("linklocal"))
	require.Nil(t, h.Lookup("foo"))
	require.Nil(t, h.Lookup("192.0.2.1"))
}

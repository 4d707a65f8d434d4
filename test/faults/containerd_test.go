package faults

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cddocker "github.com/containerd/containerd/v2/core/remotes/docker"
	cdconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/nodetrust/nodetrust/test/harness"
	"github.com/stretchr/testify/require"
)

// cdHost is what containerd v2 resolved for one host of a registry.
type cdHost struct {
	url          string // scheme://host/path
	host         string
	capabilities cddocker.HostCapabilities
	skipVerify   bool
	header       http.Header
	roots        *x509.CertPool // nil: the default (system) roots
}

// containerdHosts resolves registry below ROOT/etc/containerd/certs.d with
// containerd v2's own loader (ConfigureHosts with HostDirFromRoot, as the
// CRI plugin does with config_path = "/etc/containerd/certs.d"). Any error
// or log line fails the test: containerd would fail or misread every pull.
func containerdHosts(t testing.TB, root, registry string) []cdHost {
	t.Helper()
	ctx, logs := harness.CaptureContainerdLog()
	hosts, err := cdconfig.ConfigureHosts(ctx, cdconfig.HostOptions{
		HostDir: cdconfig.HostDirFromRoot(filepath.Join(root, "etc/containerd/certs.d")),
	})(registry)
	require.NoError(t, err, "containerd v2 ConfigureHosts(%s) in %s", registry, root)
	require.Empty(t, logs.Entries(), "containerd v2 logged problems loading %s", registry)
	var out []cdHost
	for _, h := range hosts {
		tr, ok := h.Client.Transport.(*http.Transport)
		require.Truef(t, ok, "%s: transport is %T", registry, h.Client.Transport)
		tlsc := tr.TLSClientConfig
		if tlsc == nil {
			tlsc = &tls.Config{}
		}
		out = append(out, cdHost{url: h.Scheme + "://" + h.Host + h.Path, host: h.Host, capabilities: h.Capabilities,
			skipVerify: tlsc.InsecureSkipVerify, header: h.Header, roots: tlsc.RootCAs})
	}
	return out
}

// hostsRegistries lists the registries that have a directory below
// ROOT/etc/containerd/certs.d.
func hostsRegistries(t testing.TB, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "etc/containerd/certs.d"))
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// checkContainerdLoads requires containerd v2 to load every hosts
// directory under root without an error or a log line, also right after
// a kill: a CA file named but missing, empty or torn fails every pull.
func checkContainerdLoads(t testing.TB, root string) {
	t.Helper()
	for _, r := range hostsRegistries(t, root) {
		containerdHosts(t, root, r)
	}
}

// checkContainerdTrust requires containerd v2 to see, for every registry
// with a hosts directory under root or a desired source, the pristine
// host's hosts (URL, capabilities, skip_verify, header, in order), each
// trusting exactly its pristine roots plus the desired sources' CAs where
// nodetrust adds them: the upstream of the registry's own file, and a
// [host] entry of any file whose host is that registry (a mirror).
func (h *host) checkContainerdTrust(t testing.TB, root string, sources []source) {
	t.Helper()
	want := certsByRegistry(t, sources)
	h.judgeContainerd(t, root, want, func(_ *cdHost, added []*x509.Certificate) []*x509.Certificate { return added })
}

// checkContainerdBetween is checkContainerdTrust right after a kill
// between the sets from and to: each host trusts its pristine roots plus
// some of the CAs of from and to it may get, and nothing else; the
// operator's own roots are never lost, not even for a moment.
func (h *host) checkContainerdBetween(t testing.TB, root string, from, to []source) {
	t.Helper()
	may := certsByRegistry(t, append(append([]source{}, from...), to...))
	h.judgeContainerd(t, root, may, func(got *cdHost, candidates []*x509.Certificate) []*x509.Certificate {
		var present []*x509.Certificate
		for _, c := range candidates {
			if got.roots != nil && trusts(got.roots, c) {
				present = append(present, c)
			}
		}
		return present
	})
}

func certsByRegistry(t testing.TB, sources []source) map[string][]*x509.Certificate {
	t.Helper()
	out := map[string][]*x509.Certificate{}
	for _, s := range sources {
		cert := parseCert(t, s.pem)
		for _, r := range s.registries {
			out[r] = append(out[r], cert)
		}
	}
	return out
}

// judgeContainerd compares containerd's view of root with the pristine
// host's, registry by registry and host by host: the same hosts, each
// trusting its pristine roots plus expect(host, the CAs nodetrust adds to
// it for the registries in cas).
func (h *host) judgeContainerd(t testing.TB, root string, cas map[string][]*x509.Certificate,
	expect func(got *cdHost, added []*x509.Certificate) []*x509.Certificate) {
	t.Helper()
	registries := hostsRegistries(t, root)
	for r := range cas {
		if !contains(registries, r) {
			registries = append(registries, r)
		}
	}
	for _, r := range registries {
		base := containerdHosts(t, h.dir, r)
		got := containerdHosts(t, root, r)
		require.Len(t, got, len(base), "%s: containerd's hosts", r)
		for i, b := range base {
			g := got[i]
			require.Equal(t, b.url, g.url, "%s host %d", r, i)
			require.Equal(t, b.capabilities, g.capabilities, "%s host %d %s capabilities", r, i, b.url)
			require.Equal(t, b.skipVerify, g.skipVerify, "%s host %d %s skip_verify", r, i, b.url)
			require.Equal(t, b.header, g.header, "%s host %d %s header", r, i, b.url)
			added := cas[b.host] // a [host] entry for a registry, in any file
			if i == len(base)-1 {
				added = cas[r] // the top level: the upstream
			}
			added = expect(&g, added)
			roots := harness.PoolWith(t, b.roots, added...)
			require.Truef(t, harness.SamePool(roots, g.roots), "%s host %d %s trusts exactly the pristine roots and %d nodetrust CA(s)", r, i, b.url, len(added))
		}
	}
}

// trusts reports whether pool holds the self-signed CA cert.
func trusts(pool *x509.CertPool, cert *x509.Certificate) bool {
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func parseCert(t testing.TB, pemText string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode([]byte(strings.TrimSpace(pemText)))
	require.NotNil(t, block)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return cert
}

package main

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/check"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

const checkAlias = "registry.nodetrust.test"

const containerdConfig = `version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
`

// checkNode is a host root with all three runtimes, an /etc/hosts naming
// the alias, and a registry on 127.0.0.1 signed by ca; reg is its name.
type checkNode struct {
	root, reg string
	ca        certstest.Pair
}

func newCheckNode(t *testing.T) checkNode {
	t.Helper()
	ca := certstest.NewCA(t, "Registry CA")
	leaf := certstest.Issue(t, certstest.Template{CommonName: checkAlias, DNSNames: []string{checkAlias},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour)}, &ca) // no expiry warning
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) }))
	s.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}}}
	s.StartTLS()
	t.Cleanup(s.Close)
	_, port, _ := net.SplitHostPort(s.Listener.Addr().String())
	root := t.TempDir()
	hostfstest.MkdirAll(t, root, "etc/containerd", "etc/docker", "etc/containers")
	hostfstest.WriteFile(t, root, "etc/hosts", "127.0.0.1 localhost\n127.0.0.1 "+checkAlias+"\n")
	hostfstest.WriteFile(t, root, "etc/containerd/config.toml", containerdConfig)
	return checkNode{root: root, reg: net.JoinHostPort(checkAlias, port), ca: ca}
}

// apply puts pem in place for n's registry with nodetrust apply.
func (n checkNode) apply(t *testing.T, pem []byte) {
	t.Helper()
	dir := t.TempDir()
	manifest(t, dir, "ca.yaml", secretYAML("registry-ca", n.reg, string(pem)))
	code, out, stderr := exec("apply", "-f", dir, "--host-root", n.root)
	require.Equal(t, 0, code, out+stderr)
}

func checkJSON(t *testing.T, args ...string) (int, check.Report) {
	t.Helper()
	code, out, stderr := exec(append([]string{"check"}, args...)...)
	var rep check.Report
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out+stderr)
	return code, rep
}

func verdicts(rep check.Report) map[string][]string {
	out := map[string][]string{}
	for _, rt := range rep.Runtimes {
		for _, e := range rt.Endpoints {
			v := "ca-file-error"
			if e.Probe != nil {
				v = string(e.Probe.Verdict)
			}
			out[rt.Runtime] = append(out[rt.Runtime], v)
		}
	}
	return out
}

func TestCheckVerifiedEverywhere(t *testing.T) {
	n := newCheckNode(t)
	n.apply(t, n.ca.CertPEM())

	code, rep := checkJSON(t, n.reg, "--host-root", n.root, "--output", "json")
	require.Equal(t, 0, code)
	require.True(t, rep.OK)
	require.Equal(t, map[string][]string{"containerd": {"verified"}, "docker": {"skip-verify"}, "containers/image": {"verified"}}, verdicts(rep))
	require.Equal(t, []string{"dockerd treats " + checkAlias + " (127.0.0.1) as an insecure registry (default range 127.0.0.0/8): it does not verify TLS and falls back to plain HTTP"},
		rep.Runtimes[1].Warnings, "the alias is loopback in the node's hosts file")
	require.Empty(t, rep.Runtimes[0].Warnings)
	cd := rep.Runtimes[0]
	require.Equal(t, "/etc/containerd/certs.d/"+n.reg, cd.Dir)
	require.Equal(t, "hosts.toml", cd.From)
	require.Equal(t, "https://"+n.reg+"/v2", cd.Endpoints[0].URL)
	require.Equal(t, []string{"/etc/containerd/certs.d/" + n.reg + "/nodetrust_secret_registry_registry-ca.crt"}, cd.Endpoints[0].CAFiles)
	require.Equal(t, http.StatusUnauthorized, cd.Endpoints[0].Probe.V2Status)
	require.Equal(t, "/etc/containers/certs.d/"+n.reg, rep.Runtimes[2].Dir)

	code, out, _ := exec("check", "--host-root", n.root, n.reg)
	t.Log(out)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "OK   containerd: "+n.reg+" from /etc/containerd/certs.d/"+n.reg+" (hosts.toml)\n  1. verified https://"+n.reg+"/v2 [pull,resolve,push,referrers]\n")
	require.Contains(t, out, "OK   docker: ")
	require.Contains(t, out, "1. skip-verify https://"+n.reg+"\n")
	require.Contains(t, out, "served: CN="+checkAlias+" (issuer CN=Registry CA")
}

func TestCheckFailures(t *testing.T) {
	t.Run("wrong CA labelled", func(t *testing.T) {
		n := newCheckNode(t)
		n.apply(t, certstest.NewCA(t, "Wrong CA").CertPEM())
		code, rep := checkJSON(t, n.reg, "--host-root", n.root, "--output", "json")
		require.Equal(t, 1, code)
		require.False(t, rep.OK)
		require.Equal(t, map[string][]string{"containerd": {"unknown-authority"}, "docker": {"skip-verify"}, "containers/image": {"unknown-authority"}}, verdicts(rep),
			"dockerd does not verify a loopback registry")
		require.Contains(t, rep.Runtimes[0].Endpoints[0].Probe.Reason, "the labelled CA did not sign this chain: issuer is CN=Registry CA")
	})
	t.Run("nothing applied, the system bundle trusts it", func(t *testing.T) {
		n := newCheckNode(t)
		hostfstest.WriteFile(t, n.root, "etc/ssl/certs/ca-certificates.crt", string(n.ca.CertPEM()))
		code, rep := checkJSON(t, n.reg, "--host-root", n.root, "--output", "json")
		require.Equal(t, 0, code)
		require.Equal(t, "/etc/ssl/certs/ca-certificates.crt", rep.SystemBundle)
		require.Equal(t, "defaults", rep.Runtimes[0].From)
		require.Empty(t, rep.Runtimes[0].Dir)
	})
	t.Run("a CA file hosts.toml names is missing", func(t *testing.T) {
		n := newCheckNode(t)
		hostfstest.WriteFile(t, n.root, "etc/containerd/certs.d/"+n.reg+"/hosts.toml", "ca = \"gone.crt\"\n[host]\n")
		code, rep := checkJSON(t, n.reg, "--host-root", n.root, "--output", "json")
		require.Equal(t, 1, code)
		require.Contains(t, rep.Runtimes[0].Endpoints[0].Problem, "unable to read CA cert /etc/containerd/certs.d/"+n.reg+"/gone.crt")
		require.Nil(t, rep.Runtimes[0].Endpoints[0].Probe)
	})
	t.Run("containerd reads no hosts.toml: config_path unset", func(t *testing.T) {
		n := newCheckNode(t)
		n.apply(t, n.ca.CertPEM())
		hostfstest.WriteFile(t, n.root, "etc/containerd/config.toml", "version = 2\n")
		code, rep := checkJSON(t, n.reg, "--host-root", n.root, "--output", "json")
		require.Equal(t, 1, code)
		cd := rep.Runtimes[0]
		require.False(t, cd.OK)
		require.Equal(t, "defaults", cd.From, "the files nodetrust wrote are not read")
		require.Len(t, cd.Warnings, 1)
		require.Contains(t, cd.Warnings[0], "config_path is unset under [plugins.\"io.containerd.grpc.v1.cri\".registry] in /etc/containerd/config.toml")
		require.Equal(t, "unknown-authority", string(cd.Endpoints[0].Probe.Verdict))
		require.True(t, strings.HasPrefix(cd.Endpoints[0].Probe.Reason, "no labelled CA is in containerd's trust, as it reads no hosts.toml: the labelled CA did not sign"),
			"the CA is labelled: its reason must not read as if it were not: %s", cd.Endpoints[0].Probe.Reason)
		require.Equal(t, cd.Warnings[0], cd.Endpoints[0].Probe.Hint, "the fix is the config, not another label")
		require.True(t, rep.Runtimes[1].OK, "docker still verifies")
		require.True(t, rep.Runtimes[2].OK, "containers/image reads its certs.d and verifies")
	})
	t.Run("host_port_ directory comes first", func(t *testing.T) {
		n := newCheckNode(t)
		n.apply(t, n.ca.CertPEM())
		h, p, _ := net.SplitHostPort(n.reg)
		hostfstest.MkdirAll(t, n.root, "etc/containerd/certs.d/"+h+"_"+p+"_")
		_, rep := checkJSON(t, n.reg, "--host-root", n.root, "--output", "json")
		require.Equal(t, "/etc/containerd/certs.d/"+h+"_"+p+"_", rep.Runtimes[0].Dir)
		require.False(t, rep.Runtimes[0].OK)
	})
	t.Run("unknown name", func(t *testing.T) {
		n := newCheckNode(t)
		hostfstest.WriteFile(t, n.root, "etc/hosts", "127.0.0.1 localhost\n")
		require.NoError(t, os.RemoveAll(filepath.Join(n.root, "etc/docker")))
		require.NoError(t, os.RemoveAll(filepath.Join(n.root, "etc/containers")))
		_, p, _ := net.SplitHostPort(n.reg)
		code, out, _ := exec("check", "nosuch.nodetrust.invalid:"+p, "--host-root", n.root)
		t.Log(out)
		require.Equal(t, 1, code)
		require.Contains(t, out, "FAIL containerd:")
		require.Contains(t, out, "dns-failure https://nosuch.nodetrust.invalid:"+p+"/v2")
		require.Contains(t, out, "cannot resolve nosuch.nodetrust.invalid")
	})
	t.Run("no runtime under the root", func(t *testing.T) {
		code, out, _ := exec("check", "r.example", "--host-root", t.TempDir())
		require.Equal(t, 1, code)
		require.Contains(t, out, "FAIL no container runtime under")
	})
}

func TestCheckUsage(t *testing.T) {
	root := t.TempDir()
	for _, args := range [][]string{
		{"check"},
		{"check", "--host-root", root},
		{"check", "a.example", "b.example", "--host-root", root},
		{"check", "a.example/path", "--host-root", root},
		{"check", "a.example", "--output", "yaml", "--host-root", root},
		{"check", "a.example", "--host-root", filepath.Join(root, "missing")},
		{"check", "a.example", "--bogus"},
	} {
		code, _, stderr := exec(args...)
		require.Equal(t, 2, code, "%v: %s", args, stderr)
		require.NotEmpty(t, stderr)
	}
	code, _, _ := exec("check", "-h")
	require.Equal(t, 0, code)
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

func exec(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	code = exitCode(err, &errOut)
	return code, out.String(), errOut.String()
}

func manifest(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	return p
}

func secretYAML(name, registries, pem string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata:
  name: %s
  namespace: registry
  labels: {nodetrust.io/ca: "true"}
  annotations: {nodetrust.io/registries: %q}
stringData:
  ca.crt: %q
`, name, registries, pem)
}

func TestApplyExitCodes(t *testing.T) {
	ca := string(certstest.NewCA(t, "CA").CertPEM())
	root := t.TempDir()
	hostfstest.MkdirAll(t, root, "etc/docker")
	dir := t.TempDir()
	manifest(t, dir, "good.yaml", secretYAML("good", "r.example:5000", ca))

	code, out, _ := exec("apply", "-f", dir, "--host-root", root)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "1 sources applied, 0 rejected")
	require.Contains(t, out, "1 files written")

	manifest(t, dir, "bad.yaml", secretYAML("bad", "r.example/../x", ca))
	code, out, _ = exec("apply", "-f", dir, "--host-root", root)
	require.Equal(t, 1, code)
	require.Contains(t, out, `rejected Secret registry/bad: annotation nodetrust.io/registries: registry "r.example/../x": must not contain a path or slash`)
	require.Contains(t, out, "0 files written", "the good source is unchanged and still applied")
	require.FileExists(t, filepath.Join(root, "etc/docker/certs.d/r.example:5000/nodetrust_secret_registry_good.crt"))

	usage := [][]string{
		{},
		{"frobnicate"},
		{"apply"},
		{"apply", "-f", filepath.Join(dir, "missing.yaml")},
		{"apply", "-f", dir, "--output", "yaml"},
		{"apply", "-f", dir, "--bogus"},
		{"apply", "-f", dir, "--node-labels", "a=b=c"},
		{"apply", "-f", dir, "--host-root", filepath.Join(root, "missing")},
		{"apply", "-f", dir, "extra"},
	}
	for _, args := range usage {
		code, _, stderr := exec(args...)
		require.Equal(t, 2, code, "%v: %s", args, stderr)
		require.NotEmpty(t, stderr)
	}
}

func TestApplyJSON(t *testing.T) {
	ca := certstest.NewCA(t, "CA")
	root := t.TempDir()
	hostfstest.MkdirAll(t, root, "etc/containerd")
	dir := t.TempDir()
	manifest(t, dir, "s.yaml", secretYAML("good", "r", string(ca.CertPEM()))+"---\n"+secretYAML("bad", "r", string(ca.KeyPEM(t))))

	code, out, stderr := exec("apply", "-f", dir, "--host-root", root, "--output", "json")
	require.Equal(t, 1, code)
	var rep jsonReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.False(t, rep.OK)
	require.Equal(t, []string{"Secret registry/good"}, rep.Applied)
	require.Equal(t, []string{"etc/containerd/certs.d/r/nodetrust_secret_registry_good.crt", "etc/containerd/certs.d/r/hosts.toml"}, rep.Written)
	require.Len(t, rep.Rejected, 1)
	require.Equal(t, "Secret registry/bad", rep.Rejected[0].Source)
	require.Contains(t, rep.Rejected[0].Reason, "a private key is never distributed")
	require.Contains(t, stderr, "rejected Secret registry/bad:")

	tree := hostfstest.Tree(t, root)
	for p, content := range tree {
		require.NotContains(t, content, "PRIVATE KEY", p)
	}
}

func TestApplyUnparsableManifestRemovesNothing(t *testing.T) {
	ca := string(certstest.NewCA(t, "CA").CertPEM())
	root := t.TempDir()
	hostfstest.MkdirAll(t, root, "etc/docker")
	dir := t.TempDir()
	p := manifest(t, dir, "s.yaml", secretYAML("a", "r", ca))
	code, _, _ := exec("apply", "-f", dir, "--host-root", root)
	require.Equal(t, 0, code)
	before := hostfstest.Tree(t, root)

	require.NoError(t, os.WriteFile(p, []byte("kind: [Secret\n"), 0o644))
	code, out, _ := exec("apply", "-f", dir, "--host-root", root)
	require.Equal(t, 1, code)
	require.Contains(t, out, "unreadable")
	require.Contains(t, out, "kept Secret registry/a as last applied")
	require.Equal(t, before, hostfstest.Tree(t, root))
}

// TestApplyOddInputKeepsLastApplied: a malformed source, and a FIFO in
// place of the manifest, each make apply exit 1, promptly, naming the file,
// and keep the last applied version.
func TestApplyOddInputKeepsLastApplied(t *testing.T) {
	ca := string(certstest.NewCA(t, "CA").CertPEM())
	tests := map[string]struct {
		spoil func(t *testing.T, manifest string)
		want  string
	}{
		"unquoted label value": {func(t *testing.T, p string) {
			body := strings.Replace(secretYAML("a", "r", ca), `{nodetrust.io/ca: "true"}`, `{nodetrust.io/ca: true}`, 1)
			require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		}, "rejected Secret registry/a: FILE: document 1: metadata.labels[nodetrust.io/ca]: must be a string, not the boolean true"},
		"FIFO in its place": {func(t *testing.T, p string) {
			require.NoError(t, os.Remove(p))
			require.NoError(t, unix.Mkfifo(p, 0o644))
		}, "unreadable FILE: is a named pipe (FIFO), not a regular manifest file; refused"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			hostfstest.MkdirAll(t, root, "etc/docker")
			dir := t.TempDir()
			p := manifest(t, dir, "s.yaml", secretYAML("a", "r", ca))
			code, _, _ := exec("apply", "-f", dir, "--host-root", root)
			require.Equal(t, 0, code)
			before := hostfstest.Tree(t, root)

			tc.spoil(t, p)
			code, out, _ := exec("apply", "-f", dir, "--host-root", root)
			require.Equal(t, 1, code, out)
			require.Contains(t, out, strings.ReplaceAll(tc.want, "FILE", p))
			require.Contains(t, out, "kept Secret registry/a as last applied")
			require.Equal(t, before, hostfstest.Tree(t, root))
		})
	}
}

func TestApplyNodeLabels(t *testing.T) {
	ca := string(certstest.NewCA(t, "CA").CertPEM())
	root := t.TempDir()
	hostfstest.MkdirAll(t, root, "etc/docker")
	dir := t.TempDir()
	body := strings.Replace(secretYAML("gpu", "r", ca), "annotations: {", `annotations: {nodetrust.io/node-selector: "pool=gpu", `, 1)
	manifest(t, dir, "s.yaml", body)

	code, out, _ := exec("apply", "-f", dir, "--host-root", root, "--node-labels", "pool=cpu")
	require.Equal(t, 0, code)
	require.Contains(t, out, "0 sources applied, 0 rejected, 1 not selected")
	code, out, _ = exec("apply", "-f", dir, "--host-root", root)
	require.Equal(t, 0, code)
	require.Contains(t, out, "1 sources applied", "selectors are ignored without --node-labels")
}

func TestVersion(t *testing.T) {
	code, out, _ := exec("version")
	require.Equal(t, 0, code)
	require.Equal(t, "nodetrust dev (commit unknown)\n", out)
}

func TestApplyNothingOnEmptyRoot(t *testing.T) {
	root := t.TempDir()
	code, out, _ := exec("apply", "-f", t.TempDir(), "--host-root", root)
	require.Equal(t, 0, code, out)
	require.Empty(t, hostfstest.Tree(t, root), "not even an ownership record")
}

func TestApplyManageContainerdConfig(t *testing.T) {
	ca := string(certstest.NewCA(t, "CA").CertPEM())
	root := t.TempDir()
	hostfstest.MkdirAll(t, root, "etc/containerd")
	hostfstest.WriteFile(t, root, "etc/containerd/config.toml", "version = 2\n")
	dir, empty := t.TempDir(), t.TempDir()
	manifest(t, dir, "good.yaml", secretYAML("good", "r.example:5000", ca))
	config := func() string {
		data, err := os.ReadFile(filepath.Join(root, "etc/containerd/config.toml"))
		require.NoError(t, err)
		return string(data)
	}

	code, out, _ := exec("apply", "-f", dir, "--host-root", root)
	require.Equal(t, 0, code, "a config problem is not a failed write")
	require.Contains(t, out, "degraded node: containerd reads no hosts.toml: config_path is unset")
	require.Equal(t, "version = 2\n", config())

	code, out, _ = exec("apply", "-f", dir, "--host-root", root, "--manage-containerd-config")
	require.Equal(t, 0, code, out)
	require.NotContains(t, out, "degraded node")
	require.Contains(t, out, "restart pending: the config of containerd.service changed; restart it to load it\n")
	require.Contains(t, config(), `config_path = "/etc/containerd/certs.d"`)

	code, out, _ = exec("apply", "-f", dir, "--host-root", root, "--manage-containerd-config", "--output", "json")
	require.Equal(t, 0, code, out)
	var rep struct {
		Written []string `json:"written"`
		Restart []string `json:"restart"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	require.Empty(t, rep.Written, "nothing new")
	require.Empty(t, rep.Restart, "the restart was reported once; it is the operator's")

	code, out, _ = exec("apply", "-f", empty, "--host-root", root)
	require.Equal(t, 0, code, out)
	require.Equal(t, "version = 2\n", config(), "no sources: the original is back")
	require.NotContains(t, out, "restart pending")
	_, err := os.Stat(filepath.Join(root, "var/lib/nodetrust/state.json"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestStatusUsage(t *testing.T) {
	for _, args := range [][]string{
		{"status", "extra"},
		{"status", "--output", "yaml"},
		{"status", "--selector", "a in ("},
		{"status", "--wait", "-1s"},
	} {
		code, _, stderr := exec(args...)
		require.Equal(t, 2, code, "%v: %s", args, stderr)
	}
	code, _, stderr := exec("status", "--kubeconfig", filepath.Join(t.TempDir(), "missing"))
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "status: kubernetes client config")
}

package faults

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
	toml "github.com/pelletier/go-toml/v2"
	"github.com/stretchr/testify/require"
)

// bin is the nodetrust binary under test.
func bin(t testing.TB) string {
	t.Helper()
	if os.Getenv("NODETRUST_BIN") == "" {
		t.Skip("NODETRUST_BIN is not set: run make test-faults")
	}
	return harness.Binary(t)
}

// newCAPEM returns a self-signed CA certificate, PEM-encoded.
func newCAPEM(t testing.TB, cn string) string {
	t.Helper()
	return string(harness.NewCA(cn).PEM)
}

// source is one CA Secret of a manifest set.
type source struct {
	name       string
	registries []string
	pem        string
}

// caFile is the file nodetrust names a source's CA after (SPEC §2).
func (s source) caFile() string { return "nodetrust_secret_registry_" + s.name + ".crt" }

// writeManifests writes sources as one JSON v1 List in a new directory
// and returns the directory.
func writeManifests(t testing.TB, sources []source) string {
	t.Helper()
	items := []any{}
	for _, s := range sources {
		items = append(items, map[string]any{
			"apiVersion": "v1", "kind": "Secret",
			"metadata": map[string]any{
				"name": s.name, "namespace": "registry",
				"labels":      map[string]string{"nodetrust.io/ca": "true"},
				"annotations": map[string]string{"nodetrust.io/registries": strings.Join(s.registries, ",")},
			},
			"stringData": map[string]string{"ca.crt": s.pem},
		})
	}
	data, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sources.json"), data, 0o644))
	return dir
}

// runResult is the outcome of one process.
type runResult struct {
	code   int // -1: killed by SIGKILL
	stdout string
	stderr string
}

func (r runResult) killed() bool { return r.code == -1 }

// run runs cmd and returns how it ended.
func run(t testing.TB, cmd *exec.Cmd) runResult {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := runResult{stdout: out.String(), stderr: errOut.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			require.Equal(t, syscall.SIGKILL, ws.Signal(), "only the injected SIGKILL ends a run: %s", res.stderr)
			res.code = -1
		} else {
			res.code = exitErr.ExitCode()
		}
	default:
		require.NoError(t, err)
	}
	return res
}

// apply runs nodetrust apply of manifests on root.
func apply(t testing.TB, root, manifests string, extra ...string) runResult {
	t.Helper()
	return run(t, exec.Command(bin(t), append([]string{"apply", "-f", manifests, "--host-root", root}, extra...)...))
}

// mustApply applies and requires exit 0.
func mustApply(t testing.TB, root, manifests string) {
	t.Helper()
	res := apply(t, root, manifests)
	require.Equal(t, 0, res.code, "apply: %s%s", res.stdout, res.stderr)
}

// entry is one path of a snapshot: type, mode, owner and content hash.
type entry string

// snapshot maps every path below root to its entry, so that content,
// mode and owner changes all show.
func snapshot(t testing.TB, root string) map[string]entry {
	t.Helper()
	tree, err := harness.Walk(root)
	require.NoError(t, err)
	out := map[string]entry{}
	for rel, e := range tree {
		if rel == "." {
			continue
		}
		desc := fmt.Sprintf("%v %d:%d", e.Mode, e.UID, e.GID)
		if e.Mode.IsRegular() {
			sum := sha256.Sum256([]byte(e.Content))
			desc += " " + hex.EncodeToString(sum[:8])
		}
		out[rel] = entry(desc)
	}
	return out
}

// copyTree copies src to a new directory, keeping modes and owners.
func copyTree(t testing.TB, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "root")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		if d.IsDir() {
			err = os.Mkdir(target, 0o700)
		} else {
			var data []byte
			if data, err = os.ReadFile(p); err == nil {
				err = os.WriteFile(target, data, 0o600)
			}
		}
		if err == nil {
			err = os.Lchown(target, int(st.Uid), int(st.Gid))
		}
		if err == nil {
			err = os.Chmod(target, info.Mode().Perm())
		}
		return err
	})
	require.NoError(t, err)
	return dst
}

// host is a host root template with foreign files nodetrust must leave
// alone (and one operator hosts.toml per registry in merged it merges into).
type host struct {
	dir      string
	pristine map[string]entry
	merged   []string          // paths of operator files nodetrust merges into
	original map[string]string // their content
}

// operatorHosts is an operator's hosts.toml: comments, both quotings,
// several [host] tables in a deliberate order (the last one the upstream
// itself), a CA of its own.
const operatorHosts = `# Operator's registry config: mirror-b first, on purpose.
server = 'https://reg.example:5000'
ca = "operator.crt"   # the operator's own CA

[host."https://mirror-b.example"]
  capabilities = ["pull"]
  skip_verify = false

[host."https://mirror-a.example"]
  capabilities = ["pull", "resolve"]
  ca = 'operator.crt'

[host."https://reg.example:5000"]
  capabilities = ["pull", "resolve", "push"]
`

// mirrorHosts is an operator's docker.io hosts.toml that pulls through
// registry %[1]s first: nodetrust adds %[1]s's CAs to that [host] entry.
const mirrorHosts = `# docker.io through our cache, then Docker Hub.
server = "https://registry-1.docker.io"

[host."https://%[1]s"]
  capabilities = ["pull", "resolve"]

[host."https://cache.example"]
  capabilities = ["pull"]
`

// newHost makes a host root with containerd and Docker, foreign files, an
// operator hosts.toml (owned 1000:1000, 0640) for each registry in merge,
// and a docker.io mirror file pulling through the first of them.
func newHost(t testing.TB, merge ...string) *host {
	t.Helper()
	h := &host{dir: filepath.Join(t.TempDir(), "template"), original: map[string]string{}}
	write := func(rel, data string, mode os.FileMode, uid int) {
		p := filepath.Join(h.dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(data), mode))
		require.NoError(t, os.Chmod(p, mode))
		require.NoError(t, os.Lchown(p, uid, uid))
	}
	require.NoError(t, os.MkdirAll(filepath.Join(h.dir, "etc/docker"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(h.dir, "var/lib"), 0o755))
	write("var/lib/other/data", "someone else's\n", 0o600, 0)
	write("etc/containerd/certs.d/other.example/hosts.toml", "server = \"https://other.example\"\n", 0o644, 0)
	write("etc/docker/certs.d/other.example/ca.crt", "not nodetrust's\n", 0o644, 0)
	for _, r := range merge {
		dir := "etc/containerd/certs.d/" + r
		write(dir+"/hosts.toml", operatorHosts, 0o640, 1000)
		write(dir+"/operator.crt", newCAPEM(t, "operator"), 0o644, 0)
		h.merged = append(h.merged, dir+"/hosts.toml")
		h.original[dir+"/hosts.toml"] = operatorHosts
	}
	if len(merge) > 0 {
		p, data := "etc/containerd/certs.d/docker.io/hosts.toml", fmt.Sprintf(mirrorHosts, merge[0])
		write(p, data, 0o644, 0)
		h.merged = append(h.merged, p)
		h.original[p] = data
	}
	h.pristine = snapshot(t, h.dir)
	return h
}

// checkConverged checks a root after a run that must have converged on
// sources: every registry's hosts.toml names exactly its sources' CA
// files among nodetrust's, every file it names exists, Docker has the
// same CA files, no temp file is left, foreign files are untouched, and
// containerd's own loader trusts exactly the desired CAs.
func (h *host) checkConverged(t testing.TB, root string, sources []source) {
	t.Helper()
	want := map[string][]string{}
	for _, s := range sources {
		for _, r := range s.registries {
			want[r] = append(want[r], s.caFile())
		}
	}
	var ours []string
	for p := range snapshot(t, root) {
		base := path.Base(p)
		require.False(t, strings.HasPrefix(base, ".nodetrust-"), "temp file left: %s", p)
		if strings.HasPrefix(base, "nodetrust_") {
			ours = append(ours, p)
		}
	}
	var expect []string
	for r, cas := range want {
		sort.Strings(cas)
		named := hostsCAs(t, root, "etc/containerd/certs.d/"+r)
		require.Equal(t, cas, nodetrustOnly(named), "hosts.toml of %s names exactly the desired CA files", r)
		for _, ca := range cas {
			expect = append(expect, "etc/containerd/certs.d/"+r+"/"+ca, "etc/docker/certs.d/"+r+"/"+ca)
		}
	}
	sort.Strings(ours)
	sort.Strings(expect)
	require.Equal(t, expect, ours, "nodetrust's files on disk")
	h.checkForeign(t, root)
	checkNamedExist(t, root)
	h.checkContainerdTrust(t, root, sources)
}

// checkForeign requires every pristine path but the merged files to be
// unchanged (content, mode, owner).
func (h *host) checkForeign(t testing.TB, root string) {
	t.Helper()
	now := snapshot(t, root)
	for p, e := range h.pristine {
		if !contains(h.merged, p) {
			require.Equal(t, e, now[p], "foreign %s unchanged", p)
		}
	}
}

// checkClean requires root to be the pristine host again.
func (h *host) checkClean(t testing.TB, root string) {
	t.Helper()
	require.Equal(t, h.pristine, snapshot(t, root), "removing everything gives the host back as it was")
	for _, m := range h.merged {
		data, err := os.ReadFile(filepath.Join(root, m))
		require.NoError(t, err)
		require.Equal(t, h.original[m], string(data), "the original %s, byte for byte", m)
	}
}

// checkNamedExist requires every CA file that any hosts.toml names (top
// level or in a [host] table) to exist, and containerd to load every
// hosts directory: containerd fails every pull of a registry whose
// hosts.toml names a missing CA.
func checkNamedExist(t testing.TB, root string) {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(root, "etc/containerd/certs.d/*"))
	require.NoError(t, err)
	for _, d := range dirs {
		rel, _ := filepath.Rel(root, d)
		for _, ca := range hostsCAs(t, root, rel) {
			require.FileExists(t, filepath.Join(d, ca), "%s/hosts.toml names it", rel)
		}
	}
	checkContainerdLoads(t, root)
}

// hostsCAs returns every ca entry of dir's hosts.toml (none without one).
func hostsCAs(t testing.TB, root, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, dir, "hosts.toml"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	var doc struct {
		CA   any            `toml:"ca"`
		Host map[string]any `toml:"host"`
	}
	require.NoError(t, toml.Unmarshal(data, &doc), "%s/hosts.toml:\n%s", dir, data)
	out := caList(doc.CA)
	for _, h := range doc.Host {
		if m, ok := h.(map[string]any); ok {
			out = append(out, caList(m["ca"])...)
		}
	}
	return out
}

func caList(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// nodetrustOnly returns nodetrust's entries of cas, sorted, each once (a
// registry's file names them at the top level and in a [host] entry for
// the registry itself).
func nodetrustOnly(cas []string) []string {
	var out []string
	for _, c := range cas {
		if strings.HasPrefix(c, "nodetrust_") && !contains(out, c) {
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

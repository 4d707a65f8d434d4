package loaders

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
	"github.com/stretchr/testify/require"
)

// TestMain removes the binary harness.Binary built after all tests ran.
func TestMain(m *testing.M) { harness.Main(m) }

// newHostRoot makes a host root in which containerd, Docker and
// containers/image are all "present" (their config dirs exist).
func newHostRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc/containerd", "etc/docker", "etc/containers"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	return root
}

// runApply runs `nodetrust apply -f manifests --host-root root` and returns
// the exit code and combined output.
func runApply(t *testing.T, manifests, root string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary(t), "apply", "-f", manifests, "--host-root", root)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), out.String()
	default:
		require.NoError(t, err, "running nodetrust apply: %s", out.String())
		return -1, ""
	}
}

// mustApply runs apply and requires exit status 0.
func mustApply(t *testing.T, manifests, root string) {
	t.Helper()
	code, out := runApply(t, manifests, root)
	require.Equalf(t, 0, code, "nodetrust apply -f %s --host-root %s exited %d:\n%s\ntree:\n%s",
		manifests, root, code, out, treeListing(t, root))
}

// fileInfo is one node of a snapshotted tree.
type fileInfo struct {
	mode    fs.FileMode
	content string // regular files: content; symlinks: target
	modTime time.Time
}

// snapshot returns every path under dir (relative, slash-separated).
func snapshot(t *testing.T, dir string) map[string]fileInfo {
	t.Helper()
	walked, err := harness.Walk(dir)
	tree := map[string]fileInfo{}
	if errors.Is(err, fs.ErrNotExist) {
		return tree
	}
	require.NoError(t, err)
	for rel, e := range walked {
		if rel != "." {
			tree[rel] = fileInfo{mode: e.Mode, content: e.Content, modTime: e.ModTime}
		}
	}
	return tree
}

// contents drops modes and times: path -> content ("" for directories, "/" suffix).
func contents(tree map[string]fileInfo) map[string]string {
	out := map[string]string{}
	for p, fi := range tree {
		if fi.mode.IsDir() {
			out[p+"/"] = ""
			continue
		}
		out[p] = fi.content
	}
	return out
}

func treeListing(t *testing.T, root string) string {
	t.Helper()
	tree := snapshot(t, root)
	paths := sortedKeys(tree)
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "  %s %s\n", tree[p].mode, p)
	}
	return b.String()
}

// requireNoPrivateKey fails if any file under root contains "PRIVATE KEY".
func requireNoPrivateKey(t *testing.T, root string) {
	t.Helper()
	for p, fi := range snapshot(t, root) {
		if fi.mode.IsRegular() {
			require.NotContainsf(t, fi.content, "PRIVATE KEY", "%s under the host root holds a private key", p)
		}
	}
}

// crtFiles lists the *.crt files directly in dir, name -> content.
func crtFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".crt") {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			require.NoError(t, err)
			out[e.Name()] = string(b)
		}
	}
	return out
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

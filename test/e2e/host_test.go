package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// cleanPath is the PATH of every child process (host and chroot alike).
const cleanPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// inMountNS returns a command (binary, args) that runs argv in a new private
// mount namespace (`unshare -m`, propagation private) after bind-mounting
// each binds[i][0] onto binds[i][1]. The real /etc is never written: the
// mounts exist only in that namespace and die with it.
func inMountNS(binds [][2]string, argv ...string) (string, []string) {
	var script strings.Builder
	script.WriteString("set -e\n")
	var args []string
	n := 1
	for _, b := range binds {
		fmt.Fprintf(&script, "mount --bind \"${%d}\" \"${%d}\"\n", n, n+1)
		args = append(args, b[0], b[1])
		n += 2
	}
	fmt.Fprintf(&script, "shift %d\nexec \"$@\"\n", len(args))
	return "unshare", append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", script.String(), "sh"},
		append(args, argv...)...)
}

// hostsWithAlias writes a copy of the real /etc/hosts plus
// "127.0.0.1 registry.nodetrust.test" to path.
func hostsWithAlias(path string) error {
	orig, err := os.ReadFile("/etc/hosts")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(orig) > 0 && !bytes.HasSuffix(orig, []byte("\n")) {
		orig = append(orig, '\n')
	}
	return os.WriteFile(path, append(orig, []byte("127.0.0.1 "+registryHost+"\n")...), 0o644)
}

// runResult is one finished command.
type runResult struct {
	code int
	out  string
	took time.Duration
}

func run(cmd *exec.Cmd) (runResult, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	r := runResult{out: strings.TrimSpace(out.String()), took: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
		if r.code < 0 {
			return r, fmt.Errorf("%s: %v", strings.Join(cmd.Args, " "), err)
		}
	default:
		return r, fmt.Errorf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	return r, nil
}

// skopeo runs `skopeo inspect --tls-verify=true docker://ref` in a private
// mount namespace where /etc/hosts has the alias, /etc/containers is
// containersDir and /etc/docker is dockerDir.
func skopeo(t *testing.T, hostsFile, containersDir, dockerDir, ref string) runResult {
	t.Helper()
	for _, d := range []string{"/etc/containers", "/etc/docker"} {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			t.Fatalf("%s must exist on this machine as a mount point for the test's bind mount (Debian's skopeo and docker-registry packages create it): %v", d, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bin, args := inMountNS([][2]string{{hostsFile, "/etc/hosts"}, {containersDir, "/etc/containers"}, {dockerDir, "/etc/docker"}},
		"skopeo", "--command-timeout", "30s", "inspect", "--tls-verify=true", "docker://"+ref)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{cleanPath, "HOME=" + t.TempDir()}
	r, err := run(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// curlInRoot runs curl chrooted into a Debian root (its own CA bundle and
// /etc/hosts) against url.
func curlInRoot(t *testing.T, root, url string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/curl", "-sS", "--max-time", "10", url)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Dir = "/"
	cmd.Env = []string{cleanPath, "HOME=/root"}
	r, err := run(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// treeEntry describes one path of a host root; directory times are left
// out (creating and removing a subdirectory changes its parent's mtime).
// With identity false, files are compared by mode and content only (not
// inode or mtime), for trees that a tool legitimately rewrites.
func treeEntry(e harness.Entry, identity bool) string {
	switch {
	case e.Mode&fs.ModeSymlink != 0:
		return "symlink -> " + e.Content
	case e.Mode.IsDir():
		return fmt.Sprintf("dir %v uid=%d gid=%d", e.Mode, e.UID, e.GID)
	case e.Mode.IsRegular():
		sum := sha256.Sum256([]byte(e.Content))
		if !identity {
			return fmt.Sprintf("file %v uid=%d gid=%d size=%d sha256=%s", e.Mode, e.UID, e.GID,
				len(e.Content), hex.EncodeToString(sum[:8]))
		}
		return fmt.Sprintf("file %v uid=%d gid=%d size=%d sha256=%s ino=%d mtime=%s", e.Mode, e.UID, e.GID,
			len(e.Content), hex.EncodeToString(sum[:8]), e.Ino, e.ModTime.UTC().Format(time.RFC3339Nano))
	default:
		return fmt.Sprintf("other %v", e.Mode)
	}
}

// snapshotTree records every path under root, files with inode and mtime:
// a file rewritten with the same bytes counts as changed.
func snapshotTree(root string) (map[string]string, error) { return walkTree(root, true) }

// contentTree records every path under root, files by mode and content.
func contentTree(root string) (map[string]string, error) { return walkTree(root, false) }

func walkTree(root string, identity bool) (map[string]string, error) {
	tree, err := harness.Walk(root)
	out := map[string]string{}
	for rel, e := range tree {
		out[filepath.FromSlash(rel)] = treeEntry(e, identity)
	}
	return out, err
}

// diffTrees lists every difference, leaving out paths for which ignore is true.
func diffTrees(before, after map[string]string, ignore func(string) bool) []string {
	var diffs []string
	keys := map[string]bool{}
	for k := range before {
		keys[k] = true
	}
	for k := range after {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		if !ignore(k) {
			sorted = append(sorted, k)
		}
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		b, inB := before[k]
		a, inA := after[k]
		switch {
		case !inA:
			diffs = append(diffs, "gone: "+k+" ("+b+")")
		case !inB:
			diffs = append(diffs, "new: "+k+" ("+a+")")
		case a != b:
			diffs = append(diffs, "changed: "+k+": "+b+" -> "+a)
		}
	}
	return diffs
}

// filesContaining lists regular files under root whose content holds needle.
func filesContaining(root string, needle []byte) ([]string, error) {
	var hits []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			rel, _ := filepath.Rel(root, p)
			hits = append(hits, rel)
		}
		return nil
	})
	return hits, err
}

// mountsUnder lists the host's mount points at or below any of paths.
func mountsUnder(paths ...string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return []string{err.Error()}
	}
	var hits []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for _, p := range paths {
			if f[4] == p || strings.HasPrefix(f[4], strings.TrimSuffix(p, "/")+"/") {
				hits = append(hits, f[4])
			}
		}
	}
	return hits
}

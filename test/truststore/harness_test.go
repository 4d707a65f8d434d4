package truststore

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
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

// chrootPath is the PATH given to every process run inside a Debian root.
const chrootPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// result is the outcome of one nodetrust run.
type result struct {
	code   int
	output string
	took   time.Duration
}

// apply runs `nodetrust apply -f manifests --host-root root`.
func apply(t *testing.T, bin, manifests, root string) result {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(bin, "apply", "-f", manifests, "--host-root", root)
	out, err := cmd.CombinedOutput()
	r := result{output: string(out), took: time.Since(start)}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	default:
		t.Fatalf("running nodetrust: %v", err)
	}
	t.Logf("nodetrust apply -f %s --host-root %s: exit %d in %s\n%s",
		manifests, root, r.code, r.took.Round(time.Millisecond), strings.TrimSpace(r.output))
	return r
}

// inRoot runs argv chrooted into root, with "/" as working directory and an
// explicit PATH, and returns its combined output and error.
func inRoot(root string, argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	cmd.Dir = "/"
	cmd.Env = []string{chrootPath, "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// pki is a throwaway CA and a leaf serving certificate for 127.0.0.1 it signed.
type pki struct {
	caDER   []byte
	caPEM   []byte
	leafPEM []byte
	leaf    tls.Certificate
}

func newPKI(t *testing.T, cn string) pki {
	t.Helper()
	ca := harness.NewCA(cn)
	leaf := ca.Serving("127.0.0.1", "localhost")
	pair, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pki{caDER: ca.Cert.Raw, caPEM: ca.PEM, leafPEM: leaf.CertPEM, leaf: pair}
}

// secretManifest is a labelled Secret that asks for host trust of caPEM.
func secretManifest(namespace, name string, caPEM []byte) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata:
  name: %s
  namespace: %s
  labels:
    nodetrust.io/ca: "true"
  annotations:
    nodetrust.io/host-trust: "true"
type: Opaque
data:
  ca.crt: %s
`, name, namespace, base64.StdEncoding.EncodeToString(caPEM))
}

// pemCerts returns the DER of every CERTIFICATE block in data.
func pemCerts(data []byte) [][]byte {
	var ders [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return ders
		}
		if b.Type == "CERTIFICATE" {
			ders = append(ders, b.Bytes)
		}
	}
}

// containsDER reports whether the PEM data holds a certificate equal to der.
func containsDER(data, der []byte) bool {
	for _, d := range pemCerts(data) {
		if bytes.Equal(d, der) {
			return true
		}
	}
	return false
}

// bundleHas reports whether ROOT/etc/ssl/certs/ca-certificates.crt holds der.
func bundleHas(t *testing.T, root string, der []byte) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil {
		t.Fatalf("reading the CA bundle: %v", err)
	}
	if n := len(pemCerts(data)); n < 100 {
		t.Fatalf("CA bundle holds only %d certificates: the root's ca-certificates looks broken", n)
	}
	return containsDER(data, der)
}

// entry is one file, directory or symlink seen by snapshot.
type entry struct {
	mode    fs.FileMode
	modTime time.Time
	sum     string // sha256 of a file's contents, or a symlink's target
}

func (e entry) String() string {
	return fmt.Sprintf("%v %s %.12s", e.mode, e.modTime.Format(time.RFC3339Nano), e.sum)
}

// snapshot walks dirs (relative to root) without following symlinks and
// records mode, mtime and contents of everything under them.
func snapshot(t *testing.T, root string, dirs ...string) map[string]entry {
	t.Helper()
	snap := map[string]entry{}
	for _, dir := range dirs {
		base := filepath.Join(root, dir)
		tree, err := harness.Walk(base)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("walking %s: %v", base, err)
		}
		for rel, e := range tree {
			en := entry{mode: e.Mode, modTime: e.ModTime}
			switch {
			case e.Mode&fs.ModeSymlink != 0:
				en.sum = e.Content
			case e.Mode.IsRegular():
				h := sha256.Sum256([]byte(e.Content))
				en.sum = hex.EncodeToString(h[:])
			}
			snap[filepath.Join(dir, filepath.FromSlash(rel))] = en
		}
	}
	return snap
}

// diffSnapshots lists what differs between two snapshots; contentOnly ignores
// mtimes.
func diffSnapshots(before, after map[string]entry, contentOnly bool) []string {
	var diffs []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			diffs = append(diffs, "removed "+p)
		case contentOnly && (a.mode != b.mode || a.sum != b.sum):
			diffs = append(diffs, fmt.Sprintf("changed %s: %v -> %v", p, b, a))
		case !contentOnly && a != b:
			diffs = append(diffs, fmt.Sprintf("changed %s: %v -> %v", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, "added "+p)
		}
	}
	sort.Strings(diffs)
	return diffs
}

// filesHolding lists the regular files under ROOT/dir whose PEM contents hold der.
func filesHolding(t *testing.T, root, dir string, der []byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if containsDER(data, der) {
			rel, _ := filepath.Rel(root, path)
			found = append(found, rel)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("walking %s: %v", dir, err)
	}
	sort.Strings(found)
	return found
}

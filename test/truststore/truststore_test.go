package truststore

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

const (
	anchorDir  = "usr/local/share/ca-certificates"
	certsDir   = "etc/ssl/certs"
	bundle     = "/etc/ssl/certs/ca-certificates.crt"
	leafInRoot = "/tmp/nodetrust-leaf.pem"
)

// TestDebianHostTrust applies a host-trust Secret to a real Debian bookworm
// root, checks the root's own tools now trust the CA, applies it again (no
// change), then applies an empty set and checks the trust is gone again.
func TestDebianHostTrust(t *testing.T) {
	harness.SkipUnlessReal(t)
	harness.SkipUnlessRoot(t, "tar --same-owner, chroot")
	bin := harness.Binary(t)
	root := harness.DebianRoot(t)
	p := newPKI(t, "nodetrust host-trust test CA")

	// A TLS server on loopback with the leaf: curl inside the root (same
	// network namespace as this process) must trust it exactly when the
	// host trust store holds the CA.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.leaf}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // curl's expected handshake failures
	srv.StartTLS()
	defer srv.Close()

	if err := os.WriteFile(filepath.Join(root, leafInRoot), p.leafPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	checkTrust := func(stage string, want bool) {
		t.Helper()
		if got := bundleHas(t, root, p.caDER); got != want {
			t.Errorf("%s: %s holds the CA = %v, want %v", stage, bundle, got, want)
		}
		out, err := inRoot(root, "/usr/bin/openssl", "verify", "-CAfile", bundle, leafInRoot)
		if verified := err == nil && strings.Contains(out, ": OK"); verified != want {
			t.Errorf("%s: openssl verify in the root: verified = %v, want %v (err %v)\n%s", stage, verified, want, err, out)
		}
		out, err = inRoot(root, "/usr/bin/curl", "-sS", "-o", "/tmp/curl.out", srv.URL+"/")
		var exitErr *exec.ExitError
		switch {
		case want && err != nil:
			t.Errorf("%s: curl %s in the root failed, want success: %v\n%s", stage, srv.URL, err, out)
		case !want && err == nil:
			t.Errorf("%s: curl %s in the root succeeded, want exit 60 (untrusted CA)", stage, srv.URL)
		case !want && (!errors.As(err, &exitErr) || exitErr.ExitCode() != 60):
			t.Errorf("%s: curl %s in the root: %v, want exit 60 (untrusted CA)\n%s", stage, srv.URL, err, out)
		}
	}

	pristine := snapshot(t, root, anchorDir, certsDir)
	checkTrust("before apply", false)
	if t.Failed() {
		t.FailNow()
	}

	manifests := filepath.Join(t.TempDir(), "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(manifests, "corp-ca.yaml")
	if err := os.WriteFile(secret, []byte(secretManifest("kube-system", "corp-ca", p.caPEM)), 0o644); err != nil {
		t.Fatal(err)
	}

	// 1. Install.
	if r := apply(t, bin, manifests, root); r.code != 0 {
		t.Fatalf("apply with a host-trust Secret: exit %d, want 0", r.code)
	}
	anchors := filesHolding(t, root, anchorDir, p.caDER)
	if len(anchors) == 0 {
		t.Errorf("no file under %s holds the CA", anchorDir)
	}
	for _, a := range anchors {
		if !strings.HasSuffix(a, ".crt") {
			t.Errorf("anchor %s does not end in .crt: update-ca-certificates ignores it", a)
		}
	}
	if others := filesHolding(t, root, "etc/pki", p.caDER); len(others) > 0 {
		t.Errorf("Debian root got RHEL/SUSE anchors: %v", others)
	}
	checkTrust("after apply", true)
	if t.Failed() {
		t.FailNow()
	}

	// 2. Same input again: nothing is written, update-ca-certificates is not rerun.
	before := snapshot(t, root, anchorDir, certsDir)
	if r := apply(t, bin, manifests, root); r.code != 0 {
		t.Fatalf("second apply with the same input: exit %d, want 0", r.code)
	}
	if diffs := diffSnapshots(before, snapshot(t, root, anchorDir, certsDir), false); len(diffs) > 0 {
		t.Errorf("second apply with unchanged input changed the trust store:\n%s", strings.Join(diffs, "\n"))
	}

	// 3. Empty desired set: the anchor goes and the root is as it was.
	if err := os.Remove(secret); err != nil {
		t.Fatal(err)
	}
	if r := apply(t, bin, manifests, root); r.code != 0 {
		t.Fatalf("apply with an empty manifest directory: exit %d, want 0", r.code)
	}
	if left := filesHolding(t, root, anchorDir, p.caDER); len(left) > 0 {
		t.Errorf("after removal, anchors still hold the CA: %v", left)
	}
	if left := filesHolding(t, root, certsDir, p.caDER); len(left) > 0 {
		t.Errorf("after removal, %s still holds the CA in: %v", certsDir, left)
	}
	checkTrust("after removal", false)
	if diffs := diffSnapshots(pristine, snapshot(t, root, anchorDir, certsDir), true); len(diffs) > 0 {
		t.Errorf("after removal the trust store differs from the pristine root (contents):\n%s", strings.Join(diffs, "\n"))
	}

	// 4. Empty set again: still nothing written.
	before = snapshot(t, root, anchorDir, certsDir)
	if r := apply(t, bin, manifests, root); r.code != 0 {
		t.Fatalf("second apply with an empty manifest directory: exit %d, want 0", r.code)
	}
	if diffs := diffSnapshots(before, snapshot(t, root, anchorDir, certsDir), false); len(diffs) > 0 {
		t.Errorf("second apply of the empty set changed the trust store:\n%s", strings.Join(diffs, "\n"))
	}
}

// TestImmutableOrUnknownOSHostTrust: on Talos, Bottlerocket and unknown
// systems host trust is reported unsupported and nothing is half-written.
// These roots are plain directories with only an os-release file. The
// talos-absolute-symlink case checks that an absolute etc/os-release symlink
// is never followed out of the host root (this machine is Debian, so a naive
// read would install anchors).
func TestImmutableOrUnknownOSHostTrust(t *testing.T) {
	harness.SkipUnlessReal(t)
	bin := harness.Binary(t)
	p := newPKI(t, "nodetrust unsupported-OS test CA")

	talos := "NAME=\"Talos\"\nID=talos\nVERSION_ID=v1.7.6\nPRETTY_NAME=\"Talos (v1.7.6)\"\n"
	cases := []struct {
		name, osRelease string
		// absLink puts os-release in usr/lib and makes etc/os-release an
		// absolute symlink to /usr/lib/os-release: resolved inside the root
		// it is Talos, followed naively it is this (Debian) test machine's.
		absLink bool
	}{
		{name: "talos", osRelease: talos},
		{name: "bottlerocket", osRelease: "NAME=Bottlerocket\nID=bottlerocket\nVERSION_ID=1.20.0\nPRETTY_NAME=\"Bottlerocket OS 1.20.0 (aws-k8s-1.29)\"\n"},
		{name: "unknown", osRelease: "NAME=\"Plan 9\"\nID=plan9\nVERSION_ID=4\n"},
		{name: "talos-absolute-symlink", osRelease: talos, absLink: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			osRelease := "etc/os-release"
			if tc.absLink {
				osRelease = "usr/lib/os-release"
			}
			if err := os.MkdirAll(filepath.Join(root, filepath.Dir(osRelease)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, osRelease), []byte(tc.osRelease), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.absLink {
				if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("/usr/lib/os-release", filepath.Join(root, "etc/os-release")); err != nil {
					t.Fatal(err)
				}
			}
			pre := snapshot(t, root, ".")
			manifest := filepath.Join(t.TempDir(), "corp-ca.yaml")
			if err := os.WriteFile(manifest, []byte(secretManifest("kube-system", "corp-ca", p.caPEM)), 0o644); err != nil {
				t.Fatal(err)
			}

			r := apply(t, bin, manifest, root)
			if r.code != 0 {
				t.Errorf("exit %d, want 0 (unsupported host trust is not a rejection)", r.code)
			}
			if !strings.Contains(strings.ToLower(r.output), "unsupported") {
				t.Errorf("output does not report host trust as unsupported:\n%s", r.output)
			}
			for _, dir := range []string{anchorDir, "etc/pki", "etc/ssl", "etc/ca-certificates"} {
				if _, err := os.Lstat(filepath.Join(root, dir)); err == nil {
					t.Errorf("%s was created on an OS without supported host trust", dir)
				}
			}
			if held := filesHolding(t, root, ".", p.caDER); len(held) > 0 {
				t.Errorf("CA written on an OS without supported host trust: %v", held)
			}
			if created := diffSnapshots(pre, snapshot(t, root, "."), true); len(created) > 0 {
				t.Logf("nodetrust created (not an error by itself): %s", strings.Join(created, ", "))
			}
		})
	}
}

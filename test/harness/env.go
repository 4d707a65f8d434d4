package harness

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Versions built by test/scripts/k8s-build.sh; keep in step with it.
const (
	K8sVersion  = "v1.34.4"
	KwokVersion = "v0.7.0"

	// AgentNamespace and AgentServiceAccount are what deploy/ creates.
	AgentNamespace      = "nodetrust-system"
	AgentServiceAccount = "nodetrust"
)

// Real reports whether the real-component tests are enabled.
func Real() bool { return os.Getenv("NODETRUST_REAL") == "1" }

// SkipUnlessReal skips t unless NODETRUST_REAL=1.
func SkipUnlessReal(t testing.TB) {
	t.Helper()
	if !Real() {
		t.Skip("real-component test: set NODETRUST_REAL=1 (after test/scripts/deps.sh and test/scripts/k8s-build.sh) to run it")
	}
}

// SkipUnlessRoot skips t unless it runs as root; why says what needs it.
func SkipUnlessRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("real-component test needs root (" + why + ")")
	}
}

// RepoRoot is the nodetrust repository root (suites run in test/<suite>).
func RepoRoot() string {
	abs, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	return abs
}

// DebianRoot extracts a fresh Debian bookworm root (cached by
// test/scripts/debian-root.sh, with systemd, systemd-sysv and dbus) into a
// temporary directory of t and returns it.
func DebianRoot(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	start := time.Now()
	if err := ExtractDebianRoot(root); err != nil {
		t.Fatal(err)
	}
	t.Logf("Debian root extracted in %s", time.Since(start).Round(time.Millisecond))
	return root
}

// ExtractDebianRoot extracts a fresh Debian bookworm root into dir with
// test/scripts/debian-root.sh, which builds it once (debootstrap) and caches
// it; include, when given, replaces the script's package list (another
// cached root). The error carries the script's output.
func ExtractDebianRoot(dir string, include ...string) error {
	script := filepath.Join(RepoRoot(), "test", "scripts", "debian-root.sh")
	cmd := exec.Command("bash", script, dir)
	if len(include) > 0 {
		cmd.Env = append(os.Environ(), "NODETRUST_DEBIAN_INCLUDE="+strings.Join(include, ","))
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("debian-root.sh %s: %v\n%s", dir, err, out)
	}
	return nil
}

func cacheDir() string {
	if d := os.Getenv("NODETRUST_CACHE"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "nodetrust")
}

// K8sBin returns the path of a Kubernetes binary (kube-apiserver, kubectl,
// kube-controller-manager, kube-scheduler): $NODETRUST_K8S_BIN/<name> or the
// k8s-build.sh cache.
func K8sBin(name string) string {
	dir := os.Getenv("NODETRUST_K8S_BIN")
	if dir == "" {
		dir = filepath.Join(cacheDir(), "k8s", K8sVersion, "bin")
	}
	return filepath.Join(dir, name)
}

// KwokBin returns the kwok binary: $NODETRUST_KWOK_BIN or the k8s-build.sh cache.
func KwokBin() string {
	if b := os.Getenv("NODETRUST_KWOK_BIN"); b != "" {
		return b
	}
	return filepath.Join(cacheDir(), "k8s", "kwok-"+KwokVersion, "bin", "kwok")
}

func needBinary(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s missing (%v): run test/scripts/k8s-build.sh first", path, err)
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RandHex returns n random bytes in hex, for unique names.
func RandHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// DeployDir is the repository's kustomize base.
func DeployDir() string { return filepath.Join(RepoRoot(), "deploy") }

// Containerd2Bin is containerd v2.2.4 built by test/scripts/containerd2-build.sh:
// $NODETRUST_CONTAINERD2, or the script's cache.
func Containerd2Bin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("NODETRUST_CONTAINERD2")
	if bin == "" {
		out, err := exec.Command(filepath.Join(RepoRoot(), "test/scripts/containerd2-build.sh"), "--print-bin").Output()
		if err != nil {
			t.Fatalf("containerd2-build.sh --print-bin: %v", err)
		}
		bin = strings.TrimSpace(string(out))
	}
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("containerd 2 binary %s missing (%v): run test/scripts/containerd2-build.sh (make test-layouts does)", bin, err)
	}
	return bin
}

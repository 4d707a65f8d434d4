package image

// A real containerd (the Debian package, as test/scripts/deps.sh installs
// it) imports the archive the way an operator would side-load it onto a node,
// and runc runs the imported image. Opt in with NODETRUST_REAL=1; needs root.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// ctrNamespace is where kubelet's CRI looks for images.
const ctrNamespace = "k8s.io"

func TestContainerdImportsAndRuns(t *testing.T) {
	if os.Getenv("NODETRUST_REAL") != "1" {
		t.Skip("set NODETRUST_REAL=1 to run with a real containerd (root, Debian package containerd)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("NODETRUST_REAL=1 needs root")
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, tool := range []string{"containerd", "ctr", "runc"} {
		if _, err := lookPath(tool, path); err != nil {
			t.Fatalf("%s not found (run test/scripts/deps.sh): %v", tool, err)
		}
	}
	// Generous: a cold build of the agent (client-go) takes minutes on 2 busy cores.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()

	start := time.Now()
	bin, wantVersion := nodetrustBinary(ctx, t, dir)
	t.Logf("binary %s (%s) in %v", bin, strings.TrimSpace(wantVersion), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	archive := filepath.Join(dir, "nodetrust-image.tar")
	tag := "ghcr.io/nodetrust/nodetrust:real-test"
	msg, err := runTool(t, "-bin", bin, "-o", archive, "-tag", tag)
	if err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	t.Logf("image in %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(msg))

	start = time.Now()
	c := startContainerd(ctx, t, dir, path)
	t.Logf("containerd ready in %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	out := c.ctr(ctx, t, 0, "images", "import", archive)
	t.Logf("ctr images import in %v:\n%s", time.Since(start).Round(time.Millisecond), out)

	out = c.ctr(ctx, t, 0, "images", "ls")
	t.Logf("ctr images ls:\n%s", out)
	found := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == tag {
			found = true
			if !strings.Contains(line, "linux/amd64") {
				t.Errorf("imported image is not linux/amd64: %s", line)
			}
		}
	}
	if !found {
		t.Fatalf("%s not listed after import", tag)
	}

	// The image's entrypoint with the DaemonSet's read-only root: no args is
	// a usage error (exit 2) printed by /nodetrust.
	start = time.Now()
	out = c.ctr(ctx, t, 2, "run", "--rm", "--read-only", tag, "nodetrust-entrypoint")
	if !strings.Contains(out, "usage: nodetrust") {
		t.Errorf("entrypoint without args: %q, want nodetrust's usage", out)
	}
	// ctr run replaces the whole argv when given a command.
	out = c.ctr(ctx, t, 0, "run", "--rm", "--read-only", tag, "nodetrust-version", "/nodetrust", "version")
	if out != wantVersion {
		t.Errorf("version in the container: %q, want %q", out, wantVersion)
	}
	// As the DaemonSet runs it: read-only root, a host root bind-mounted at
	// /host (created on demand in the image, which has no /host), and the
	// binary writing containerd's files there.
	host := filepath.Join(dir, "host")
	for _, d := range []string{"etc/containerd", "manifests"} {
		if err := os.MkdirAll(filepath.Join(host, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	example, err := os.ReadFile("../../deploy/examples/registry-ca-secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(host, "manifests", "source.yaml"), example, 0o644); err != nil {
		t.Fatal(err)
	}
	out = c.ctr(ctx, t, 0, "run", "--rm", "--read-only",
		"--mount", "type=bind,src="+host+",dst=/host,options=rbind:rw",
		tag, "nodetrust-apply", "/nodetrust", "apply", "-f", "/host/manifests", "--host-root", "/host")
	hostsTOML := filepath.Join(host, "etc/containerd/certs.d/registry.example.internal:5000/hosts.toml")
	if _, err := os.Stat(hostsTOML); err != nil {
		t.Errorf("apply in the container wrote no hosts.toml: %v\n%s", err, out)
	}
	t.Logf("ctr run (3 containers) in %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
}

// nodetrustBinary returns $NODETRUST_BIN or a static build of ./cmd/nodetrust,
// and what its `version` prints on this machine.
func nodetrustBinary(ctx context.Context, t *testing.T, dir string) (string, string) {
	t.Helper()
	bin := os.Getenv("NODETRUST_BIN")
	if bin == "" {
		bin = filepath.Join(dir, "nodetrust")
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
			"-ldflags", "-s -w -X main.version=image-test -X main.commit=test", "-o", bin, "./cmd/nodetrust")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/nodetrust: %v\n%s", err, b)
		}
	}
	b, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		t.Fatalf("%s version: %v", bin, err)
	}
	return bin, string(b)
}

type containerd struct {
	sock string
	path string
}

// startContainerd runs containerd with its own root, state and sockets under
// dir (CRI off: ctr needs none of it), with only path on its PATH, and stops
// it when the test ends.
func startContainerd(ctx context.Context, t *testing.T, dir, path string) containerd {
	t.Helper()
	c := containerd{sock: harness.ContainerdSock(dir), path: path}
	config := harness.ContainerdConfigTop(dir, 2, "io.containerd.grpc.v1.cri") + `
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
`
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ready := func() error {
		cmd := exec.CommandContext(ctx, "ctr", "--address", c.sock, "version")
		cmd.Env = []string{"PATH=" + path}
		return cmd.Run()
	}
	harness.StartContainerd(t, dir, ready, "env", "-i", "PATH="+path, "containerd", "--config", cfg)
	return c
}

// ctr runs ctr against this containerd in the k8s.io namespace and returns
// its combined output, failing unless it exits with wantCode.
func (c containerd) ctr(ctx context.Context, t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.sock, "--namespace", ctrNamespace}, args...)...)
	cmd.Env = []string{"PATH=" + c.path}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("ctr %s: %v", strings.Join(args, " "), err)
	}
	if code != wantCode {
		t.Fatalf("ctr %s: exit %d, want %d\n%s", strings.Join(args, " "), code, wantCode, out.String())
	}
	return out.String()
}

func lookPath(file, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not in %s", file, path)
}

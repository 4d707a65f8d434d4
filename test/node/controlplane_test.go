package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// startControlPlane is test/harness's etcd + kube-apiserver plus
// kube-controller-manager and kube-scheduler (DaemonSet pods go through the
// default scheduler); all stop with the cluster.
func startControlPlane(t *testing.T) *harness.Cluster {
	t.Helper()
	if _, err := os.Stat(harness.K8sBin("kubelet")); err != nil {
		t.Fatalf("%v: run test/scripts/k8s-build.sh --kubelet", err)
	}
	c := harness.NewCluster(t)
	c.StartControllers(t)
	return c
}

// kubectl runs kubectl with the admin kubeconfig and fails t on error.
func kubectl(t *testing.T, c *harness.Cluster, args ...string) string {
	t.Helper()
	out, err := c.Kubectl(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// applyOverlay renders one of test/node's overlays with kubectl kustomize,
// puts the API server's port where the overlay says NODETRUST_TEST_API_PORT
// and applies the result; it returns the rendered manifest.
func applyOverlay(t *testing.T, c *harness.Cluster, name string) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("overlay", name))
	if err != nil {
		t.Fatal(err)
	}
	rendered := kubectl(t, c, "kustomize", dir)
	port := strings.TrimPrefix(c.Server, "https://127.0.0.1:")
	if !strings.Contains(rendered, "NODETRUST_TEST_API_PORT") {
		t.Fatalf("overlay %s has no NODETRUST_TEST_API_PORT", name)
	}
	// kustomize prints the placeholder unquoted; the port must stay a string.
	rendered = strings.ReplaceAll(rendered, "NODETRUST_TEST_API_PORT", strconv.Quote(port))
	f := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(f, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, c, "apply", "-f", f)
	return rendered
}

// packImage packs the static binary bin as an image tagged tag into a
// docker-archive tarball in dir, with tools/image.
func packImage(t *testing.T, dir, bin, tag string) string {
	t.Helper()
	out := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(tag)+".tar")
	cmd := exec.Command(harness.ImageTool(t, dir), "-bin", bin, "-o", out, "-tag", tag)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tools/image %s: %v\n%s", tag, err, b)
	}
	return out
}

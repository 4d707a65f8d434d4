package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

// containerdNode is Debian's containerd 1.6 run in a private mount
// namespace whose /etc/hosts names the registry alias, with its own root,
// state and sockets, and the CRI registry config_path in the agent's host
// root.
type containerdNode struct {
	dir     string
	sock    string
	proc    *harness.Proc
	pid     int
	started string // /proc/PID/stat starttime, to prove "not restarted"
	version string
	conn    *grpc.ClientConn
	images  runtimeapi.ImageServiceClient
	runtime runtimeapi.RuntimeServiceClient
}

// containerdSpec says which containerd to start and with what CRI image
// settings. Paths in it are node paths: the config containerd runs with has
// them below the host root, the node view nodetrust reads has them as they
// are (as on a real node whose root is the host root).
type containerdSpec struct {
	bin        string   // the daemon: "containerd" is Debian's 1.6 on PATH
	v3         bool     // config version 3 (containerd 2.x), else version 2
	nodeConfig string   // node path of the node view, e.g. /etc/containerd/config.toml
	configPath string   // CRI registry config_path, node paths, ':'-separated
	images     []string // extra lines of the CRI images section (v3) or CRI containerd table (v2), e.g. "discard_unpacked_layers = true"
}

// debianSpec is Debian's containerd 1.6 reading /etc/containerd/certs.d,
// what TestNodeStory runs.
var debianSpec = containerdSpec{bin: "containerd", nodeConfig: "/etc/containerd/config.toml", configPath: "/etc/containerd/certs.d"}

// config renders the containerd config of spec; certsRoot prefixes every
// config_path entry (the host root for the running containerd, "" for the
// node view).
func (spec containerdSpec) config(dir, certsRoot string) string {
	var entries []string
	for _, p := range filepath.SplitList(spec.configPath) {
		entries = append(entries, filepath.Join(certsRoot, p))
	}
	configPath := strings.Join(entries, string(filepath.ListSeparator))
	version, q := 2, `"`
	disabled := []string{"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"}
	if spec.v3 {
		// containerd 2.x is built without those snapshotters.
		version, disabled, q = 3, nil, "'"
	}
	top := harness.ContainerdConfigTop(dir, version, disabled...) + fmt.Sprintf(`
[plugins.%sio.containerd.internal.v1.opt%s]
  path = %q
`, q, q, filepath.Join(dir, "opt"))
	cniBin, cniConf := filepath.Join(dir, "cni", "bin"), filepath.Join(dir, "cni", "conf")
	if spec.v3 {
		return top + fmt.Sprintf(`
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [%q]
  conf_dir = %q

[plugins.'io.containerd.cri.v1.images']
%s
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q
`, cniBin, cniConf, indentLines("  ", spec.images), configPath)
	}
	return top + fmt.Sprintf(`
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
%s`, cniBin, cniConf, configPath, v2Containerd(spec.images))
}

// v2Containerd renders extra lines of a version 2 config's CRI containerd
// table, where discard_unpacked_layers and its neighbours live.
func v2Containerd(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return "\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n" + indentLines("    ", lines)
}

func indentLines(indent string, lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(indent + l + "\n")
	}
	return b.String()
}

// startContainerd starts Debian's containerd 1.6 with its CRI registry
// config_path at hostRoot/etc/containerd/certs.d (debianSpec).
func startContainerd(t *testing.T, hostsFile, hostRoot string) (*containerdNode, time.Duration) {
	t.Helper()
	return startContainerdSpec(t, hostsFile, hostRoot, debianSpec)
}

// startContainerdSpec starts spec.bin in a private mount namespace whose
// /etc/hosts is hostsFile, with the CRI registry config_path of spec below
// hostRoot. It also plants the node's view of that configuration at
// hostRoot/spec.nodeConfig: the same file with the config_path entries as
// node paths, as containerd on a real node whose root is hostRoot would
// have it (nodetrust reads it to find where containerd looks).
func startContainerdSpec(t *testing.T, hostsFile, hostRoot string, spec containerdSpec) (*containerdNode, time.Duration) {
	t.Helper()
	dir := t.TempDir()
	c := &containerdNode{dir: dir, sock: harness.ContainerdSock(dir)}
	var err error
	nodeView := filepath.Join(hostRoot, spec.nodeConfig)
	if err := os.MkdirAll(filepath.Dir(nodeView), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nodeView, []byte(spec.config(dir, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(spec.config(dir, hostRoot)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.conn, err = grpc.NewClient("unix://"+c.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	c.images = runtimeapi.NewImageServiceClient(c.conn)
	c.runtime = runtimeapi.NewRuntimeServiceClient(c.conn)
	start := time.Now()
	bin, args := inMountNS([][2]string{{hostsFile, "/etc/hosts"}}, spec.bin, "--config", cfg)
	p := harness.StartContainerd(t, dir, c.criReady, bin, args...)
	c.proc = p
	c.pid = p.Pid()
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.pid))
	if got := strings.TrimSpace(string(comm)); got != "containerd" {
		t.Fatalf("process %d is %q, want containerd (unshare and sh should have exec'd it)", c.pid, got)
	}
	c.started = procStartTime(c.pid)
	return c, time.Since(start)
}

// criReady asks the CRI for its version and images: containerd serves
// pulls once both answer.
func (c *containerdNode) criReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	v, err := c.runtime.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return err
	}
	if _, err := c.images.ListImages(ctx, &runtimeapi.ListImagesRequest{}); err != nil {
		return err
	}
	c.version = v.RuntimeName + " " + v.RuntimeVersion + " (CRI " + v.RuntimeApiVersion + ")"
	return nil
}

// procStartTime is field 22 of /proc/PID/stat (clock ticks since boot).
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone: " + err.Error()
	}
	s := string(b)
	// comm may hold spaces: fields after the closing parenthesis.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "unparsable"
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "unparsable"
	}
	return f[19]
}

// sameProcess fails t unless containerd is still the process it started as:
// the proof that no step restarted it.
func (c *containerdNode) sameProcess(t *testing.T) {
	t.Helper()
	if done, err := c.proc.Exited(); done {
		t.Fatalf("containerd (pid %d) exited: %v", c.pid, err)
	}
	if got := procStartTime(c.pid); got != c.started {
		t.Fatalf("containerd pid %d start time %s, want %s: it was restarted", c.pid, got, c.started)
	}
}

// pull pulls ref through CRI; on success the image is removed again so the
// next pull fetches everything from the registry. It returns the image id
// and how long the pull took.
func (c *containerdNode) pull(ref string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := c.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	took := time.Since(start)
	if err != nil {
		return "", took, err
	}
	if _, err := c.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		return resp.ImageRef, took, fmt.Errorf("pulled, but RemoveImage: %w", err)
	}
	return resp.ImageRef, took, nil
}

const x509Unknown = "x509: certificate signed by unknown authority"

// mustPullX509 asserts that a CRI pull fails with an unknown-authority error.
func (c *containerdNode) mustPullX509(t *testing.T, ref, when string) string {
	t.Helper()
	c.sameProcess(t)
	_, took, err := c.pull(ref)
	if err == nil {
		t.Fatalf("%s: CRI pull of %s succeeded, want %q", when, ref, x509Unknown)
	}
	if !strings.Contains(err.Error(), x509Unknown) {
		t.Fatalf("%s: CRI pull of %s failed with %v, want %q", when, ref, err, x509Unknown)
	}
	return fmt.Sprintf("CRI pull fails in %.2fs: ...%s", took.Seconds(), tailString(err.Error(), 90))
}

// mustPull asserts that a CRI pull succeeds with containerd never restarted.
func (c *containerdNode) mustPull(t *testing.T, ref, when string) string {
	t.Helper()
	c.sameProcess(t)
	id, took, err := c.pull(ref)
	if err != nil {
		t.Fatalf("%s: CRI pull of %s: %v", when, ref, err)
	}
	c.sameProcess(t)
	return fmt.Sprintf("CRI pull ok in %.2fs (%s), containerd pid %d unchanged", took.Seconds(), shortID(id), c.pid)
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	return "sha256:" + id
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

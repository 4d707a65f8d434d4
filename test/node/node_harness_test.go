package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

// rootPackages is the node root's debootstrap --include list: the systemd
// suite's root plus containerd 1.6 (with runc) and the CNI plugins. Another
// list is another cached tarball (test/scripts/debian-root.sh).
const rootPackages = "ca-certificates,openssl,curl,systemd,systemd-sysv,dbus,containerd,containernetworking-plugins,iptables,procps"

// Names inside the node.
const (
	registryHost   = "registry.nodetrust.test"
	pauseImage     = "nodetrust.test/pause:1"
	agentImage     = "ghcr.io/nodetrust/nodetrust:node-test"
	containerdSock = "/run/containerd/containerd.sock"
)

// node is one Kubernetes node: a Debian root booted by systemd-nspawn on the
// host's network, whose systemd runs containerd and the kubelet.
type node struct {
	name string
	dir  string // harness files (kubeconfig)
	root string // the node's / as seen from this machine
	id   string // short random id: the bridge's name
	m    *harness.Machine

	containerd string   // binary bound over /usr/bin/containerd, or ""
	taints     []string // registerWithTaints keys (NoSchedule)
	bridge     string

	kubeletPort int
	Booted      time.Duration // nspawn start -> containerd socket
	Ready       time.Duration // kubelet start -> Node Ready

	startedKubelet time.Time
	Runtime        string // the Node's containerRuntimeVersion
}

func randID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// hostPath is p (an absolute path inside the node) as seen from this machine.
func (n *node) hostPath(p string) string { return filepath.Join(n.root, p) }

// procRoot is p inside the node's mount namespace (its /run is nspawn's tmpfs).
func (n *node) procRoot(p string) string { return n.m.Inside(p) }

// nodeOptions vary a node.
type nodeOptions struct {
	containerd string   // binary bound over the node's /usr/bin/containerd ("": Debian's)
	taints     []string // NoSchedule taint keys the kubelet registers the Node with
	images     []image  // imported into containerd before the kubelet starts
}

// image is a docker-archive tarball and the reference it gets in the node.
type image struct{ tar, ref string }

// startNode builds the node root, boots it and waits until its Node is Ready.
func startNode(t *testing.T, c *harness.Cluster, name string, o nodeOptions) *node {
	t.Helper()
	n := newNode(t, name, o)
	n.start(t, c, o)
	return n
}

// newNode names a node and its directories; start builds and boots it.
func newNode(t *testing.T, name string, o nodeOptions) *node {
	n := &node{name: name, dir: t.TempDir(), id: randID(3), containerd: o.containerd, taints: o.taints}
	n.root = filepath.Join(n.dir, "root")
	n.bridge = "ntnode" + n.id[:4]
	return n
}

// start extracts the node root, configures and boots it, imports the
// images, starts the kubelet and waits for the Node to be Ready.
func (n *node) start(t *testing.T, c *harness.Cluster, o nodeOptions) {
	t.Helper()
	start := time.Now()
	if err := harness.ExtractDebianRoot(n.root, rootPackages); err != nil {
		t.Fatal(err)
	}
	t.Logf("node root %s extracted in %v", n.root, time.Since(start).Round(time.Millisecond))
	n.configure(t, c)
	n.boot(t)
	// The images are there before the Node registers: no pod's first
	// attempt fails on a missing image.
	for _, img := range o.images {
		n.importImage(t, img.tar, img.ref)
	}
	n.startedKubelet = time.Now()
	if out, err := n.inNode("systemctl", "start", "kubelet.service"); err != nil {
		t.Fatalf("systemctl start kubelet: %v\n%s", err, out)
	}
	n.waitReady(t, c)
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// configure writes the node's containerd, CNI, kubelet and unit files.
func (n *node) configure(t *testing.T, c *harness.Cluster) {
	t.Helper()
	var err error
	if n.kubeletPort, err = harness.FreePort(); err != nil {
		t.Fatal(err)
	}
	healthz, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	subnet, _ := rand.Int(rand.Reader, big.NewInt(150))
	taints := ""
	if len(n.taints) > 0 {
		taints = "registerWithTaints:\n"
		for _, k := range n.taints {
			taints += fmt.Sprintf("  - {key: %q, effect: NoSchedule}\n", k)
		}
	}
	kubeconfig := filepath.Join(n.dir, "kubelet.kubeconfig")
	// The kubelet authenticates as the admin: the Node authorizer is not
	// what this suite proves.
	if err := harness.WriteKubeconfig(kubeconfig, c.Server, c.CAPEM, c.AdminToken, ""); err != nil {
		t.Fatal(err)
	}
	kc, err := os.ReadFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// The control plane's cgroup v1 controllers are mounted read-only in an
	// nspawn container; runc must create the pods' cgroups in them.
	remount := `for d in /sys/fs/cgroup/*/; do case "$d" in */systemd/|*/unified/) ;; *) mount -o remount,bind,rw "$d" ;; esac; done`
	writeFiles(t, n.root, map[string]string{
		"etc/hostname": n.name + "\n",
		// The registry's name resolves to this machine's loopback inside the
		// node only (containerd falls back to plain HTTP for a loopback name).
		"etc/hosts": "127.0.0.1 localhost " + registryHost + "\n",
		"etc/containerd/config.toml": `version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "` + pauseImage + `"
  # this machine's root lacks CAP_SYS_RESOURCE (REAL-COMPONENTS.md)
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
`,
		"etc/systemd/system/containerd.service.d/node-test.conf": `[Service]
# a negative OOM score needs CAP_SYS_RESOURCE
OOMScoreAdjust=0
ExecStartPre=/bin/sh -c '` + remount + `'
StandardOutput=append:/var/log/containerd.log
StandardError=inherit
`,
		"etc/cni/net.d/10-node.conflist": fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "nodetrust-node",
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": false, "ipMasq": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.%d.0/24"}]]}
  }]
}
`, n.bridge, 100+subnet.Int64()),
		"etc/kubernetes/kubelet.kubeconfig": string(kc),
		"etc/kubernetes/kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
healthzBindAddress: 127.0.0.1
healthzPort: %d
readOnlyPort: 0
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
makeIPTablesUtilChains: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {}
containerRuntimeEndpoint: unix://%s
serializeImagePulls: false
%s`, n.kubeletPort, healthz, containerdSock, taints),
		"etc/systemd/system/kubelet.service": `[Unit]
Description=kubelet (test/node)
Wants=containerd.service
After=containerd.service

[Service]
ExecStart=/usr/local/bin/kubelet --config /etc/kubernetes/kubelet.yaml --kubeconfig /etc/kubernetes/kubelet.kubeconfig --hostname-override ` + n.name + `
Restart=always
RestartSec=1
StandardOutput=append:/var/log/kubelet.log
StandardError=inherit

[Install]
WantedBy=multi-user.target
`,
	})
	// kubelet.service is started by startNode once the images are in.
	wants := filepath.Join(n.root, "etc/systemd/system/multi-user.target.wants")
	if _, err := os.Lstat(filepath.Join(wants, "containerd.service")); err != nil {
		t.Fatalf("containerd.service is not enabled in the node root: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(n.root, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.root, "usr/local/bin/kubelet"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
}

// boot starts systemd-nspawn on the host's network (harness.StartMachine)
// and waits for the node's containerd socket.
func (n *node) boot(t *testing.T) {
	t.Helper()
	args := []string{"--machine=" + n.name,
		// The kubelet, containerd and runc need every capability, the
		// kubelet's OOM watcher /dev/kmsg, and the CNI bridge plugin
		// writable /proc/sys and /sys (SYSTEMD_NSPAWN_API_VFS_WRITABLE);
		// runc's keyring calls pass nspawn's seccomp filter only when off.
		"--capability=all",
		"--bind-ro=" + harness.K8sBin("kubelet") + ":/usr/local/bin/kubelet",
		"--bind=/dev/kmsg",
	}
	if n.containerd != "" {
		args = append(args, "--bind-ro="+n.containerd+":/usr/bin/containerd")
	}
	n.m = harness.StartMachine(t, n.root, harness.MachineOptions{
		Name: "node-" + n.name, Args: args, Grace: 30 * time.Second,
		Env: []string{"SYSTEMD_SECCOMP=0", "SYSTEMD_NSPAWN_API_VFS_WRITABLE=1"}})
	t.Cleanup(func() { n.stop(t) })
	ok := n.m.WaitBoot(t, 60*time.Second, func() bool {
		_, err := os.Stat(n.procRoot(containerdSock))
		return err == nil
	})
	if !ok {
		t.Fatalf("no containerd socket in the node after 60 s\n%s\n%s", n.m.ConsoleTail(2000), tail(n.hostPath("/var/log/containerd.log"), 2000))
	}
	n.Booted = time.Since(n.m.Started)
	t.Logf("node %s booted: systemd is host PID %d, containerd up after %v", n.name, n.m.Leader, n.Booted.Round(time.Millisecond))
}

// waitReady waits for the Node object to be Ready.
func (n *node) waitReady(t *testing.T, c *harness.Cluster) {
	t.Helper()
	var last string
	ok := harness.Poll(120*time.Second, 100*time.Millisecond, func() bool {
		nd, err := c.Admin.CoreV1().Nodes().Get(context.Background(), n.name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false
		}
		n.Runtime = nd.Status.NodeInfo.ContainerRuntimeVersion
		for _, cond := range nd.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				last = fmt.Sprintf("%s: %s", cond.Status, cond.Message)
				return cond.Status == corev1.ConditionTrue
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("Node %s not Ready after 120 s (last: %s)\n---- kubelet ----\n%s\n---- containerd ----\n%s", n.name, last,
			tail(n.hostPath("/var/log/kubelet.log"), 4000), tail(n.hostPath("/var/log/containerd.log"), 2000))
	}
	n.Ready = time.Since(n.startedKubelet)
	t.Logf("Node %s Ready %v after the kubelet's start", n.name, n.Ready.Round(time.Millisecond))
}

// stop halts the node (harness.Machine.Stop) and removes what it left
// outside its root: the containers' cgroups and the CNI bridge.
func (n *node) stop(t *testing.T) {
	if t.Failed() {
		t.Logf("---- node %s kubelet ----\n%s", n.name, tail(n.hostPath("/var/log/kubelet.log"), 4000))
		t.Logf("---- node %s containerd ----\n%s", n.name, tail(n.hostPath("/var/log/containerd.log"), 3000))
		logs, _ := filepath.Glob(n.hostPath("/var/log/pods/*/*/*.log"))
		for _, l := range logs {
			t.Logf("---- node %s %s ----\n%s", n.name, strings.TrimPrefix(l, n.hostPath("/var/log/pods")), tail(l, 3000))
		}
	}
	// containerd puts each container's cgroup at /k8s.io/<id> in every
	// controller (cgroup v1 has no namespaces): those of this node are
	// removed once it is down.
	ids, _ := n.ctr("containers", "ls", "-q")
	var dirs []string
	for _, id := range strings.Fields(ids) {
		found, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io/" + id)
		dirs = append(dirs, found...)
	}
	n.m.Stop(t, dirs...)
	_ = exec.Command("ip", "link", "delete", n.bridge).Run()
}

// inNode runs a command in the node's namespaces (systemctl, journalctl).
func (n *node) inNode(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"-t", fmt.Sprint(n.m.Leader), "-m", "-u", "-i", "-p", "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ctr runs the machine's ctr against the node's containerd, namespace k8s.io.
func (n *node) ctr(args ...string) (string, error) {
	cmd := exec.Command("ctr", append([]string{"--address", n.procRoot(containerdSock), "-n", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// importImage imports a docker-archive tarball into the node's containerd
// and tags it as ref (when ref is not what the tarball names).
func (n *node) importImage(t *testing.T, tarball, ref string) {
	t.Helper()
	out, err := n.ctr("images", "import", tarball)
	if err != nil {
		t.Fatal(err)
	}
	// "unpacking NAME (sha256:...)...done"
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "unpacking" && f[1] != ref {
			if _, err := n.ctr("images", "tag", "--force", f[1], ref); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out, err := n.ctr("images", "ls", "-q", "name=="+ref); err != nil || strings.TrimSpace(out) != ref {
		t.Fatalf("image %s not in the node's containerd after import (%v): %q", ref, err, out)
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

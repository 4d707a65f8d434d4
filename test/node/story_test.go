package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

const (
	nodeName  = "node1"
	agentNS   = harness.AgentNamespace
	workNS    = "workload"
	appName   = "app"
	regSecret = "registry-tls"
)

// skipUnlessNode skips unless NODETRUST_REAL=1 and root.
func skipUnlessNode(t *testing.T) {
	t.Helper()
	harness.SkipUnlessReal(t)
	if os.Geteuid() != 0 {
		t.Skip("test/node needs root (systemd-nspawn, cgroups, mounts)")
	}
}

// story is the shared state of TestNodeStory's steps.
type story struct {
	t    *testing.T
	c    *harness.Cluster
	n    *node
	reg  *registry
	rep  *report
	ctx  context.Context
	imgs string // directory of built images

	ca      *harness.CA     // the registry's current CA
	serving harness.Serving // and its serving certificate
}

// agentImageTar is $NODETRUST_IMAGE_TAR (make image's bin/nodetrust-image.tar)
// or an image packed here from the binary under test.
func (s *story) agentImageTar() string {
	if p := os.Getenv("NODETRUST_IMAGE_TAR"); p != "" {
		return p
	}
	return packImage(s.t, s.imgs, harness.Binary(s.t), agentImage)
}

// TestNodeStory is issue 12's story on one real node with Debian's
// containerd 1.6, timed into a report.
func TestNodeStory(t *testing.T) {
	skipUnlessNode(t)
	runStory(t, storyOptions{runtime: "containerd 1.6", runtimeVersion: "containerd://1.6.", full: true})
}

// TestNodeStoryContainerd2 is the story's pull, host-trust and uninstall
// steps with containerd 2.2.4 (test/scripts/containerd2-build.sh) in the
// node in place of Debian's containerd; the shim and runc stay Debian's.
func TestNodeStoryContainerd2(t *testing.T) {
	skipUnlessNode(t)
	bin := harness.Containerd2Bin(t)
	runStory(t, storyOptions{runtime: "containerd 2.2.4", runtimeVersion: "containerd://2.2.", containerd: bin, reportSuffix: "-containerd2"})
}

// storyOptions choose the node's runtime and how much of the story runs.
type storyOptions struct {
	runtime        string // for step names
	runtimeVersion string // prefix of the Node's containerRuntimeVersion
	containerd     string // binary bound over the node's /usr/bin/containerd ("": Debian's)
	full           bool   // also agent pod restart and memory
	reportSuffix   string // inserted before the report file's extension
}

func runStory(t *testing.T, o storyOptions) {
	s := &story{t: t, rep: newReport(t, o.reportSuffix), ctx: context.Background(), imgs: t.TempDir()}
	s.rep.Note("node runtime: %s", o.runtime)
	var pauseBin string
	s.rep.Step("control plane: etcd, kube-apiserver, controller-manager, scheduler", func() string {
		s.c = startControlPlane(t)
		return fmt.Sprintf("kube-apiserver /readyz %s", secs(s.c.APIReady))
	})
	s.rep.Step("build the pause image (tools/image) and the agent image", func() string {
		pauseBin = filepath.Join(s.imgs, "pause")
		require.NoError(t, harness.GoBuild(".", "./pause", pauseBin))
		packImage(t, s.imgs, pauseBin, pauseImage)
		return filepath.Base(s.agentImageTar())
	})
	pauseTar := filepath.Join(s.imgs, strings.NewReplacer("/", "_", ":", "_").Replace(pauseImage)+".tar")
	s.rep.Step("node: nspawn-booted Debian root, systemd, "+o.runtime+", images imported, kubelet", func() string {
		s.n = startNode(t, s.c, nodeName, nodeOptions{containerd: o.containerd, images: s.images(pauseTar)})
		require.True(t, strings.HasPrefix(s.n.Runtime, o.runtimeVersion), "the Node runs %s, not %s", s.n.Runtime, o.runtimeVersion)
		return fmt.Sprintf("%s up %s after nspawn; kubelet start -> Node Ready %s", s.n.Runtime, secs(s.n.Booted), secs(s.n.Ready))
	})
	var pristine map[string]string
	s.rep.Step("snapshot the node root's trust directories before nodetrust", func() string {
		pristine = trustSnapshot(t, s.n.root)
		return fmt.Sprintf("%d paths", len(pristine))
	})
	s.rep.Step("kubectl apply test/node/overlay/install; rollout status waits for the first sync", s.rollout)
	s.rep.Step("a private-CA registry; the app Deployment sits in ErrImagePull with x509", func() string {
		return s.untrustedPull(pauseTar)
	})
	s.rep.Step("label+annotate the registry's kubernetes.io/tls Secret: pod Running (5 rounds)", s.secretRounds)
	s.rep.Step("rotation: the registry serves a new CA's certificate, the Secret follows", s.rotate)
	s.rep.Step("host-trust source: containerd restarted by the node's systemd under a Lease", s.hostTrust)
	if o.full {
		s.rep.Step("delete the agent pod: the new pod writes nothing and patches nothing", s.restartAgent)
		s.rep.Step("agent container memory (cgroup memory.usage_in_bytes): idle, 100 sources", s.memory)
	}
	s.rep.Step("kubectl apply test/node/overlay/uninstall: the node root is as it was", func() string {
		return s.uninstall(pristine)
	})
}

// images are what every node imports: the sandbox image and the agent's.
func (s *story) images(pauseTar string) []image {
	return []image{{pauseTar, pauseImage}, {s.agentImageTar(), agentImage}}
}

// rollout applies deploy/ through the overlay and times rollout status.
func (s *story) rollout() string {
	t := s.t
	applyOverlay(t, s.c, "install")
	start := time.Now()
	out := kubectl(t, s.c, "-n", agentNS, "rollout", "status", "ds/nodetrust", "--timeout=180s")
	took := time.Since(start)
	pod := s.agentPod()
	ann := s.nodeAnnotations()
	require.Equal(t, harness.StateReady, ann[harness.AnnState], "rollout done, so the first sync completed: %v", ann)
	// The condition is patched through nodes/status beside the kubelet's own.
	var cond *corev1.NodeCondition
	require.True(t, harness.Poll(10*time.Second, 100*time.Millisecond, func() bool {
		cond = s.trustCondition()
		return cond != nil && cond.Status == corev1.ConditionTrue
	}), "no %s=True on the Node: %+v", conditionType, cond)
	return fmt.Sprintf("rollout status %s; pod %s; Node %s=%s (%s); %s", secs(took), pod.Name, conditionType, cond.Status, cond.Reason, lastLine(out))
}

// agentPod is the DaemonSet's pod on the node.
func (s *story) agentPod() *corev1.Pod {
	s.t.Helper()
	pods, err := s.c.Admin.CoreV1().Pods(agentNS).List(s.ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nodetrust"})
	require.NoError(s.t, err)
	require.Len(s.t, pods.Items, 1)
	return &pods.Items[0]
}

func (s *story) nodeAnnotations() map[string]string {
	s.t.Helper()
	nd, err := s.c.Admin.CoreV1().Nodes().Get(s.ctx, nodeName, metav1.GetOptions{})
	require.NoError(s.t, err)
	out := map[string]string{}
	for k, v := range nd.Annotations {
		if strings.HasPrefix(k, "nodetrust.io/") {
			out[k] = v
		}
	}
	return out
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

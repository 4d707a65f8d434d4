package node

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

// startupTaint is the key examples/deploy/startup-taint removes.
const startupTaint = "nodetrust.io/agent-not-ready"

// overlayStory starts a story of its own (report suffix, a note on what it
// runs) with the control plane and images up, and returns the archive of
// the pause image its node loads.
func overlayStory(t *testing.T, suffix, note string) (*story, string) {
	s := &story{t: t, rep: newReport(t, suffix), ctx: context.Background(), imgs: t.TempDir()}
	s.rep.Note("%s", note)
	s.rep.Step("control plane, pause and agent images", s.controlPlaneImages)
	return s, filepath.Join(s.imgs, strings.NewReplacer("/", "_", ":", "_").Replace(pauseImage)+".tar")
}

// overlayWithSource applies test/node's overlay name and labels the
// registry's Secret, served from a registry holding the pause archive,
// before any node exists.
func (s *story) overlayWithSource(name, pauseTar string) {
	applyOverlay(s.t, s.c, name)
	s.startRegistry(pauseTar)
	s.updateSecret(regSecret, s.makeSource)
}

// TestNodeStartupTaint is a new node joining a cluster whose sources
// already exist (SPEC §4): the kubelet registers it with the startup taint,
// the app pod waits for it unscheduled, the agent's first complete sync
// removes it, and the pod then pulls on its first attempt.
func TestNodeStartupTaint(t *testing.T) {
	skipUnlessNode(t)
	s, pauseTar := overlayStory(t, "-startup-taint",
		fmt.Sprintf("node runtime: containerd 1.6; kubelet registerWithTaints %s:NoSchedule; examples/deploy/startup-taint", startupTaint))
	s.rep.Step("a cluster with nodetrust (overlay/startup-taint), the registry's Secret labelled, the app Deployment", func() string {
		s.overlayWithSource("startup-taint", pauseTar)
		s.createApp()
		return s.reg.ref("app:v1") + "; no node yet"
	})
	var joined, removed time.Time
	var filesFirst bool
	s.rep.Step("a node joins with the startup taint; the app pod is scheduled only after its removal", func() string {
		// From before the node exists, every 25 ms (watches are not
		// reliable on this API server, see anyVersion): the Node as first
		// seen, the moment the taint goes (and whether the CA was there
		// then), the moment the app pod is bound.
		o := nodeOptions{taints: []string{startupTaint}, images: s.images(pauseTar)}
		s.n = newNode(t, nodeName, o)
		var mu sync.Mutex
		var seen, registered bool
		var bound time.Time
		done := make(chan struct{})
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			for {
				select {
				case <-done:
					return
				case <-time.After(25 * time.Millisecond):
				}
				if nd, err := s.c.Admin.CoreV1().Nodes().Get(s.ctx, nodeName, metav1.GetOptions{}); err == nil {
					has := false
					for _, tn := range nd.Spec.Taints {
						has = has || tn.Key == startupTaint
					}
					mu.Lock()
					if !seen {
						seen, registered = true, has
					}
					if !has && removed.IsZero() {
						removed, filesFirst = time.Now(), s.hostsHave(s.ca.PEM)
					}
					mu.Unlock()
				}
				pods, err := s.c.Admin.CoreV1().Pods(workNS).List(s.ctx, metav1.ListOptions{LabelSelector: "app=" + appName})
				if err != nil {
					continue
				}
				for _, p := range pods.Items {
					mu.Lock()
					if p.Spec.NodeName != "" && bound.IsZero() {
						bound = time.Now()
					}
					mu.Unlock()
				}
			}
		}()
		defer func() { close(done); <-stopped }()
		s.n.start(t, s.c, o)
		joined = s.n.startedKubelet
		require.True(t, harness.Poll(2*time.Minute, 50*time.Millisecond, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return !bound.IsZero() && !removed.IsZero()
		}), "the taint was not removed or the app pod not bound (seen %v, registered %v, removed %v, bound %v, tainted now %v, pod %+v)",
			seen, registered, removed, bound, s.tainted(), s.appPod())
		mu.Lock()
		defer mu.Unlock()
		require.True(t, registered, "the kubelet registered the Node without %s", startupTaint)
		require.False(t, bound.Before(removed), "the app pod was bound %s before the taint's removal", removed.Sub(bound))
		return fmt.Sprintf("kubelet start -> Node Ready %s; registered tainted; taint removed %s, app pod bound %s after the kubelet's start",
			secs(s.n.Ready), secs(removed.Sub(joined)), secs(bound.Sub(joined)))
	})
	s.rep.Step("the agent's first sync put the CA in place before it removed the taint", func() string {
		require.True(t, filesFirst, "the taint was removed before the registry's CA was in %s", s.hostsDir())
		kubectl(t, s.c, "-n", agentNS, "rollout", "status", "ds/nodetrust", "--timeout=60s")
		cond := s.trustCondition()
		require.NotNil(t, cond)
		require.Equal(t, corev1.ConditionTrue, cond.Status)
		return fmt.Sprintf("the CA was in certs.d when the taint went; rollout complete; %s=%s (%s)", conditionType, cond.Status, cond.Reason)
	})
	s.rep.Step("the app pod pulls on its first attempt and runs", func() string {
		var p *corev1.Pod
		require.True(t, harness.Poll(60*time.Second, 50*time.Millisecond, func() bool {
			p = s.appPod()
			return p != nil && p.Status.Phase == corev1.PodRunning
		}), "the app pod does not run")
		running := time.Since(removed)
		s.requireOnePull(p)
		return fmt.Sprintf("Running %s after the taint's removal; 1 pull, no failure events (pull %s)", secs(running), s.pullTime(p.Name))
	})
	s.rep.Step("API server down, agent container killed: the kubelet restarts it and it says why it is not ready", s.apiDown)
}

// tainted reports whether the Node carries the startup taint.
func (s *story) tainted() bool {
	nd, err := s.c.Admin.CoreV1().Nodes().Get(s.ctx, nodeName, metav1.GetOptions{})
	require.NoError(s.t, err)
	for _, tn := range nd.Spec.Taints {
		if tn.Key == startupTaint {
			return true
		}
	}
	return false
}

// apiDown stops kube-apiserver and kills the agent's container from the
// node's containerd: the kubelet, on its own, starts it again, and the new
// agent logs (after 5 s) and answers on /readyz that it waits for the API
// server; with the API server back it is ready again.
func (s *story) apiDown() string {
	t := s.t
	id := strings.TrimPrefix(s.agentPod().Status.ContainerStatuses[0].ContainerID, "containerd://")
	_, err := s.c.StopAPIServer()
	require.NoError(t, err)
	t0 := time.Now()
	_, err = s.n.ctr("tasks", "kill", "--signal", "SIGKILL", id)
	require.NoError(t, err)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()
	var body, logLine string
	ok := harness.Poll(90*time.Second, 200*time.Millisecond, func() bool {
		if logLine == "" {
			logLine = s.agentLog("not ready: waiting for the API server")
		}
		resp, err := hc.Get("http://127.0.0.1:9713/readyz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && strings.Contains(string(b), "API server") {
			body = strings.TrimSpace(string(b))
		}
		return logLine != "" && body != ""
	})
	require.True(t, ok, "no 'waiting for the API server' in the restarted agent's log (%q) or /readyz (%q)", logLine, body)
	said := time.Since(t0)
	require.NoError(t, s.c.StartAPIServer())
	back := time.Now()
	require.True(t, harness.Poll(90*time.Second, 200*time.Millisecond, func() bool {
		resp, err := hc.Get("http://127.0.0.1:9713/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}), "the agent is not ready again after the API server's return")
	return fmt.Sprintf("said so %s after the kill: log %q; /readyz %q; Ready %s after kube-apiserver's /readyz",
		secs(said), clip(logLine, 110), clip(body, 90), secs(time.Since(back)))
}

// controlPlaneImages starts the control plane and builds the pause and
// agent images (a step of the tests whose node joins later).
func (s *story) controlPlaneImages() string {
	s.c = startControlPlane(s.t)
	pauseBin := filepath.Join(s.imgs, "pause")
	require.NoError(s.t, harness.GoBuild(".", "./pause", pauseBin))
	packImage(s.t, s.imgs, pauseBin, pauseImage)
	return filepath.Base(s.agentImageTar())
}

// requireOnePull asserts the app pod p pulled once, with no failure event
// and no restart.
func (s *story) requireOnePull(p *corev1.Pod) {
	t := s.t
	require.Zero(t, p.Status.ContainerStatuses[0].RestartCount)
	evs, err := s.c.Admin.CoreV1().Events(workNS).List(s.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
	require.NoError(t, err)
	pulls := 0
	for _, e := range evs.Items {
		require.NotContains(t, []string{"Failed", "BackOff", "ErrImagePull"}, e.Reason, "event %s: %s", e.Reason, e.Message)
		if e.Reason == "Pulling" {
			pulls += max(1, int(e.Count))
		}
	}
	require.Equal(t, 1, pulls, "pull attempts")
}

// agentLog is the first line from substr on in the agent pods' logs on
// the node, or "".
func (s *story) agentLog(substr string) string {
	logs, _ := filepath.Glob(s.n.hostPath("/var/log/pods/nodetrust-system_*/agent/*.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			if i := strings.Index(string(b), substr); i >= 0 {
				return firstLineOf(string(b[i:]))
			}
		}
	}
	return ""
}

func firstLineOf(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

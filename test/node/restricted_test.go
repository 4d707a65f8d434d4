package node

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

// restrictedCaps is CapEff (and CapPrm, CapBnd) of a process with only
// CAP_CHOWN (bit 0) and CAP_FOWNER (bit 3): what examples/deploy/restricted
// adds after dropping ALL.
const restrictedCaps = "0000000000000009"

// TestNodeRestricted runs examples/deploy/restricted (README "Without a
// privileged container") on the real kubelet: the registry's Secret is a
// source before the node exists, the agent's first sync (rollout status)
// has put its CA in the node's certs.d, the running agent has exactly the
// securityContext the overlay promises (read back from the pod and from the
// process's /proc status and mounts), and the app pod pulls on its first
// attempt.
func TestNodeRestricted(t *testing.T) {
	skipUnlessNode(t)
	s, pauseTar := overlayStory(t, "-restricted", "node runtime: containerd 1.6; examples/deploy/restricted")
	s.rep.Step("a cluster with nodetrust (overlay/restricted) and the registry's Secret labelled; no node yet", func() string {
		s.overlayWithSource("restricted", pauseTar)
		return s.reg.ref("app:v1")
	})
	s.rep.Step("a node joins; rollout status: the agent's first sync wrote the CA into certs.d", func() string {
		s.n = startNode(t, s.c, nodeName, nodeOptions{images: s.images(pauseTar)})
		return fmt.Sprintf("%s; kubelet start -> Node Ready %s; %s", s.n.Runtime, secs(s.n.Ready), s.restrictedRollout())
	})
	s.rep.Step("the agent runs restricted: pod spec, and the process's capabilities, seccomp, mounts", s.restrictedContext)
	s.rep.Step("the app pod pulls from the private-CA registry on its first attempt and runs", s.firstPull)
	s.rep.Step("a host-trust source: a warning, no bundle write, no runtime restart (no host / mounted)", s.restrictedHostTrust)
}

// restrictedRollout waits for the restricted DaemonSet's rollout; when it
// returns (readiness = first completed sync) the CA is already in certs.d
// and the Node is Ready with NodeTrustReady=True.
func (s *story) restrictedRollout() string {
	t := s.t
	start := time.Now()
	out := kubectl(t, s.c, "-n", agentNS, "rollout", "status", "ds/nodetrust", "--timeout=120s")
	took := time.Since(start)
	require.True(t, s.hostsHave(s.ca.PEM), "rollout done, but the registry's CA is not in %s", s.hostsDir())
	ann := s.nodeAnnotations()
	require.Equal(t, harness.StateReady, ann[harness.AnnState], "rollout done, so the first sync completed: %v", ann)
	require.Equal(t, "1", ann[harness.AnnSources], "%v", ann)
	var cond *corev1.NodeCondition
	require.True(t, harness.Poll(10*time.Second, 100*time.Millisecond, func() bool {
		cond = s.trustCondition()
		return cond != nil && cond.Status == corev1.ConditionTrue
	}), "no %s=True on the Node: %+v", conditionType, cond)
	// The kubelet's hostPaths were the node root's, never this machine's.
	_, err := os.Stat(filepath.Join("/etc/containerd/certs.d", filepath.Base(s.hostsDir())))
	require.True(t, os.IsNotExist(err), "this machine's /etc/containerd/certs.d has the registry: %v", err)
	return fmt.Sprintf("rollout status %s; CA in certs.d/%s; Node %s=%s (%s); %s",
		secs(took), filepath.Base(s.hostsDir()), conditionType, cond.Status, cond.Reason, lastLine(out))
}

// restrictedContext asserts what the overlay promises, first as the API
// server holds the pod, then as the node's kernel sees the agent process.
func (s *story) restrictedContext() string {
	t := s.t
	pod := s.agentPod()
	require.Len(t, pod.Spec.Containers, 1)
	sc := pod.Spec.Containers[0].SecurityContext
	require.NotNil(t, sc)
	require.False(t, *sc.Privileged, "privileged")
	require.False(t, *sc.AllowPrivilegeEscalation, "allowPrivilegeEscalation")
	require.True(t, *sc.ReadOnlyRootFilesystem, "readOnlyRootFilesystem")
	require.Equal(t, int64(0), *sc.RunAsUser)
	require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, sc.SeccompProfile.Type)
	require.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
	require.Equal(t, []corev1.Capability{"CHOWN", "FOWNER"}, sc.Capabilities.Add)
	var hostPaths []string
	for _, v := range pod.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths = append(hostPaths, v.HostPath.Path+" "+string(*v.HostPath.Type))
		}
	}
	require.Equal(t, []string{"/etc/containerd Directory", "/var/lib/nodetrust DirectoryOrCreate"}, hostPaths)
	require.Len(t, pod.Status.ContainerStatuses, 1)
	cs := pod.Status.ContainerStatuses[0]
	require.True(t, cs.Ready, "agent container not Ready")
	require.NotNil(t, cs.State.Running, "agent container not running: %+v", cs.State)
	require.Zero(t, cs.RestartCount, "the agent container restarted")

	pid := s.agentTaskPID(strings.TrimPrefix(cs.ContainerID, "containerd://"))
	status, err := s.n.inNode("cat", "/proc/"+pid+"/status")
	require.NoError(t, err, status)
	fields := procFields(status)
	for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
		require.Equal(t, restrictedCaps, fields[k], "%s of the agent (pid %s in the node): only CHOWN and FOWNER", k, pid)
	}
	require.Equal(t, "0000000000000000", fields["CapAmb"])
	require.Equal(t, "1", fields["NoNewPrivs"], "allowPrivilegeEscalation: false is no_new_privs")
	require.Equal(t, "2", fields["Seccomp"], "RuntimeDefault is a seccomp filter (mode 2)")
	require.Equal(t, "0", strings.Fields(fields["Uid"])[1], "effective uid")
	mounts, err := s.n.inNode("cat", "/proc/"+pid+"/mountinfo")
	require.NoError(t, err, mounts)
	host, rootRO := hostMounts(mounts)
	require.Equal(t, []string{"/host/etc/containerd", "/host/var/lib/nodetrust"}, host, "the agent's mounts below /host")
	require.True(t, rootRO, "the agent's / is not read-only")
	return fmt.Sprintf("pod %s: privileged=false, allowPrivilegeEscalation=false, caps drop ALL add CHOWN,FOWNER, RuntimeDefault, 0 restarts; "+
		"process %s: CapEff=CapBnd=%s NoNewPrivs=1 Seccomp=2 uid 0, / read-only, below /host only %s",
		pod.Name, pid, restrictedCaps, strings.Join(host, ", "))
}

// agentTaskPID is the agent container's PID in the node's PID namespace,
// from the node's containerd.
func (s *story) agentTaskPID(id string) string {
	out, err := s.n.ctr("tasks", "ls")
	require.NoError(s.t, err)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == id {
			return f[1]
		}
	}
	s.t.Fatalf("no task %s in the node's containerd:\n%s", id, out)
	return ""
}

// procFields parses /proc/PID/status ("Key:\tvalue").
func procFields(status string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// hostMounts lists the mount points at or below /host in a mountinfo, and
// whether / is mounted read-only.
func hostMounts(mountinfo string) (host []string, rootRO bool) {
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		if f[4] == "/host" || strings.HasPrefix(f[4], "/host/") {
			host = append(host, f[4])
		}
		if f[4] == "/" {
			rootRO = strings.HasPrefix(f[5], "ro")
		}
	}
	sort.Strings(host)
	return host, rootRO
}

// firstPull creates the app Deployment: with the CA already in certs.d its
// pod pulls once and runs, with no failure event.
func (s *story) firstPull() string {
	t := s.t
	start := time.Now()
	s.createApp()
	var p *corev1.Pod
	require.True(t, harness.Poll(60*time.Second, 50*time.Millisecond, func() bool {
		p = s.appPod()
		return p != nil && p.Status.Phase == corev1.PodRunning
	}), "the app pod does not run: %+v", p)
	running := time.Since(start)
	s.requireOnePull(p)
	cond := s.trustCondition()
	require.NotNil(t, cond)
	require.Equal(t, corev1.ConditionTrue, cond.Status, "%+v", cond)
	return fmt.Sprintf("%s Running %s after the Deployment's creation; 1 pull (%s), no failure events; %s still True",
		s.reg.ref("app:v1"), secs(running), s.pullTime(p.Name), conditionType)
}

// restrictedHostTrust adds a nodetrust.io/host-trust source: with no host /
// mounted there is no /etc/os-release under /host, so host trust is
// reported unsupported, as a warning (SPEC §1, "reported as unsupported for
// host trust, never half-written"): the Node stays Ready, the node's CA
// bundle is untouched, containerd is not restarted and the registry's files
// stay.
func (s *story) restrictedHostTrust() string {
	t := s.t
	bundle := s.n.hostPath("/etc/ssl/certs/ca-certificates.crt")
	before, err := os.ReadFile(bundle)
	require.NoError(t, err)
	pid0 := s.unitPID("containerd")
	sec := harness.Secret(agentNS, hostCA, harness.NewCA("node-test host-trust CA").PEM, "")
	sec.Annotations[annHostTrust] = "true"
	t0 := time.Now()
	_, err = s.c.Admin.CoreV1().Secrets(agentNS).Create(s.ctx, sec, metav1.CreateOptions{})
	require.NoError(t, err)
	var ann map[string]string
	require.True(t, harness.Poll(30*time.Second, 100*time.Millisecond, func() bool {
		ann = s.nodeAnnotations()
		return ann[harness.AnnSources] == "2"
	}), "the host-trust source is not applied: %v", ann)
	took := time.Since(t0)
	require.Equal(t, harness.StateReady, ann[harness.AnnState], "%v", ann)
	require.Equal(t, "1", ann["nodetrust.io/warnings"], "%v", ann)
	var warning string
	require.True(t, harness.Poll(10*time.Second, 100*time.Millisecond, func() bool {
		warning = s.agentLog("host trust is unsupported")
		return warning != ""
	}), "the agent did not log that host trust is unsupported")
	cond := s.trustCondition()
	require.NotNil(t, cond)
	require.Equal(t, corev1.ConditionTrue, cond.Status, "%+v", cond)
	after, err := os.ReadFile(bundle)
	require.NoError(t, err)
	require.Equal(t, before, after, "the node's CA bundle changed")
	require.Equal(t, pid0, s.unitPID("containerd"), "containerd was restarted")
	require.True(t, s.hostsHave(s.ca.PEM), "the registry's CA left %s", s.hostsDir())
	require.Zero(t, s.agentPod().Status.ContainerStatuses[0].RestartCount, "the agent container restarted")
	return fmt.Sprintf("applied %s after the Secret's creation: Ready, 2 sources, 1 warning %q; %s=True; bundle unchanged, containerd MainPID %s unchanged, certs.d kept",
		secs(took), clip(warning, 110), conditionType, pid0)
}

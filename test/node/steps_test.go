package node

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

const (
	conditionType = corev1.NodeConditionType("NodeTrustReady")
	annHostTrust  = "nodetrust.io/host-trust"
	x509Unknown   = "x509: certificate signed by unknown authority"
	hostCA        = "host-ca"
)

// anyVersion starts a watch at the watch cache's state (resourceVersion
// "0"). Without a resourceVersion the API server waits for its cache to reach
// etcd's current revision, which for a resource with no writes yet (Nodes
// before the first kubelet, Leases) Debian's etcd 3.4 never reports: the
// watch ends at once with 504 "Too large resource version".
var anyVersion = metav1.ListOptions{ResourceVersion: "0"}

// trustDirs are the node root's paths nodetrust may write (hostfiles/README.md)
// plus what the OS trust store refresh regenerates.
var trustDirs = []string{
	"etc/containerd", "etc/docker", "etc/containers",
	"usr/local/share/ca-certificates", "etc/ssl/certs", "etc/ca-certificates.conf",
	"var/lib/nodetrust",
}

// trustSnapshot maps every path below trustDirs to its type, mode and
// content hash (or link target): equal snapshots mean equal trust, whatever
// the files' times and inodes.
func trustSnapshot(t require.TestingT, root string) map[string]string {
	out := map[string]string{}
	for _, d := range trustDirs {
		tree, err := harness.Walk(filepath.Join(root, d))
		if !errors.Is(err, fs.ErrNotExist) {
			require.NoError(t, err)
		}
		for rel, e := range tree {
			p := filepath.Join(d, filepath.FromSlash(rel))
			switch {
			case e.Mode&fs.ModeSymlink != 0:
				out[p] = "link " + e.Content
			case e.Mode.IsDir():
				out[p] = fmt.Sprintf("dir %v", e.Mode)
			default:
				sum := sha256.Sum256([]byte(e.Content))
				out[p] = fmt.Sprintf("file %v %s", e.Mode, hex.EncodeToString(sum[:8]))
			}
		}
	}
	return out
}

// snapshotDiff lists the paths whose entries differ.
func snapshotDiff(a, b map[string]string) []string {
	var diffs []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			diffs = append(diffs, "removed "+k)
		} else if v != w {
			diffs = append(diffs, fmt.Sprintf("changed %s: %s -> %s", k, v, w))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, "added "+k)
		}
	}
	sort.Strings(diffs)
	return diffs
}

// untrustedPull starts the registry and creates the app Deployment, whose
// pull must fail with x509 before nodetrust has a source.
func (s *story) untrustedPull(pauseTar string) string {
	s.startRegistry(pauseTar)
	s.createApp()
	start := time.Now()
	msg := s.waitX509()
	return fmt.Sprintf("%s: x509 after %s: %q", s.reg.ref("app:v1"), secs(time.Since(start)), clip(msg, 150))
}

// startRegistry starts the registry with the first CA, pushes app:v1 (the
// pause binary, so the pod really runs) and creates the registry's own
// kubernetes.io/tls Secret, not yet a source.
func (s *story) startRegistry(pauseTar string) {
	t := s.t
	s.reg = newRegistry(t)
	s.ca = harness.NewCA("node-test registry CA 1")
	s.serving = s.ca.Serving(registryHost, "127.0.0.1")
	s.reg.serve(t, s.serving, s.ca)
	s.reg.push(t, pauseTar, "app:v1", s.ca)
	// The registry's own serving Secret, as cert-manager or
	// `kubectl create secret tls` would leave it: not yet a source.
	_, err := s.c.Admin.CoreV1().Secrets(agentNS).Create(s.ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: regSecret, Namespace: agentNS},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": s.serving.CertPEM, "tls.key": s.serving.KeyPEM, "ca.crt": s.ca.PEM},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// createApp creates the workload: a Deployment of one pod pulling app:v1.
func (s *story) createApp() {
	t := s.t
	_, err := s.c.Admin.CoreV1().Namespaces().Create(s.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: workNS}}, metav1.CreateOptions{})
	require.NoError(t, err)
	one, grace := int32(1), int64(1)
	labels := map[string]string{"app": appName}
	_, err = s.c.Admin.AppsV1().Deployments(workNS).Create(s.ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: appName, Namespace: workNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name:  appName,
						Image: s.reg.ref("app:v1"),
						// Every new pod pulls: each round is a real TLS handshake.
						ImagePullPolicy: corev1.PullAlways,
					}},
				},
			},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

func clip(s string, n int) string {
	if i := strings.Index(s, "x509"); i > n/2 && len(s) > n {
		s = "…" + s[i-n/2:]
	}
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// appPod is the app Deployment's one live pod, or nil.
func (s *story) appPod() *corev1.Pod {
	pods, err := s.c.Admin.CoreV1().Pods(workNS).List(s.ctx, metav1.ListOptions{LabelSelector: "app=" + appName})
	require.NoError(s.t, err)
	var live []*corev1.Pod
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			live = append(live, &pods.Items[i])
		}
	}
	if len(live) != 1 {
		return nil
	}
	return live[0]
}

// pullFailure is the pod's image pull error: its waiting message, or the
// latest Failed event's.
func (s *story) pullFailure(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
			if strings.Contains(w.Message, "x509") {
				return w.Reason + ": " + w.Message
			}
			evs, err := s.c.Admin.CoreV1().Events(workNS).List(s.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
			require.NoError(s.t, err)
			for _, e := range evs.Items {
				if e.Reason == "Failed" && strings.Contains(e.Message, "x509") {
					return w.Reason + ": " + e.Message
				}
			}
			return w.Reason + ": " + w.Message
		}
	}
	return ""
}

// waitX509 waits until the app pod's pull fails with an unknown authority.
func (s *story) waitX509() string {
	var last string
	ok := harness.Poll(90*time.Second, 200*time.Millisecond, func() bool {
		if p := s.appPod(); p != nil {
			last = s.pullFailure(p)
		}
		return strings.Contains(last, x509Unknown)
	})
	require.True(s.t, ok, "app pod did not fail with %q (last: %s)", x509Unknown, last)
	return last
}

// recreateApp deletes the app pod (the ReplicaSet makes a new one, with no
// back-off) and waits for the new one to run; it returns when that was seen
// and the image pull time the kubelet reported.
func (s *story) recreateApp() (running time.Time, pull time.Duration) {
	t := s.t
	old := s.appPod()
	require.NotNil(t, old)
	zero := int64(0)
	require.NoError(t, s.c.Admin.CoreV1().Pods(workNS).Delete(s.ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	var p *corev1.Pod
	var last string
	ok := harness.Poll(60*time.Second, 50*time.Millisecond, func() bool {
		p = s.appPod()
		if p == nil || p.Name == old.Name {
			return false
		}
		last = string(p.Status.Phase) + " " + s.pullFailure(p)
		return p.Status.Phase == corev1.PodRunning
	})
	require.True(t, ok, "new app pod not Running (last: %s)", last)
	running = time.Now()
	return running, s.pullTime(p.Name)
}

var pulledIn = regexp.MustCompile(`Successfully pulled image "[^"]*" in ([0-9.]+[mµn]?s)`)

// pullTime is the pull duration in the pod's Pulled event (0 if none yet).
func (s *story) pullTime(pod string) time.Duration {
	var d time.Duration
	harness.Poll(5*time.Second, 100*time.Millisecond, func() bool {
		evs, err := s.c.Admin.CoreV1().Events(workNS).List(s.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if m := pulledIn.FindStringSubmatch(e.Message); m != nil {
				d, _ = time.ParseDuration(m[1])
				return true
			}
		}
		return false
	})
	return d
}

// hostsDir is the registry's certs.d directory on the node.
func (s *story) hostsDir() string {
	return s.n.hostPath(filepath.Join("/etc/containerd/certs.d", fmt.Sprintf("%s:%d", registryHost, s.reg.Port)))
}

// hostsHave reports whether a file in the registry's certs.d directory
// holds pemData, and hosts.toml is there.
func (s *story) hostsHave(pemData []byte) bool {
	if _, err := os.Stat(filepath.Join(s.hostsDir(), "hosts.toml")); err != nil {
		return false
	}
	entries, _ := os.ReadDir(s.hostsDir())
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(s.hostsDir(), e.Name())); err == nil && bytes.Contains(b, bytes.TrimSpace(pemData)) {
			return true
		}
	}
	return false
}

// updateSecret applies mutate to a Secret in the agent's namespace.
func (s *story) updateSecret(name string, mutate func(*corev1.Secret)) {
	sec, err := s.c.Admin.CoreV1().Secrets(agentNS).Get(s.ctx, name, metav1.GetOptions{})
	require.NoError(s.t, err)
	mutate(sec)
	_, err = s.c.Admin.CoreV1().Secrets(agentNS).Update(s.ctx, sec, metav1.UpdateOptions{})
	require.NoError(s.t, err)
}

func (s *story) makeSource(sec *corev1.Secret) {
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Labels[harness.LabelCA] = "true"
	sec.Annotations[harness.AnnRegistries] = fmt.Sprintf("%s:%d", registryHost, s.reg.Port)
}

// secretRounds: five times, the registry's Secret becomes a source, the
// files reach the node and the recreated pod runs; between rounds it stops
// being one and the pull fails again.
func (s *story) secretRounds() string {
	t := s.t
	var toFiles, toRunning, pulls []time.Duration
	for i := 0; i < 5; i++ {
		if i > 0 {
			s.updateSecret(regSecret, func(sec *corev1.Secret) { delete(sec.Labels, harness.LabelCA) })
			require.True(t, harness.Poll(30*time.Second, 50*time.Millisecond, func() bool {
				_, err := os.Stat(s.hostsDir())
				return os.IsNotExist(err)
			}), "certs.d/%s stays after the label is removed", filepath.Base(s.hostsDir()))
			old := s.appPod()
			zero := int64(0)
			require.NoError(t, s.c.Admin.CoreV1().Pods(workNS).Delete(s.ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
			s.waitX509()
		}
		t0 := time.Now()
		s.updateSecret(regSecret, s.makeSource)
		require.True(t, harness.Poll(30*time.Second, 20*time.Millisecond, func() bool { return s.hostsHave(s.ca.PEM) }),
			"the registry's CA never reached %s", s.hostsDir())
		files := time.Since(t0)
		running, pull := s.recreateApp()
		toFiles, toRunning, pulls = append(toFiles, files), append(toRunning, running.Sub(t0)), append(pulls, pull)
		t.Logf("round %d: files %s, pod Running %s (pull %s)", i+1, secs(files), secs(running.Sub(t0)), pull)
	}
	// The kubelet's hostPath / was the node's root, never this machine's.
	_, err := os.Stat(filepath.Join("/etc/containerd/certs.d", filepath.Base(s.hostsDir())))
	require.True(t, os.IsNotExist(err), "this machine's /etc/containerd/certs.d has the registry: %v", err)
	f50, fmax := quantiles(toFiles)
	r50, rmax := quantiles(toRunning)
	p50, pmax := quantiles(pulls)
	ann := s.nodeAnnotations()
	require.Equal(t, harness.StateReady, ann[harness.AnnState], "%v", ann)
	s.rep.Note("Secret write -> files on the node: p50 %s, max %s (5 rounds)", secs(f50), secs(fmax))
	s.rep.Note("Secret write -> recreated pod Running: p50 %s, max %s; the kubelet's image pull itself: p50 %s, max %s", secs(r50), secs(rmax), secs(p50), secs(pmax))
	return fmt.Sprintf("files p50 %s max %s; Running p50 %s max %s (pull p50 %s); all: %v", secs(f50), secs(fmax), secs(r50), secs(rmax), secs(p50), roundAll(toRunning))
}

func roundAll(ds []time.Duration) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = secs(d)
	}
	return out
}

// rotate moves the registry to a second CA: pulls fail until the Secret
// carries it, then the recreated pod runs, and the old CA is gone.
func (s *story) rotate() string {
	t := s.t
	old := s.ca
	s.ca = harness.NewCA("node-test registry CA 2")
	s.serving = s.ca.Serving(registryHost, "127.0.0.1")
	s.reg.serve(t, s.serving, s.ca)
	zero := int64(0)
	require.NoError(t, s.c.Admin.CoreV1().Pods(workNS).Delete(s.ctx, s.appPod().Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	s.waitX509()
	t0 := time.Now()
	s.updateSecret(regSecret, func(sec *corev1.Secret) {
		sec.Data = map[string][]byte{"tls.crt": s.serving.CertPEM, "tls.key": s.serving.KeyPEM, "ca.crt": s.ca.PEM}
	})
	require.True(t, harness.Poll(30*time.Second, 20*time.Millisecond, func() bool { return s.hostsHave(s.ca.PEM) && !s.hostsHave(old.PEM) }),
		"the new CA did not replace the old one in %s", s.hostsDir())
	files := time.Since(t0)
	running, pull := s.recreateApp()
	return fmt.Sprintf("old pulls x509; Secret update -> new CA only in certs.d %s -> pod Running %s (pull %s)", secs(files), secs(running.Sub(t0)), pull)
}

// unitPID is a unit's MainPID inside the node.
func (s *story) unitPID(unit string) string {
	out, err := s.n.inNode("systemctl", "show", "-p", "MainPID", "--value", unit)
	require.NoError(s.t, err, out)
	return strings.TrimSpace(out)
}

// hostTrust adds a host-trust source: the root's update-ca-certificates
// puts it into the bundle and the node's systemd restarts containerd under
// a Lease, while the app pod keeps running.
func (s *story) hostTrust() string {
	t := s.t
	app := s.appPod()
	require.NotNil(t, app)
	require.Equal(t, corev1.PodRunning, app.Status.Phase)
	appCS := app.Status.ContainerStatuses[0]
	pid0 := s.unitPID("containerd")
	// Every Lease this node holds while the step runs.
	var mu sync.Mutex
	var held []string
	events := 0
	w, err := s.c.Admin.CoordinationV1().Leases(agentNS).Watch(s.ctx, anyVersion)
	require.NoError(t, err)
	defer w.Stop()
	go func() {
		for ev := range w.ResultChan() {
			l, ok := ev.Object.(*coordinationv1.Lease)
			mu.Lock()
			events++
			if ok && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == nodeName {
				held = append(held, l.Name)
			}
			mu.Unlock()
		}
	}()
	ca := harness.NewCA("node-test host-trust CA")
	sec := harness.Secret(agentNS, hostCA, ca.PEM, "")
	sec.Annotations[annHostTrust] = "true"
	t0 := time.Now()
	_, err = s.c.Admin.CoreV1().Secrets(agentNS).Create(s.ctx, sec, metav1.CreateOptions{})
	require.NoError(t, err)
	body := bytes.TrimSpace(bytes.TrimPrefix(bytes.TrimSuffix(bytes.TrimSpace(ca.PEM), []byte("-----END CERTIFICATE-----")), []byte("-----BEGIN CERTIFICATE-----")))
	bundle := s.n.hostPath("/etc/ssl/certs/ca-certificates.crt")
	var tBundle, tRestart time.Duration
	var pid1 string
	ok := harness.Poll(2*time.Minute, 100*time.Millisecond, func() bool {
		if tBundle == 0 {
			if b, err := os.ReadFile(bundle); err == nil && bytes.Contains(b, body) {
				tBundle = time.Since(t0)
			}
		}
		if tRestart == 0 {
			if p := s.unitPID("containerd"); p != pid0 && p != "0" {
				tRestart, pid1 = time.Since(t0), p
			}
		}
		return tBundle != 0 && tRestart != 0
	})
	require.True(t, ok, "bundle has the CA after %s, containerd restarted after %s", tBundle, tRestart)
	require.True(t, harness.Poll(60*time.Second, 200*time.Millisecond, func() bool {
		a := s.nodeAnnotations()
		return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "2"
	}), "node not Ready with 2 sources: %v", s.nodeAnnotations())
	tReady := time.Since(t0)
	if b, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		require.False(t, bytes.Contains(b, body), "the host-trust CA reached this machine's own bundle")
	}
	// The app pod was not touched: same container, no restart, and a
	// recreated pod still pulls through the restarted containerd.
	app2 := s.appPod()
	require.NotNil(t, app2)
	require.Equal(t, app.Name, app2.Name)
	require.Equal(t, corev1.PodRunning, app2.Status.Phase)
	cs := app2.Status.ContainerStatuses[0]
	require.Equal(t, appCS.ContainerID, cs.ContainerID)
	require.Zero(t, cs.RestartCount)
	require.True(t, cs.Ready)
	// The Lease this node took for the restart: seen held by the watch, or
	// (should the watch have missed the hold) taken and released within the
	// step.
	ls, err := s.c.Admin.CoordinationV1().Leases(agentNS).List(s.ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, l := range ls.Items {
		// A released slot has no holder and no acquireTime left; it was
		// taken (leaseTransitions) and renewed or released since the write.
		taken := l.Spec.LeaseTransitions != nil && *l.Spec.LeaseTransitions >= 1
		if r := l.Spec.RenewTime; taken && r != nil && !r.Time.Before(t0.Add(-time.Second)) {
			mu.Lock()
			held = append(held, l.Name)
			mu.Unlock()
		}
	}
	mu.Lock()
	leases := strings.Join(uniq(held), ",")
	seen := events
	mu.Unlock()
	require.NotEmpty(t, leases, "containerd restarted without this node holding a Lease (%d watch events; Leases: %v)", seen, ls.Items)
	s.rep.Note("host-trust: CA in the bundle %s, containerd restarted %s (MainPID %s -> %s), node Ready %s after the write", secs(tBundle), secs(tRestart), pid0, pid1, secs(tReady))
	return fmt.Sprintf("bundle %s, containerd MainPID %s->%s at %s under Lease %s; app pod %s kept running (restarts 0)", secs(tBundle), pid0, pid1, secs(tRestart), leases, app.Name)
}

func uniq(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// agentManaged is the time of each managedFields entry on the Node that is
// not the kubelet's or the control plane's: what the agent last patched.
func (s *story) agentManaged() map[string]string {
	nd, err := s.c.Admin.CoreV1().Nodes().Get(s.ctx, nodeName, metav1.GetOptions{})
	require.NoError(s.t, err)
	out := map[string]string{}
	for _, m := range nd.ManagedFields {
		if strings.HasPrefix(m.Manager, "kube") {
			continue
		}
		out[m.Manager+"/"+string(m.Operation)+"/"+m.Subresource] = m.Time.String()
	}
	return out
}

// fileMeta snapshots the trust directories with times and inodes.
func (s *story) fileMeta() map[string]harness.FileInfo {
	out := map[string]harness.FileInfo{}
	for _, d := range trustDirs {
		snap, err := harness.Snapshot(s.n.hostPath(d))
		if os.IsNotExist(err) {
			continue
		}
		require.NoError(s.t, err)
		for k, v := range snap {
			out[filepath.Join(d, k)] = v
		}
	}
	return out
}

// restartAgent deletes the agent pod; its replacement finds everything in
// place: no file touched, no Node patch, and the pod start -> Ready time.
func (s *story) restartAgent() string {
	t := s.t
	old := s.agentPod()
	files := s.fileMeta()
	ann := s.nodeAnnotations()
	managed := s.agentManaged()
	require.NotEmpty(t, managed, "no managedFields entry of the agent on the Node")
	pid := s.unitPID("containerd")
	t0 := time.Now()
	require.NoError(t, s.c.Admin.CoreV1().Pods(agentNS).Delete(s.ctx, old.Name, metav1.DeleteOptions{}))
	var seen, running, ready time.Duration
	var name string
	ok := harness.Poll(2*time.Minute, 50*time.Millisecond, func() bool {
		pods, err := s.c.Admin.CoreV1().Pods(agentNS).List(s.ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nodetrust"})
		if err != nil {
			return false
		}
		for _, p := range pods.Items {
			if p.Name == old.Name {
				continue
			}
			name = p.Name
			if seen == 0 {
				seen = time.Since(t0)
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.State.Running != nil && running == 0 {
					running = time.Since(t0)
				}
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					ready = time.Since(t0)
					return true
				}
			}
		}
		return false
	})
	require.True(t, ok, "no new agent pod became Ready")
	// A sync that wrote or patched would have done so by now; give a
	// straggler a moment anyway.
	time.Sleep(3 * time.Second)
	require.Empty(t, harness.DiffSnapshots(files, s.fileMeta()), "the new agent pod touched files")
	require.Equal(t, ann, s.nodeAnnotations(), "the new agent pod changed the Node's annotations")
	require.Equal(t, managed, s.agentManaged(), "the new agent pod patched the Node")
	require.Equal(t, pid, s.unitPID("containerd"), "the new agent pod restarted containerd")
	s.rep.Note("agent pod: created %s, container running %s, Ready %s after the old pod's deletion (old pod's graceful exit included)", secs(seen), secs(running), secs(ready))
	return fmt.Sprintf("%s -> %s: running %s, Ready %s after delete; 0 files changed, 0 Node patches, containerd not restarted", old.Name, name, secs(running), secs(ready))
}

// agentMemory reads the agent container's memory.usage_in_bytes (its
// cgroup below the kubelet's cgroupRoot) and what the kubelet's summary
// API reports for it (working set).
func (s *story) agentMemory() (usage, workingSet int64, summaryErr error) {
	t := s.t
	p := s.agentPod()
	require.NotEmpty(t, p.Status.ContainerStatuses)
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	file := memoryCgroupFile(id)
	require.NotEmpty(t, file, "no process in a memory cgroup of container %s", id)
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	usage, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	require.NoError(t, err)
	workingSet, summaryErr = s.summaryWorkingSet(p.Name)
	return usage, workingSet, summaryErr
}

// memoryCgroupFile is memory.usage_in_bytes of the memory cgroup (cgroup
// v1: the same path on this machine and in the node) of a process whose
// cgroup names container id, or "".
func memoryCgroupFile(id string) string {
	procs, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) == 3 && parts[1] == "memory" && strings.Contains(parts[2], id) {
				return filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.usage_in_bytes")
			}
		}
	}
	return ""
}

// summaryWorkingSet asks the kubelet's /stats/summary for the agent
// container's memory working set.
func (s *story) summaryWorkingSet(pod string) (int64, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // the kubelet's self-signed serving cert
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/stats/summary", s.n.kubeletPort))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", resp.Status, clip(string(body), 200))
	}
	var sum struct {
		Pods []struct {
			PodRef     struct{ Name string }
			Containers []struct {
				Name   string
				Memory struct {
					WorkingSetBytes *int64
				}
			}
		}
	}
	if err := json.Unmarshal(body, &sum); err != nil {
		return 0, err
	}
	for _, p := range sum.Pods {
		for _, c := range p.Containers {
			if p.PodRef.Name == pod && c.Name == "agent" && c.Memory.WorkingSetBytes != nil {
				return *c.Memory.WorkingSetBytes, nil
			}
		}
	}
	return 0, fmt.Errorf("no agent container of %s in the summary", pod)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func memLine(usage, ws int64, err error) string {
	if err != nil {
		return fmt.Sprintf("usage_in_bytes %s (kubelet summary: %v)", mib(usage), err)
	}
	return fmt.Sprintf("usage_in_bytes %s, kubelet working set %s", mib(usage), mib(ws))
}

// memory measures the agent idle, then with 100 more sources.
func (s *story) memory() string {
	t := s.t
	time.Sleep(5 * time.Second)
	u0, w0, e0 := s.agentMemory()
	const n = 100
	start := time.Now()
	for i := 0; i < n; i++ {
		ca := harness.NewCA(fmt.Sprintf("node-test bulk CA %d", i))
		sec := harness.Secret(agentNS, fmt.Sprintf("bulk-%03d", i), ca.PEM, fmt.Sprintf("r%03d.nodetrust.test:5000", i))
		_, err := s.c.Admin.CoreV1().Secrets(agentNS).Create(s.ctx, sec, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	created := time.Since(start)
	var files time.Duration
	want := strconv.Itoa(n + 2)
	require.True(t, harness.Poll(2*time.Minute, 100*time.Millisecond, func() bool {
		if files == 0 {
			dirs, _ := filepath.Glob(s.n.hostPath("/etc/containerd/certs.d/r*.nodetrust.test:5000/hosts.toml"))
			if len(dirs) == n {
				files = time.Since(start)
			}
		}
		a := s.nodeAnnotations()
		return files != 0 && a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == want
	}), "node not Ready with %s sources: %v", want, s.nodeAnnotations())
	applied := time.Since(start)
	if os.Getenv("NODETRUST_NODE_DEBUG") == "1" {
		logs, _ := filepath.Glob(s.n.hostPath("/var/log/pods/nodetrust-system_*/agent/*.log"))
		for _, l := range logs {
			t.Logf("---- %s ----\n%s", l, tail(l, 12000))
		}
	}
	time.Sleep(5 * time.Second)
	u1, w1, e1 := s.agentMemory()
	for i := 0; i < n; i++ {
		err := s.c.Admin.CoreV1().Secrets(agentNS).Delete(s.ctx, fmt.Sprintf("bulk-%03d", i), metav1.DeleteOptions{})
		if !apierrors.IsNotFound(err) {
			require.NoError(t, err)
		}
	}
	require.True(t, harness.Poll(2*time.Minute, 200*time.Millisecond, func() bool {
		a := s.nodeAnnotations()
		return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "2"
	}), "node not back to 2 sources: %v", s.nodeAnnotations())
	s.rep.Note("agent memory idle (2 sources): %s", memLine(u0, w0, e0))
	s.rep.Note("agent memory with %d sources (%d Secrets created in %s; all their files on the node %s, the Node annotated %s after the first): %s", n+2, n, secs(created), secs(files), secs(applied), memLine(u1, w1, e1))
	return fmt.Sprintf("idle %s; %d sources %s", mib(u0), n+2, mib(u1))
}

// uninstall applies the uninstall overlay and waits until the node's trust
// directories equal the snapshot taken before nodetrust was installed.
func (s *story) uninstall(pristine map[string]string) string {
	t := s.t
	t0 := time.Now()
	rendered := applyOverlay(t, s.c, "uninstall")
	kubectl(t, s.c, "-n", agentNS, "rollout", "status", "ds/nodetrust", "--timeout=180s")
	rolled := time.Since(t0)
	var diffs []string
	ok := harness.Poll(2*time.Minute, 250*time.Millisecond, func() bool {
		diffs = snapshotDiff(pristine, trustSnapshot(t, s.n.root))
		return len(diffs) == 0
	})
	require.True(t, ok, "the node root differs from before the install:\n%s", strings.Join(diffs, "\n"))
	clean := time.Since(t0)
	require.Empty(t, s.nodeAnnotations(), "the uninstall left nodetrust.io/ annotations")
	require.True(t, harness.Poll(30*time.Second, 200*time.Millisecond, func() bool { return s.trustCondition() == nil }),
		"the uninstall left the %s condition: %+v", conditionType, s.trustCondition())
	f := filepath.Join(t.TempDir(), "uninstall.yaml")
	require.NoError(t, os.WriteFile(f, []byte(rendered), 0o644))
	kubectl(t, s.c, "delete", "-f", f, "--wait=true", "--timeout=120s")
	return fmt.Sprintf("rollout status %s; trust directories equal to before the install %s after apply (%d paths); objects deleted", secs(rolled), secs(clean), len(pristine))
}

// trustCondition is the Node's NodeTrustReady condition, or nil.
func (s *story) trustCondition() *corev1.NodeCondition {
	nd, err := s.c.Admin.CoreV1().Nodes().Get(s.ctx, nodeName, metav1.GetOptions{})
	require.NoError(s.t, err)
	for i := range nd.Status.Conditions {
		if nd.Status.Conditions[i].Type == conditionType {
			return &nd.Status.Conditions[i]
		}
	}
	return nil
}

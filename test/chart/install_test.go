package chart

// helm install / upgrade / uninstall with Helm's Go library on a real
// kube-apiserver with kube-controller-manager, kube-scheduler and kwok (fake
// nodes that "run" pods), and `kubectl rollout status` after each step, as
// the README's Helm quick start does.

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
)

const startupTaint = "nodetrust.io/agent-not-ready"

func helmConfig(t *testing.T, c *harness.Cluster, releaseNS string) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	kc := c.AdminKubeconfig
	flags.KubeConfig, flags.Namespace = &kc, &releaseNS
	cfg := new(action.Configuration)
	require.NoError(t, cfg.Init(flags, releaseNS, "secret", func(string, ...any) {}))
	return cfg
}

// rollout runs `kubectl rollout status`. Meanwhile it deletes the agent's
// terminating pods at once, as a kubelet does when the agent exits on
// SIGTERM (kwok would take up to their 30 s grace period each).
func rollout(t *testing.T, c *harness.Cluster) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	defer close(done)
	go func() {
		zero := int64(0)
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
			}
			pods, err := c.Admin.CoreV1().Pods(AgentNamespace).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				continue
			}
			for _, p := range pods.Items {
				if p.DeletionTimestamp != nil {
					_ = c.Admin.CoreV1().Pods(AgentNamespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
				}
			}
		}
	}()
	out, err := c.Kubectl("-n", AgentNamespace, "rollout", "status", "daemonset/nodetrust", "--timeout=120s")
	if took := time.Since(start); err != nil || took > 20*time.Second {
		ev, _ := c.Kubectl("-n", AgentNamespace, "get", "events")
		t.Logf("rollout status took %v; events:\n%s", took, ev)
	}
	if err != nil {
		ds, _ := c.Kubectl("-n", AgentNamespace, "get", "daemonset,pods", "-o", "wide")
		t.Fatalf("rollout status: %v\n%s\n%s", err, out, ds)
	}
	return time.Since(start)
}

// agentPods returns the DaemonSet's pods that are not being deleted.
func agentPods(t *testing.T, cs *kubernetes.Clientset) []corev1.Pod {
	t.Helper()
	pods, err := cs.CoreV1().Pods(AgentNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=nodetrust,app.kubernetes.io/component=agent"})
	require.NoError(t, err)
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

func fakeNodes(t *testing.T, c *harness.Cluster, names ...string) {
	t.Helper()
	for _, name := range names {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
			Labels:      map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": name, "type": "kwok"},
		}}
		_, err := c.Admin.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{})
		require.NoError(t, err)
	}
}

// release drives one Helm release with Helm's action package.
type release struct {
	t   *testing.T
	c   *harness.Cluster
	cfg *action.Configuration
	ns  string
}

func (r release) install(ch *chart.Chart, vals map[string]any) {
	r.t.Helper()
	in := action.NewInstall(r.cfg)
	in.ReleaseName, in.Namespace = ReleaseName, r.ns
	start := time.Now()
	_, err := in.Run(ch, vals)
	require.NoError(r.t, err)
	r.t.Logf("helm install %s -n %s %v: %v, rollout status %v", ch.Metadata.Version, r.ns, vals,
		time.Since(start).Round(time.Millisecond), rollout(r.t, r.c).Round(time.Millisecond))
}

func (r release) upgrade(ch *chart.Chart, vals map[string]any, reuse bool) string {
	r.t.Helper()
	u := action.NewUpgrade(r.cfg)
	u.Namespace, u.ReuseValues = r.ns, reuse
	start := time.Now()
	rel, err := u.Run(ReleaseName, ch, vals)
	require.NoError(r.t, err)
	r.t.Logf("helm upgrade %s %v: %v, rollout status %v", ch.Metadata.Version, vals,
		time.Since(start).Round(time.Millisecond), rollout(r.t, r.c).Round(time.Millisecond))
	return rel.Info.Notes
}

// uninstall runs helm uninstall and checks that the agent's objects are gone.
func (r release) uninstall() {
	r.t.Helper()
	_, err := action.NewUninstall(r.cfg).Run(ReleaseName)
	require.NoError(r.t, err)
	ctx := context.Background()
	require.True(r.t, harness.Poll(30*time.Second, 250*time.Millisecond, func() bool {
		_, err := r.c.Admin.AppsV1().DaemonSets(AgentNamespace).Get(ctx, "nodetrust", metav1.GetOptions{})
		return apierrors.IsNotFound(err) && len(agentPods(r.t, r.c.Admin)) == 0
	}), "DaemonSet or its pods left")
	_, err = r.c.Admin.RbacV1().ClusterRoles().Get(ctx, "nodetrust", metav1.GetOptions{})
	require.True(r.t, apierrors.IsNotFound(err), "ClusterRole: %v", err)
}

func (r release) daemonSet() *appsv1.DaemonSet {
	r.t.Helper()
	ds, err := r.c.Admin.AppsV1().DaemonSets(AgentNamespace).Get(context.Background(), "nodetrust", metav1.GetOptions{})
	require.NoError(r.t, err)
	return ds
}

// TestHelmLifecycle, on one cluster with two kwok nodes:
//   - quick start: the chart's defaults install into an empty cluster (the
//     release in "default", the chart creates nodetrust-system) and roll
//     out; an upgrade with startupTaint rolls out; the chart's admission
//     policy type-checks and lets the agent remove its startup taint and no
//     other; uninstall=true rolls out agents with --uninstall (values
//     reused); helm uninstall removes every object, the namespace too;
//   - the previous chart version (from git), installed into an existing
//     namespace, upgrades to this one without touching the DaemonSet's
//     immutable selector.
func TestHelmLifecycle(t *testing.T) {
	harness.SkipUnlessReal(t)
	t.Parallel()
	cur := loadChart(t)
	c := harness.NewCluster(t)
	harness.StartControlPlane(t, c)
	fakeNodes(t, c, "kwok-a", "kwok-b")
	ctx := context.Background()

	t.Run("quick start", func(t *testing.T) {
		r := release{t: t, c: c, cfg: helmConfig(t, c, ReleaseNamespace), ns: ReleaseNamespace}
		// Replace both agents at once (the default, 10%, is one of two at a time).
		r.install(cur, map[string]any{"maxUnavailable": "100%"})
		require.Len(t, agentPods(t, c.Admin), 2)
		gen := r.daemonSet().Generation

		notes := r.upgrade(cur, map[string]any{"startupTaint": startupTaint}, true)
		require.Contains(t, notes, "rollout status daemonset/nodetrust")
		require.Greater(t, r.daemonSet().Generation, gen)
		pods := agentPods(t, c.Admin)
		require.Len(t, pods, 2)
		for _, p := range pods {
			require.Contains(t, p.Spec.Containers[0].Args, "--startup-taint="+startupTaint)
			require.True(t, p.Spec.HostNetwork)
		}

		t.Run("policy", func(t *testing.T) { chartPolicy(t, c) })

		notes = r.upgrade(cur, map[string]any{"uninstall": true}, true)
		require.Contains(t, notes, "UNINSTALL MODE")
		for _, p := range agentPods(t, c.Admin) {
			require.Contains(t, p.Spec.Containers[0].Args, "--uninstall")
			require.Contains(t, p.Spec.Containers[0].Args, "--startup-taint="+startupTaint, "values reused")
		}
		r.uninstall()
		_, err := c.Admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, policyName, metav1.GetOptions{})
		require.True(t, apierrors.IsNotFound(err), "policy: %v", err)
		require.True(t, harness.Poll(60*time.Second, 250*time.Millisecond, func() bool {
			_, err := c.Admin.CoreV1().Namespaces().Get(ctx, AgentNamespace, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		}), "namespace %s not deleted", AgentNamespace)
	})

	t.Run("upgrade from the previous version", func(t *testing.T) {
		prevDir, prevVersion := previousChart(t, cur.Metadata.Version)
		prev, err := Load(prevDir)
		require.NoError(t, err)
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: AgentNamespace, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}
		_, err = c.Admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		require.NoError(t, err)
		r := release{t: t, c: c, cfg: helmConfig(t, c, AgentNamespace), ns: AgentNamespace}
		r.install(prev, map[string]any{"createNamespace": false, "maxUnavailable": "100%"})
		old := r.daemonSet()
		r.upgrade(cur, map[string]any{"namespace": "", "createNamespace": false, "maxUnavailable": "100%"}, false)
		now := r.daemonSet()
		t.Logf("upgraded %s → %s", prevVersion, cur.Metadata.Version)
		require.Equal(t, old.Spec.Selector, now.Spec.Selector)
		require.Greater(t, now.Generation, old.Generation)
		require.Len(t, agentPods(t, c.Admin), 2)
		r.uninstall()
	})
}

// chartPolicy: the chart's policy (startupTaint set) type-checks, and the
// agent's pod-bound token may remove that taint from its Node, not another.
func chartPolicy(t *testing.T, c *harness.Cluster) {
	requireTypeChecked(t, c)
	ctx := context.Background()
	// Windows: the DaemonSet puts no pod there (nodeSelector), so rollouts stay complete.
	for _, name := range []string{"tainted-a", "tainted-b"} {
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "windows"}},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{
				{Key: "dedicated", Value: "infra", Effect: corev1.TaintEffectNoSchedule},
				{Key: startupTaint, Effect: corev1.TaintEffectNoSchedule},
			}},
		}
		_, err := c.Admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	agent := tokenClient(t, c, boundToken(t, c, AgentNamespace, "tainted-a"))
	waitPolicy(t, agent, "tainted-b")
	runPolicyCases(t, agent, map[string]policyCase{
		"another taint":                {untaint("tainted-a", "dedicated"), false},
		"another Node's startup taint": {untaint("tainted-b", startupTaint), false},
	})
	require.NoError(t, untaint("tainted-a", startupTaint)(agent), "own startup taint")
	n, err := c.Admin.CoreV1().Nodes().Get(ctx, "tainted-a", metav1.GetOptions{})
	require.NoError(t, err)
	require.False(t, slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == startupTaint }))
	require.True(t, slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == "dedicated" }))
}

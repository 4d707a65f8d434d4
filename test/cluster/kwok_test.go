package cluster

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDaemonSetOnFakeNodes: with kube-controller-manager, kube-scheduler and
// kwok, the DaemonSet of deploy/ gets exactly one (simulated) pod per Linux
// node, including a tainted one (tolerations), none on a Windows node
// (nodeSelector), and its pods are admitted (privileged, system-node-critical
// priority under the ResourceQuota, ServiceAccount).
func TestDaemonSetOnFakeNodes(t *testing.T) {
	t.Parallel()
	harness.SkipUnlessReal(t)
	c := harness.NewCluster(t)
	harness.StartControlPlane(t, c)

	type fake struct {
		name   string
		os     string
		taints []corev1.Taint
	}
	sfx := harness.RandHex(2)
	nodes := []fake{
		{name: "kwok-a-" + sfx, os: "linux"},
		{name: "kwok-b-" + sfx, os: "linux"},
		{name: "kwok-tainted-" + sfx, os: "linux", taints: []corev1.Taint{
			{Key: "dedicated", Value: "infra", Effect: corev1.TaintEffectNoSchedule},
			{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoExecute},
		}},
		{name: "kwok-win-" + sfx, os: "windows"},
	}
	for _, f := range nodes {
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        f.name,
				Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
				Labels: map[string]string{
					"kubernetes.io/os": f.os, "kubernetes.io/arch": "amd64",
					"kubernetes.io/hostname": f.name, "type": "kwok",
				},
			},
			Spec: corev1.NodeSpec{Taints: f.taints},
		}
		if _, err := c.Admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if !harness.Poll(60*time.Second, 200*time.Millisecond, func() bool {
		for _, f := range nodes {
			n, err := c.Admin.CoreV1().Nodes().Get(ctx, f.name, metav1.GetOptions{})
			if err != nil || !nodeReady(n) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("kwok did not make the fake nodes Ready within 60 s")
	}
	t.Logf("kwok: %d fake nodes Ready in %v", len(nodes), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if out, err := c.ApplyDeploy(); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("kubectl apply -k deploy/:\n%s", out)
	}
	var last string
	ok := harness.Poll(60*time.Second, 250*time.Millisecond, func() bool {
		ds, err := c.Admin.AppsV1().DaemonSets(harness.AgentNamespace).Get(ctx, "nodetrust", metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false
		}
		pods, err := c.Admin.CoreV1().Pods(harness.AgentNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			last = err.Error()
			return false
		}
		perNode := map[string][]string{}
		running := 0
		var desc []string
		for _, p := range pods.Items {
			perNode[p.Spec.NodeName] = append(perNode[p.Spec.NodeName], p.Name)
			if p.Status.Phase == corev1.PodRunning && podReady(&p) {
				running++
			}
			desc = append(desc, fmt.Sprintf("%s@%s:%s", p.Name, p.Spec.NodeName, p.Status.Phase))
		}
		sort.Strings(desc)
		st := ds.Status
		last = fmt.Sprintf("desired=%d current=%d ready=%d available=%d misscheduled=%d pods=[%s]",
			st.DesiredNumberScheduled, st.CurrentNumberScheduled, st.NumberReady, st.NumberAvailable,
			st.NumberMisscheduled, strings.Join(desc, " "))
		if st.DesiredNumberScheduled != 3 || st.NumberReady != 3 || running != 3 || len(pods.Items) != 3 {
			return false
		}
		for _, f := range nodes {
			want := 1
			if f.os != "linux" {
				want = 0
			}
			if len(perNode[f.name]) != want {
				return false
			}
		}
		return true
	})
	if !ok {
		evs, _ := c.Admin.CoreV1().Events(harness.AgentNamespace).List(ctx, metav1.ListOptions{})
		var eb strings.Builder
		for _, e := range evs.Items {
			fmt.Fprintf(&eb, "\n  %s %s/%s %s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
		t.Fatalf("DaemonSet not one Ready pod per Linux node within 60 s: %s\nevents in %s:%s", last, harness.AgentNamespace, eb.String())
	}
	// What an operator runs after an install or upgrade.
	if out, err := c.Kubectl("-n", harness.AgentNamespace, "rollout", "status", "daemonset/nodetrust", "--timeout=30s"); err != nil {
		t.Errorf("kubectl rollout status: %v\n%s", err, out)
	}
	t.Logf("LATENCY apply -k deploy/ → one Running+Ready pod on each of 3 Linux fake nodes (tainted one included, none on Windows): %v; %s",
		time.Since(start).Round(time.Millisecond), last)
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

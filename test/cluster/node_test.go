package cluster

import (
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNodeConditionAndStartupTaint: with deploy/'s RBAC (the agent's
// ServiceAccount token), the agent sets NodeTrustReady through nodes/status
// and removes its startup taint after the first complete sync, leaving other
// taints; a rejected source turns the condition False with the annotation's
// message; --uninstall removes the condition.
func TestNodeConditionAndStartupTaint(t *testing.T) {
	t.Parallel()
	c := newClusterWithDeploy(t)
	ns := c.Tenant(t, "cond")
	name := "cond-" + harness.RandHex(3)
	n := c.CreateNode(t, name, nil)
	n.Spec.Taints = []corev1.Taint{
		{Key: "nodetrust.io/agent-not-ready", Effect: corev1.TaintEffectNoSchedule},
		{Key: "example.com/other", Value: "x", Effect: corev1.TaintEffectNoSchedule},
	}
	if _, err := c.Admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ca := harness.NewCA("cond CA")
	createSecret(t, c, harness.Secret(ns, "reg", ca.PEM, "reg-cond.test"))

	e := &agentEnv{c: c, ns: ns, node: name, root: harness.NewHostRoot(t)}
	e.kcfg = c.AgentKubeconfig(t, t.TempDir())
	start := time.Now()
	e.agent = harness.StartAgent(t, harness.AgentOptions{Kubeconfig: e.kcfg, Node: name, Namespaces: ns, Root: e.root,
		Extra: []string{"--startup-taint", "nodetrust.io/agent-not-ready"}})
	e.agent.WaitReady(t, 30*time.Second)

	cond := func() (*corev1.Node, *corev1.NodeCondition) {
		got, err := c.Admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range got.Status.Conditions {
			if got.Status.Conditions[i].Type == "NodeTrustReady" {
				return got, &got.Status.Conditions[i]
			}
		}
		return got, nil
	}
	if !harness.Poll(applyTimeout, 50*time.Millisecond, func() bool {
		got, cd := cond()
		return cd != nil && cd.Status == corev1.ConditionTrue && len(got.Spec.Taints) == 1
	}) {
		got, cd := cond()
		t.Fatalf("want NodeTrustReady True and only the other taint; condition %+v, taints %+v\n%s", cd, got.Spec.Taints, e.agent.Log())
	}
	t.Logf("LATENCY agent start → startup taint removed, NodeTrustReady True: %v", time.Since(start).Round(time.Millisecond))
	got, cd := cond()
	if got.Spec.Taints[0].Key != "example.com/other" || cd.Reason != "Applied" {
		t.Errorf("taints %+v, condition %+v", got.Spec.Taints, cd)
	}
	if ok, why := harness.TrustedEverywhere(e.root, "reg-cond.test", ca.Leaf("reg-cond.test")); !ok {
		t.Errorf("the taint went before the CA was in place: %s", why)
	}

	bad := harness.Secret(ns, "bad", ca.PEM, "reg-cond.test/x")
	createSecret(t, c, bad)
	if !harness.Poll(applyTimeout, 50*time.Millisecond, func() bool {
		_, cd := cond()
		return cd != nil && cd.Status == corev1.ConditionFalse
	}) {
		t.Fatalf("NodeTrustReady did not turn False on a rejected source\n%s", e.agent.Log())
	}
	ann := waitNode(t, c, name, applyTimeout, "Degraded", func(an map[string]string) bool { return an[harness.AnnState] == harness.StateDegraded })
	if _, cd := cond(); cd.Reason != "Degraded" || cd.Message != ann[harness.AnnMessage] {
		t.Errorf("condition %+v, want reason Degraded and the annotation's message %q", cd, ann[harness.AnnMessage])
	}
	if err, _, _ := e.agent.Stop(); err != nil {
		t.Logf("agent stopped: %v", err)
	}

	u := harness.StartAgent(t, harness.AgentOptions{Kubeconfig: e.kcfg, Node: name, Namespaces: ns, Root: e.root, Extra: []string{"--uninstall"}})
	u.WaitReady(t, 30*time.Second)
	if !harness.Poll(applyTimeout, 50*time.Millisecond, func() bool { _, cd := cond(); return cd == nil }) {
		t.Errorf("--uninstall left the NodeTrustReady condition\n%s", u.Log())
	}
}

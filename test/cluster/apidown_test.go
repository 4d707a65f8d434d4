package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestAPIServerDown: with kube-apiserver stopped the agent keeps every file
// it applied and stays alive (/healthz 200); an agent started while the API
// server is down is alive but not ready (/readyz 503); after kube-apiserver
// restarts on the same etcd both converge — a Secret created then is applied
// by both and the new agent turns ready.
func TestAPIServerDown(t *testing.T) {
	t.Parallel()
	c := newClusterWithDeploy(t)
	ns := c.Tenant(t, "down")
	a := startAgentOn(t, c, ns, "down-a-"+harness.RandHex(3), nil)

	ca1 := harness.NewCA("down CA 1")
	createSecret(t, c, harness.Secret(ns, "before", ca1.PEM, "reg-before.test"))
	waitTrusted(t, a.root, "reg-before.test", ca1.Leaf("reg-before.test"), applyTimeout, "before the outage")

	// Prepare the second node while the API is up.
	nodeB := "down-b-" + harness.RandHex(3)
	c.CreateNode(t, nodeB, nil)
	kcfgB := c.AgentKubeconfig(t, t.TempDir())
	rootB := harness.NewHostRoot(t)

	waitNode(t, c, a.node, applyTimeout, "Ready with 1 source", func(an map[string]string) bool {
		return an[harness.AnnState] == harness.StateReady && an[harness.AnnSources] == "1"
	})
	before, err := harness.WaitSettled(a.root, time.Second, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	killed, err := c.StopAPIServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver stopped in %v (SIGKILL after 5 s of SIGTERM: %v)", time.Since(start).Round(time.Millisecond), killed)

	b := &agentEnv{c: c, ns: ns, node: nodeB, root: rootB, kcfg: kcfgB}
	b.agent = harness.StartAgent(t, harness.AgentOptions{Kubeconfig: kcfgB, Node: nodeB, Namespaces: ns, Root: rootB})

	// 6 s of outage: files kept, both alive, B not ready.
	var readyB []int
	for i := 0; i < 12; i++ {
		time.Sleep(500 * time.Millisecond)
		if ok, why := harness.TrustedEverywhere(a.root, "reg-before.test", ca1.Leaf("reg-before.test")); !ok {
			t.Fatalf("during the outage the applied CA went away: %s", why)
		}
		for _, x := range []*agentEnv{a, b} {
			if done, err := x.agent.Proc.Exited(); done {
				t.Fatalf("agent %s exited during the outage: %v", x.node, err)
			}
			if code, body, err := x.agent.Get("/healthz"); err != nil || code != 200 {
				t.Errorf("agent %s /healthz during the outage: %d %q %v, want 200", x.node, code, body, err)
			}
		}
		if code, _, err := b.agent.Get("/readyz"); err == nil {
			readyB = append(readyB, code)
		}
	}
	for _, code := range readyB {
		if code != 503 {
			t.Errorf("agent started during the outage: /readyz %v, want all 503 before its first sync", readyB)
			break
		}
	}
	if len(readyB) == 0 {
		t.Errorf("agent started during the outage never answered /readyz")
	}
	// It says why, in /readyz and loudly in its log, instead of nothing.
	if _, body, _ := b.agent.Get("/readyz"); !strings.Contains(body, "waiting for the API server for ") {
		t.Errorf("agent started during the outage: /readyz body %q, want it to say it waits for the API server", body)
	}
	if log := b.agent.Log(); !strings.Contains(log, `"level":"WARN","msg":"not ready: waiting for the API server for `) {
		t.Errorf("agent started during the outage logged no warning about the API server:\n%s", log)
	}
	if code, _, _ := a.agent.Get("/readyz"); true {
		t.Logf("running agent /readyz during the outage: %d", code)
	}
	after, _ := harness.Snapshot(a.root)
	if d := harness.DiffSnapshots(before, after); len(d) > 0 {
		t.Errorf("host root changed during the outage: %v", d)
	}

	start = time.Now()
	if err := c.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver restarted on the same etcd, /readyz in %v", time.Since(start).Round(time.Millisecond))

	ca2 := harness.NewCA("down CA 2")
	start = time.Now()
	createSecret(t, c, harness.Secret(ns, "after", ca2.PEM, "reg-after.test"))
	const recoverTimeout = 60 * time.Second
	for _, x := range []*agentEnv{a, b} {
		waitTrusted(t, x.root, "reg-after.test", ca2.Leaf("reg-after.test"), recoverTimeout, fmt.Sprintf("after the outage on %s", x.node))
		t.Logf("LATENCY API back → new Secret trusted on %s: %v", x.node, time.Since(start).Round(time.Millisecond))
	}
	b.agent.WaitReady(t, recoverTimeout)
	waitTrusted(t, b.root, "reg-before.test", ca1.Leaf("reg-before.test"), applyTimeout, "new agent")
	for _, x := range []*agentEnv{a, b} {
		waitNode(t, c, x.node, applyTimeout, "Ready with 2 sources", func(an map[string]string) bool {
			return an[harness.AnnState] == harness.StateReady && an[harness.AnnSources] == "2"
		})
	}
	// Errors during the outage are logged, as JSON like everything else
	// (client-go's own klog output included).
	for _, x := range []*agentEnv{a, b} {
		lines, nonJSON := x.agent.LogLines()
		if len(nonJSON) > 0 {
			t.Errorf("agent %s: %d of %d log lines are not JSON, e.g. %q", x.node, len(nonJSON), len(lines)+len(nonJSON), nonJSON[0])
		}
		levels := map[string]int{}
		for _, l := range lines {
			lv, _ := l["level"].(string)
			levels[lv]++
		}
		t.Logf("agent %s: %d log lines over the outage, by level %v", x.node, len(lines), levels)
	}
}

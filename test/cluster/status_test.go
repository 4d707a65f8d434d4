package cluster

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// runStatus runs `nodetrust status` with the admin kubeconfig.
func runStatus(t *testing.T, c *harness.Cluster, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(harness.Binary(t), append([]string{"status", "--kubeconfig", c.AdminKubeconfig}, args...)...)
	out, err := cmd.Output()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out) + string(exit.Stderr)
	}
	t.Fatalf("nodetrust status: %v", err)
	return 0, ""
}

// TestStatusCommand: `nodetrust status` reads the Nodes' annotations on the
// real API server. Two agents applying one Secret: exit 0, both Ready with
// the same applied hash. A Node without an agent: exit 1, "not reporting".
// `--wait` returns 0 as soon as that Node's agent has reported.
func TestStatusCommand(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	ns := c.Tenant(t, "sts")
	group := map[string]string{"nodetrust-test/status": harness.RandHex(4)}
	selector := "nodetrust-test/status=" + group["nodetrust-test/status"]
	a := startAgentOn(t, c, ns, "sts-a-"+harness.RandHex(3), group)
	b := startAgentOn(t, c, ns, "sts-b-"+harness.RandHex(3), group)
	ca := harness.NewCA("status CA")
	createSecret(t, c, harness.Secret(ns, "sts", ca.PEM, "reg-sts.test"))
	for _, e := range []*agentEnv{a, b} {
		waitNode(t, c, e.node, applyTimeout, "Ready with 1 source", func(ann map[string]string) bool {
			return ann[harness.AnnState] == harness.StateReady && ann[harness.AnnSources] == "1"
		})
	}

	code, out := runStatus(t, c, "--selector", selector)
	if code != 0 {
		t.Fatalf("status exit %d, want 0:\n%s", code, out)
	}
	for _, want := range []string{a.node + "  Ready", b.node + "  Ready", "2 nodes: 2 Ready, 0 Degraded, 0 Pending, 0 not reporting; the same applied state"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("nodetrust status:\n%s", out)

	lone := "sts-c-" + harness.RandHex(3)
	c.CreateNode(t, lone, group)
	code, out = runStatus(t, c, "--selector", selector, "--output", "json")
	if code != 1 {
		t.Fatalf("status with a node without agent: exit %d, want 1:\n%s", code, out)
	}
	var s struct {
		Nodes []struct {
			Name, State string
			Sources     int
		}
		Ready, Unreported int
		Applied           map[string]int
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --output json: %v\n%s", err, out)
	}
	if len(s.Nodes) != 3 || s.Ready != 2 || s.Unreported != 1 || len(s.Applied) != 1 {
		t.Errorf("status json: %+v", s)
	}

	done := make(chan struct{})
	var waitCode int
	var waitOut string
	start := time.Now()
	go func() {
		defer close(done)
		waitCode, waitOut = runStatus(t, c, "--selector", selector, "--wait", "60s")
	}()
	harness.StartAgent(t, harness.AgentOptions{Kubeconfig: c.AgentKubeconfig(t, t.TempDir()), Node: lone, Namespaces: ns, Root: harness.NewHostRoot(t)})
	<-done
	if waitCode != 0 || !strings.Contains(waitOut, "3 nodes: 3 Ready") {
		t.Fatalf("status --wait: exit %d after %v:\n%s", waitCode, time.Since(start), waitOut)
	}
	t.Logf("status --wait returned 0 after %v", time.Since(start).Round(time.Millisecond))
}

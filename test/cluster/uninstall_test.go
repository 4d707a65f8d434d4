package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestUninstall: `nodetrust agent --uninstall`, with the deploy/ RBAC,
// leaves the host root as it was before nodetrust and removes every
// nodetrust.io/ annotation from its Node; it then stays up and ready (the
// uninstall DaemonSet's rollout completes) and exits 0 on SIGTERM.
func TestUninstall(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	ns := c.Tenant(t, "uni")
	e := startAgentOn(t, c, ns, "uni-"+harness.RandHex(3), nil)
	if err := os.MkdirAll(filepath.Join(e.root, "var/lib"), 0o755); err != nil { // as on every host
		t.Fatal(err)
	}
	before, err := harness.Snapshot(e.root)
	if err != nil {
		t.Fatal(err)
	}
	ca := harness.NewCA("uninstall CA")
	createSecret(t, c, harness.Secret(ns, "uni", ca.PEM, "reg-uni.test:5000"))
	waitTrusted(t, e.root, "reg-uni.test:5000", ca.Leaf("reg-uni.test:5000"), applyTimeout, "installed")
	waitNode(t, c, e.node, applyTimeout, "Ready with 1 source", func(a map[string]string) bool {
		return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "1"
	})
	if err, _, killed := e.agent.Stop(); err != nil || killed {
		t.Fatalf("agent on SIGTERM: %v (killed %v)", err, killed)
	}

	opts := e.agent.Opts
	opts.Extra = append(opts.Extra, "--uninstall")
	u := harness.StartAgent(t, opts)
	took := u.WaitReady(t, 30*time.Second)
	t.Logf("uninstall agent ready after %v", took.Round(time.Millisecond))

	after, err := harness.Snapshot(e.root)
	if err != nil {
		t.Fatal(err)
	}
	// Directories nodetrust wrote into change their mtime; nothing else may.
	for _, snap := range []map[string]harness.FileInfo{before, after} {
		for p, fi := range snap {
			if fi.Mode.IsDir() {
				snap[p] = harness.FileInfo{Mode: fi.Mode, Ino: fi.Ino}
			}
		}
	}
	if d := harness.DiffSnapshots(before, after); len(d) > 0 {
		t.Errorf("after uninstall the host root differs from before nodetrust:\n  %s", strings.Join(d, "\n  "))
	}
	for k := range nodeAnnotations(t, c, e.node) {
		if strings.HasPrefix(k, "nodetrust.io/") {
			t.Errorf("annotation %s left on the Node", k)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if done, err := u.Proc.Exited(); done {
		t.Fatalf("uninstall agent exited (%v); it must stay ready until stopped", err)
	}
	if err, _, killed := u.Stop(); err != nil || killed {
		t.Errorf("uninstall agent on SIGTERM: %v (killed %v), want exit 0", err, killed)
	}
}

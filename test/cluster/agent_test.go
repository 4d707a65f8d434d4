package cluster

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Timeouts of the issue: a change reaches a node within a few seconds.
const (
	applyTimeout = 10 * time.Second
	driftTimeout = 2 * time.Second
)

// agentEnv is one Node with one agent on its own host root.
type agentEnv struct {
	c     *harness.Cluster
	ns    string
	node  string
	root  string
	kcfg  string
	agent *harness.Agent
}

// startAgentOn creates Node name with labels and starts an agent for it
// watching ns, using a TokenRequest token of the deploy/ ServiceAccount.
func startAgentOn(t *testing.T, c *harness.Cluster, ns, name string, labels map[string]string, extra ...string) *agentEnv {
	t.Helper()
	c.CreateNode(t, name, labels)
	e := &agentEnv{c: c, ns: ns, node: name, root: harness.NewHostRoot(t)}
	e.kcfg = c.AgentKubeconfig(t, t.TempDir())
	e.agent = harness.StartAgent(t, harness.AgentOptions{Kubeconfig: e.kcfg, Node: name, Namespaces: ns, Root: e.root, Extra: extra})
	took := e.agent.WaitReady(t, 30*time.Second)
	t.Logf("agent %s: /readyz 200 after %v", name, took.Round(time.Millisecond))
	return e
}

func (e *agentEnv) restart(t *testing.T) {
	t.Helper()
	err, took, killed := e.agent.Stop()
	if err != nil || killed {
		t.Errorf("agent %s on SIGTERM: exit %v after %v (killed=%v), want exit 0", e.node, err, took, killed)
	} else {
		t.Logf("agent %s exited 0 %v after SIGTERM", e.node, took.Round(time.Millisecond))
	}
	e.agent = harness.StartAgent(t, e.agent.Opts)
}

func ownedName(kind, ns, name string) string {
	return fmt.Sprintf("nodetrust_%s_%s_%s.crt", kind, ns, name)
}

func createSecret(t *testing.T, c *harness.Cluster, s *corev1.Secret) {
	t.Helper()
	if _, err := c.Admin.CoreV1().Secrets(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create secret %s/%s: %v", s.Namespace, s.Name, err)
	}
}

func patchSecret(t *testing.T, c *harness.Cluster, ns, name, patch string) {
	t.Helper()
	if _, err := c.Admin.CoreV1().Secrets(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch secret %s/%s with %s: %v", ns, name, patch, err)
	}
}

// TestSourceLifecycle walks one Secret (in nodetrust-system, with the
// deploy/ Role as is) through create, CA rotation, unlabel, relabel and
// delete, then a ConfigMap of the same name, and times each step.
func TestSourceLifecycle(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	ns := harness.AgentNamespace
	e := startAgentOn(t, c, ns, "life-"+harness.RandHex(3), map[string]string{"kubernetes.io/os": "linux"})

	ann := waitNode(t, c, e.node, applyTimeout, "state Ready with 0 sources", func(a map[string]string) bool {
		return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "0"
	})
	if ann[harness.AnnMessage] != "" {
		t.Errorf("Ready node has message %q, want empty", ann[harness.AnnMessage])
	}
	emptyHash := ann[harness.AnnApplied]

	regs := []string{"reg-life.test:5000", "reg-life2.test"}
	ca1 := harness.NewCA("life CA 1")
	l1a, l1b := ca1.Leaf(regs[0]), ca1.Leaf(regs[1])
	name := "harbor-ca-" + harness.RandHex(3)
	createSecret(t, c, harness.Secret(ns, name, ca1.PEM, regs[0]+", "+regs[1]))
	lat := waitTrusted(t, e.root, regs[0], l1a, applyTimeout, "create")
	waitTrusted(t, e.root, regs[1], l1b, applyTimeout, "create")
	t.Logf("LATENCY create → trusted by containerd, docker, containers: %v", lat.Round(time.Millisecond))

	// Layout of hostfiles/README.md.
	for _, d := range []string{harness.DockerCertsDir, harness.ContainersCertsDir, harness.ContainerdCertsDir} {
		p := filepath.Join(e.root, d, regs[0], ownedName("secret", ns, name))
		if _, err := os.Stat(p); err != nil {
			t.Errorf("expected file: %v", err)
		}
	}
	h, err := harness.ReadHostsToml(filepath.Join(e.root, harness.ContainerdCertsDir, regs[0], "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, has := h.Raw["server"]; has {
		t.Errorf("generated hosts.toml has a server key: %v", h.Raw)
	}
	if want := []string{ownedName("secret", ns, name)}; fmt.Sprint(h.CA) != fmt.Sprint(want) {
		t.Errorf("hosts.toml ca = %q, want %q", h.CA, want)
	}
	ann = waitNode(t, c, e.node, applyTimeout, "Ready with 1 source", func(a map[string]string) bool {
		return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "1"
	})
	if ann[harness.AnnApplied] == "" || ann[harness.AnnApplied] == emptyHash {
		t.Errorf("applied hash %q did not change from the empty state's %q", ann[harness.AnnApplied], emptyHash)
	}
	if _, err := time.Parse(time.RFC3339, ann[harness.AnnSyncedAt]); err != nil {
		t.Errorf("synced-at %q is not RFC 3339: %v", ann[harness.AnnSyncedAt], err)
	}
	hash1 := ann[harness.AnnApplied]

	// Rotation: new CA trusted, old one gone.
	ca2 := harness.NewCA("life CA 2")
	l2a := ca2.Leaf(regs[0])
	start := time.Now()
	patchSecret(t, c, ns, name, fmt.Sprintf(`{"data":{"ca.crt":%q}}`, b64(ca2.PEM)))
	waitTrusted(t, e.root, regs[0], l2a, applyTimeout, "rotation")
	waitUntrusted(t, e.root, regs[0], l1a, applyTimeout, "rotation")
	waitUntrusted(t, e.root, regs[1], l1b, applyTimeout, "rotation")
	t.Logf("LATENCY rotation → new trusted, old gone: %v", time.Since(start).Round(time.Millisecond))
	waitNode(t, c, e.node, applyTimeout, "applied hash changes on rotation", func(a map[string]string) bool {
		return a[harness.AnnApplied] != hash1 && a[harness.AnnState] == harness.StateReady
	})

	// Unlabel: cleaned up.
	start = time.Now()
	patchSecret(t, c, ns, name, `{"metadata":{"labels":{"nodetrust.io/ca":null}}}`)
	for _, r := range regs {
		waitGone(t, e.root, r, applyTimeout, "unlabel")
	}
	t.Logf("LATENCY unlabel → cleaned up: %v", time.Since(start).Round(time.Millisecond))
	ann = waitNode(t, c, e.node, applyTimeout, "0 sources after unlabel", func(a map[string]string) bool {
		return a[harness.AnnSources] == "0" && a[harness.AnnState] == harness.StateReady
	})
	if ann[harness.AnnApplied] != emptyHash {
		t.Errorf("applied hash after unlabel = %q, want the empty state's %q", ann[harness.AnnApplied], emptyHash)
	}

	// Relabel, then delete: cleaned up.
	patchSecret(t, c, ns, name, `{"metadata":{"labels":{"nodetrust.io/ca":"true"}}}`)
	waitTrusted(t, e.root, regs[0], l2a, applyTimeout, "relabel")
	start = time.Now()
	if err := c.Admin.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range regs {
		waitGone(t, e.root, r, applyTimeout, "delete")
	}
	t.Logf("LATENCY delete → cleaned up: %v", time.Since(start).Round(time.Millisecond))

	// A ConfigMap source (plain data) of the same name.
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{harness.LabelCA: "true"},
			Annotations: map[string]string{harness.AnnRegistries: regs[0]}},
		Data: map[string]string{"ca-bundle.crt": "# bundle comment\n" + string(ca1.PEM)},
	}
	if _, err := c.Admin.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lat = waitTrusted(t, e.root, regs[0], l1a, applyTimeout, "configmap")
	t.Logf("LATENCY configmap create → trusted: %v", lat.Round(time.Millisecond))
	if _, err := os.Stat(filepath.Join(e.root, harness.DockerCertsDir, regs[0], ownedName("configmap", ns, name))); err != nil {
		t.Errorf("configmap file: %v", err)
	}
	if err := c.Admin.CoreV1().ConfigMaps(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, e.root, regs[0], applyTimeout, "configmap delete")

	checkMetricsAndLogs(t, e.agent)
}

// checkMetricsAndLogs checks the /metrics names and the JSON sync log lines
// of the contract.
func checkMetricsAndLogs(t *testing.T, a *harness.Agent) {
	t.Helper()
	m, body, err := a.Metrics()
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	for _, name := range []string{"nodetrust_syncs_total", "nodetrust_sync_failures_total", "nodetrust_last_success_timestamp_seconds",
		"nodetrust_sources_applied", "nodetrust_files_written_total", "nodetrust_node_patches_total"} {
		if _, ok := harness.MetricSum(m, name); !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if v, _ := harness.MetricSum(m, "nodetrust_syncs_total"); v < 1 {
		t.Errorf("nodetrust_syncs_total = %v, want ≥ 1", v)
	}
	if v, _ := harness.MetricSum(m, "nodetrust_files_written_total"); v < 1 {
		t.Errorf("nodetrust_files_written_total = %v, want ≥ 1", v)
	}
	if v, _ := harness.MetricSum(m, "nodetrust_last_success_timestamp_seconds"); v < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("nodetrust_last_success_timestamp_seconds = %v, want a recent Unix time", v)
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}

	syncs := a.SyncLogs()
	if len(syncs) == 0 {
		t.Fatalf("no log line with msg \"sync\"")
	}
	for _, f := range []string{"written", "removed", "sources", "state"} {
		if _, ok := syncs[len(syncs)-1][f]; !ok {
			t.Errorf("sync log line has no field %q: %v", f, syncs[len(syncs)-1])
		}
	}
	if _, nonJSON := a.LogLines(); len(nonJSON) > 0 {
		t.Errorf("%d log lines are not JSON, first: %q", len(nonJSON), nonJSON[0])
	}
}

// caExpirySeries returns the nodetrust_ca_expiry_seconds series.
func caExpirySeries(m map[string]float64) []string {
	var out []string
	for k := range m {
		if strings.HasPrefix(k, "nodetrust_ca_expiry_seconds{") {
			out = append(out, k)
		}
	}
	return out
}

// TestRejectedSource: a private key in tls.crt and a registry "a/b" are
// rejected — one Warning Event each cluster-wide although two agents see
// them and resync every 2 s — the nodes turn Degraded naming the Secret,
// a good source still applies, nothing of the bad ones reaches the disk.
// Fixing them makes the nodes Ready again.
func TestRejectedSource(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	ns := c.Tenant(t, "rej")
	a := startAgentOn(t, c, ns, "rej-a-"+harness.RandHex(3), nil, "--resync", "2s")
	b := startAgentOn(t, c, ns, "rej-b-"+harness.RandHex(3), nil, "--resync", "2s")
	envs := []*agentEnv{a, b}

	good := harness.NewCA("good CA")
	createSecret(t, c, harness.Secret(ns, "good", good.PEM, "reg-good.test"))
	bad := harness.NewCA("bad CA")
	badKey := harness.Secret(ns, "bad-key", nil, "reg-bad.test")
	badKey.Type = corev1.SecretTypeTLS
	badKey.Data = map[string][]byte{"tls.crt": append(append([]byte{}, bad.PEM...), bad.KeyPEM...), "tls.key": bad.KeyPEM}
	createSecret(t, c, badKey)

	for _, e := range envs {
		waitTrusted(t, e.root, "reg-good.test", good.Leaf("reg-good.test"), applyTimeout, "good source beside a rejected one on "+e.node)
		ann := waitNode(t, c, e.node, applyTimeout, "Degraded", func(a map[string]string) bool { return a[harness.AnnState] == harness.StateDegraded })
		if !strings.Contains(ann[harness.AnnMessage], "bad-key") {
			t.Errorf("node %s Degraded message %q does not name the Secret bad-key", e.node, ann[harness.AnnMessage])
		}
		if ann[harness.AnnSources] != "1" {
			t.Errorf("node %s sources = %q, want 1 (the good one)", e.node, ann[harness.AnnSources])
		}
		if ok, why := harness.RegistryDirsGone(e.root, "reg-bad.test"); !ok {
			t.Errorf("rejected source wrote files on %s: %s", e.node, why)
		}
	}

	var evs []corev1.Event
	if !harness.Poll(applyTimeout, 100*time.Millisecond, func() bool {
		evs = rejectedEvents(t, c, ns, "Secret", "bad-key")
		return len(evs) > 0
	}) {
		t.Fatalf("no Event reason=Rejected for Secret %s/bad-key within %v", ns, applyTimeout)
	}
	// Several resyncs of both agents later there is still exactly one, and
	// neither Node was patched again (annotations change only with a value).
	rvs := map[string]string{}
	for _, e := range envs {
		n, err := c.Admin.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rvs[e.node] = n.ResourceVersion
		t.Logf("node %s: %s=%q", e.node, harness.AnnMessage, n.Annotations[harness.AnnMessage])
	}
	time.Sleep(5 * time.Second)
	for _, e := range envs {
		n, err := c.Admin.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.ResourceVersion != rvs[e.node] {
			t.Errorf("node %s patched during resyncs with nothing changed: resourceVersion %s → %s, annotations %v",
				e.node, rvs[e.node], n.ResourceVersion, n.Annotations)
		}
	}
	evs = rejectedEvents(t, c, ns, "Secret", "bad-key")
	if len(evs) != 1 {
		t.Errorf("want exactly 1 Rejected Event for bad-key after resyncs of 2 agents, got %d:%s", len(evs), describeEvents(evs))
	} else {
		ev := evs[0]
		if ev.Type != corev1.EventTypeWarning {
			t.Errorf("event type %q, want Warning", ev.Type)
		}
		if ev.InvolvedObject.Namespace != ns || ev.InvolvedObject.Name != "bad-key" || ev.InvolvedObject.Kind != "Secret" {
			t.Errorf("event involvedObject = %+v", ev.InvolvedObject)
		}
		if ev.Count > 1 {
			t.Errorf("event count = %d, want 1 (agents that find it existing do nothing)", ev.Count)
		}
		t.Logf("event: %s", describeEvents(evs))
	}

	// A registry entry with a slash.
	createSecret(t, c, harness.Secret(ns, "bad-reg", harness.NewCA("x").PEM, "a/b"))
	if !harness.Poll(applyTimeout, 100*time.Millisecond, func() bool { return len(rejectedEvents(t, c, ns, "Secret", "bad-reg")) > 0 }) {
		t.Errorf("no Rejected Event for Secret %s/bad-reg (registry \"a/b\") within %v", ns, applyTimeout)
	}
	time.Sleep(3 * time.Second)
	if evs := rejectedEvents(t, c, ns, "Secret", "bad-reg"); len(evs) != 1 {
		t.Errorf("want exactly 1 Rejected Event for bad-reg, got %d:%s", len(evs), describeEvents(evs))
	}
	for _, e := range envs {
		for _, d := range []string{"a", "a/b"} {
			for _, rd := range []string{harness.DockerCertsDir, harness.ContainersCertsDir, harness.ContainerdCertsDir} {
				if _, err := os.Lstat(filepath.Join(e.root, rd, d)); err == nil {
					t.Errorf("registry \"a/b\" made %s on %s", filepath.Join(rd, d), e.node)
				}
			}
		}
		assertNoPrivateKey(t, e.root)
	}

	// Fix both: Ready, empty message, the fixed one applies.
	if err := c.Admin.CoreV1().Secrets(ns).Delete(ctx, "bad-reg", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	patchSecret(t, c, ns, "bad-key", fmt.Sprintf(`{"data":{"tls.crt":%q}}`, b64(bad.PEM)))
	for _, e := range envs {
		waitTrusted(t, e.root, "reg-bad.test", bad.Leaf("reg-bad.test"), applyTimeout, "fixed source on "+e.node)
		ann := waitNode(t, c, e.node, applyTimeout, "Ready after the fix", func(a map[string]string) bool {
			return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "2"
		})
		if ann[harness.AnnMessage] != "" {
			t.Errorf("node %s Ready but message %q", e.node, ann[harness.AnnMessage])
		}
		assertNoPrivateKey(t, e.root)
	}
	// Both nodes agree on the applied hash.
	if ha, hb := nodeAnnotations(t, c, a.node)[harness.AnnApplied], nodeAnnotations(t, c, b.node)[harness.AnnApplied]; ha != hb {
		t.Errorf("applied hashes differ on nodes with the same sources: %q vs %q", ha, hb)
	}
}

func assertNoPrivateKey(t *testing.T, root string) {
	t.Helper()
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("a private key reached the host: %s", p)
		}
		return nil
	})
}

// TestNodeSelector: a source with nodetrust.io/node-selector applies only on
// matching nodes and follows Node label changes both ways.
func TestNodeSelector(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	ns := c.Tenant(t, "sel")
	blue := startAgentOn(t, c, ns, "sel-blue-"+harness.RandHex(3), map[string]string{"pool": "blue"})
	green := startAgentOn(t, c, ns, "sel-green-"+harness.RandHex(3), map[string]string{"pool": "green"})

	ca := harness.NewCA("selector CA")
	reg := "reg-sel.test"
	leaf := ca.Leaf(reg)
	s := harness.Secret(ns, "blue-only", ca.PEM, reg)
	s.Annotations[harness.AnnNodeSelector] = "pool in (blue)"
	createSecret(t, c, s)
	lat := waitTrusted(t, blue.root, reg, leaf, applyTimeout, "selector matches")
	t.Logf("LATENCY selector match → trusted: %v", lat.Round(time.Millisecond))
	waitNode(t, c, blue.node, applyTimeout, "1 source on blue", func(a map[string]string) bool { return a[harness.AnnSources] == "1" })
	waitNode(t, c, green.node, applyTimeout, "Ready with 0 sources on green", func(a map[string]string) bool {
		return a[harness.AnnSources] == "0" && a[harness.AnnState] == harness.StateReady
	})
	if ok, why := harness.RegistryDirsGone(green.root, reg); !ok {
		t.Errorf("non-matching node green got files: %s", why)
	}

	// Relabel: blue no longer matches, green now does.
	start := time.Now()
	patchNodeLabels(t, c, blue.node, `{"metadata":{"labels":{"pool":"red"}}}`)
	waitGone(t, blue.root, reg, applyTimeout, "node no longer matches")
	t.Logf("LATENCY node relabel → removed: %v", time.Since(start).Round(time.Millisecond))
	waitNode(t, c, blue.node, applyTimeout, "0 sources after relabel", func(a map[string]string) bool { return a[harness.AnnSources] == "0" })
	start = time.Now()
	patchNodeLabels(t, c, green.node, `{"metadata":{"labels":{"pool":"blue"}}}`)
	waitTrusted(t, green.root, reg, leaf, applyTimeout, "node now matches")
	t.Logf("LATENCY node relabel → applied: %v", time.Since(start).Round(time.Millisecond))
}

func patchNodeLabels(t *testing.T, c *harness.Cluster, node, patch string) {
	t.Helper()
	if _, err := c.Admin.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch node %s: %v", node, err)
	}
}

// TestRestartNoop: an agent restarted with nothing changed writes nothing
// (every mtime and inode under the host root unchanged) and does not patch
// its Node (resourceVersion unchanged, nodetrust_node_patches_total 0).
func TestRestartNoop(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	ns := c.Tenant(t, "rst")
	e := startAgentOn(t, c, ns, "rst-"+harness.RandHex(3), nil)
	ca := harness.NewCA("restart CA")
	createSecret(t, c, harness.Secret(ns, "rst", ca.PEM, "reg-rst.test,reg-rst2.test:443"))
	waitTrusted(t, e.root, "reg-rst.test", ca.Leaf("reg-rst.test"), applyTimeout, "before restart")
	waitTrusted(t, e.root, "reg-rst2.test:443", ca.Leaf("reg-rst2.test:443"), applyTimeout, "before restart")
	waitNode(t, c, e.node, applyTimeout, "Ready with 1 source", func(a map[string]string) bool {
		return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "1"
	})
	// Let the first agent settle (the ownership record is written last).
	before, err := harness.WaitSettled(e.root, time.Second, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	n0, err := c.Admin.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	e.restart(t)
	took := e.agent.WaitReady(t, 30*time.Second)
	t.Logf("restarted agent ready after %v", took.Round(time.Millisecond))
	time.Sleep(2 * time.Second) // room for a (wrong) patch or write to happen

	after, err := harness.Snapshot(e.root)
	if err != nil {
		t.Fatal(err)
	}
	if d := harness.DiffSnapshots(before, after); len(d) > 0 {
		t.Errorf("restart with nothing changed touched the host root:\n  %s", strings.Join(d, "\n  "))
	}
	n1, err := c.Admin.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n1.ResourceVersion != n0.ResourceVersion {
		t.Errorf("restart patched the Node: resourceVersion %s → %s; annotations before %v after %v",
			n0.ResourceVersion, n1.ResourceVersion, n0.Annotations, n1.Annotations)
	}
	m, body, err := e.agent.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nodetrust_node_patches_total", "nodetrust_files_written_total"} {
		if v, ok := harness.MetricSum(m, name); !ok || v != 0 {
			t.Errorf("restarted agent: %s = %v (present %v), want 0\n%s", name, v, ok, body)
		}
	}
	if v, _ := harness.MetricSum(m, "nodetrust_sources_applied"); v != 1 {
		t.Errorf("nodetrust_sources_applied = %v, want 1", v)
	}
	if s := caExpirySeries(m); len(s) != 1 || !strings.Contains(s[0], `source="`) || !strings.Contains(s[0], `sha256="`) {
		t.Errorf("nodetrust_ca_expiry_seconds series = %v, want one with source= and sha256= labels", s)
	} else if m[s[0]] <= 0 {
		t.Errorf("%s = %v, want > 0", s[0], m[s[0]])
	}
	syncs := e.agent.SyncLogs()
	if len(syncs) == 0 {
		t.Errorf("restarted agent logged no line with msg \"sync\" for its first sync (contract: one line per sync with written, removed, sources, state); its log:\n%s", e.agent.Log())
	}
	for _, l := range syncs {
		if w, _ := l["written"].(float64); w != 0 {
			t.Errorf("restarted agent sync wrote %v files: %v", w, l)
		}
		if r, _ := l["removed"].(float64); r != 0 {
			t.Errorf("restarted agent sync removed %v files: %v", r, l)
		}
	}
	if len(syncs) > 0 {
		t.Logf("first sync after restart: %v", syncs[0])
	}
}

// TestDrift: an owned file deleted or edited on the host is restored within
// 2 s; a foreign file in the same directory is left alone.
func TestDrift(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	ns := c.Tenant(t, "drift")
	e := startAgentOn(t, c, ns, "drift-"+harness.RandHex(3), nil)
	ca := harness.NewCA("drift CA")
	reg := "reg-drift.test:5000"
	leaf := ca.Leaf(reg)
	createSecret(t, c, harness.Secret(ns, "drift", ca.PEM, reg))
	waitTrusted(t, e.root, reg, leaf, applyTimeout, "initial")

	foreign := filepath.Join(e.root, harness.DockerCertsDir, reg, "operator.crt")
	foreignData := harness.NewCA("operator's own CA").PEM
	if err := os.WriteFile(foreign, foreignData, 0o644); err != nil {
		t.Fatal(err)
	}
	fi0, _ := os.Stat(foreign)
	owned := ownedName("secret", ns, "drift")

	cases := []struct {
		what string
		path string
		do   func(p string) error
	}{
		{"delete docker CA file", filepath.Join(e.root, harness.DockerCertsDir, reg, owned), os.Remove},
		{"edit containers CA file", filepath.Join(e.root, harness.ContainersCertsDir, reg, owned), func(p string) error {
			return os.WriteFile(p, []byte("tampered\n"), 0o644)
		}},
		{"delete containerd hosts.toml", filepath.Join(e.root, harness.ContainerdCertsDir, reg, "hosts.toml"), os.Remove},
		{"edit containerd CA file", filepath.Join(e.root, harness.ContainerdCertsDir, reg, owned), func(p string) error {
			return os.WriteFile(p, harness.NewCA("evil").PEM, 0o644)
		}},
	}
	for _, tc := range cases {
		want, err := os.ReadFile(tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		start := time.Now()
		if err := tc.do(tc.path); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if !harness.Poll(driftTimeout, 10*time.Millisecond, func() bool {
			got, _ = os.ReadFile(tc.path)
			return bytes.Equal(got, want)
		}) {
			t.Errorf("%s: not restored within %v (now %q)", tc.what, driftTimeout, truncate(got))
			continue
		}
		t.Logf("LATENCY drift %s → restored: %v", tc.what, time.Since(start).Round(time.Millisecond))
	}
	waitTrusted(t, e.root, reg, leaf, applyTimeout, "after drift")
	if _, err := harness.WaitSettled(e.root, 500*time.Millisecond, 10*time.Second); err != nil {
		t.Errorf("after drift repair: %v", err)
	}
	got, err := os.ReadFile(foreign)
	fi1, _ := os.Stat(foreign)
	if err != nil || !bytes.Equal(got, foreignData) || fi1 == nil || !fi1.ModTime().Equal(fi0.ModTime()) {
		t.Errorf("foreign file %s changed: err=%v", foreign, err)
	}
	// The foreign file keeps its directory alive after the source goes; the
	// directories nodetrust created for the other runtimes are removed.
	start := time.Now()
	if err := c.Admin.CoreV1().Secrets(ns).Delete(ctx, "drift", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntrusted(t, e.root, reg, leaf, applyTimeout, "delete")
	var left []string
	if !harness.Poll(applyTimeout, 20*time.Millisecond, func() bool {
		left = nil
		for _, p := range []string{
			filepath.Join(harness.DockerCertsDir, reg, owned),
			filepath.Join(harness.ContainersCertsDir, reg),
			filepath.Join(harness.ContainerdCertsDir, reg),
		} {
			if _, err := os.Lstat(filepath.Join(e.root, p)); err == nil {
				left = append(left, p)
			}
		}
		return len(left) == 0
	}) {
		t.Errorf("after the source's deletion still present: %v", left)
	}
	t.Logf("LATENCY delete → cleaned up (foreign file kept): %v", time.Since(start).Round(time.Millisecond))
	if got, err := os.ReadFile(foreign); err != nil || !bytes.Equal(got, foreignData) {
		t.Errorf("foreign file %s after the source's removal: err=%v", foreign, err)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func truncate(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "…"
	}
	return string(b)
}

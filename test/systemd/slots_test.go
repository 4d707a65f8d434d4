package systemd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

// Annotations the agent patches onto its Node (pkg/agent/cluster.go).
const (
	annState   = "nodetrust.io/state"
	annMessage = "nodetrust.io/message"
	annApplied = "nodetrust.io/applied"
)

// TestRestartSlotsAcrossNodes runs ten "nodes": ten Debian roots booted with
// systemd-nspawn, each with a containerd stand-in that takes 1 s to start,
// and ten real agents in cluster mode against a real kube-apiserver with
// deploy/ applied, one per Node object, each with --host-root at its
// container's root and --systemd-address at its container's bus. One Secret
// with host trust makes every node refresh its trust store and need a
// runtime restart at the same moment. The containers' journals (systemd's
// own "Stopping"/"Started" messages, µs timestamps on the shared clock) must
// show at most --max-concurrent-restarts restarts at any instant, and all ten
// must finish within a bound.
func TestRestartSlotsAcrossNodes(t *testing.T) {
	harness.SkipUnlessReal(t)
	harness.SkipUnlessRoot(t, "tar --same-owner, systemd-nspawn")
	for _, bin := range []string{"systemd-nspawn", "journalctl"} {
		_, err := exec.LookPath(bin)
		require.NoError(t, err, "%s missing: run test/scripts/deps.sh (systemd-container)", bin)
	}
	if _, err := os.Stat(harness.K8sBin("kube-apiserver")); err != nil {
		t.Skipf("kube-apiserver missing (%v): run test/scripts/k8s-build.sh first", err)
	}
	harness.Binary(t)

	const nodes = 10
	setup := time.Now()
	roots := debianRoots(t, nodes, 3)
	extracted := time.Since(setup)
	for _, root := range roots {
		writeFile(t, root, "etc/systemd/system/containerd.service", containerdUnitWithStartPre("1"))
		enable(t, root, "containerd.service")
		require.NoError(t, os.MkdirAll(filepath.Join(root, "etc/docker"), 0o755))
	}
	bootStart := time.Now()
	cs := make([]*container, nodes)
	for i, root := range roots {
		cs[i] = startContainer(t, root)
	}
	for _, c := range cs {
		c.waitBooted(t)
	}
	booted := time.Since(bootStart)
	for i, c := range cs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", c.Leader))
		require.NoError(t, err)
		for _, other := range cs[:i] {
			require.NotEqual(t, other.Cgroups, c.Cgroups)
		}
		t.Logf("node-%d: PID 1 = host PID %d, cgroups %s", i, c.Leader, strings.Join(strings.Fields(string(b)), " "))
	}

	cl := harness.NewCluster(t)
	_, err := cl.ApplyDeploy()
	require.NoError(t, err)
	kubeconfig := cl.AgentKubeconfig(t, t.TempDir())
	names := make([]string, nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node-%d", i)
		cl.CreateNode(t, names[i], nil)
	}
	t.Logf("setup: %d roots extracted in %s, booted in %s; cluster up, deploy/ applied; all in %s",
		nodes, extracted.Round(time.Millisecond), booted.Round(time.Millisecond), time.Since(setup).Round(time.Millisecond))

	cas := []*harness.CA{harness.NewCA("nodetrust slots test CA 1"), harness.NewCA("nodetrust slots test CA 2")}
	var summary []string
	for k, n := range []int{1, 3} {
		ok := t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			summary = append(summary, restartCycle(t, cl, kubeconfig, cs, names, n, cas[k], k == 0))
		})
		if !ok {
			break
		}
	}
	t.Logf("summary:\n%s", strings.Join(summary, "\n"))
}

// restartCycle starts one agent per node with --max-concurrent-restarts n,
// creates (first) or rotates the host-trust Secret and checks the restarts
// that follow. It returns a one-line summary.
func restartCycle(t *testing.T, cl *harness.Cluster, kubeconfig string, cs []*container, names []string, n int, ca *harness.CA, create bool) string {
	ctx := context.Background()
	const (
		unit     = "containerd.service"
		registry = "registry.slots.example:5000"
		// bound limits the restart cycle: the first restart's start to the
		// last one's end.
		bound = 120 * time.Second
		// overall limits the Secret write to the last restart: ten
		// `update-ca-certificates --fresh` at once take ~100 s on 2 CPUs.
		overall = 5 * time.Minute
	)
	agents := make([]*harness.Agent, len(cs))
	pids := make([]uint32, len(cs))
	for i, c := range cs {
		pids[i] = c.mainPID(t, unit)
		agents[i] = harness.StartAgent(t, harness.AgentOptions{
			Kubeconfig: kubeconfig,
			Node:       names[i],
			Root:       c.Root,
			Extra: []string{"--systemd-address", c.address, "--max-concurrent-restarts", fmt.Sprint(n),
				"--resync", "1h"},
		})
	}
	for _, a := range agents {
		a.WaitReady(t, 60*time.Second)
	}
	require.Eventually(t, func() bool {
		for _, name := range names {
			node, err := cl.Admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil || node.Annotations[annState] != "Ready" {
				return false
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "every Node Ready before the change")
	transitionsBefore := leaseTransitions(t, cl)

	// Observers: every container's containerd.service over D-Bus every
	// 50 ms, and the Nodes' annotations every 100 ms.
	obsCtx, stopObs := context.WithCancel(ctx)
	var wg sync.WaitGroup
	samples := &sampler{}
	wg.Add(2)
	go func() { defer wg.Done(); samples.run(obsCtx, cs, unit, 50*time.Millisecond) }()
	nodeObs := &nodeWatch{firstPending: map[string]time.Time{}, pendingMsg: map[string]string{}}
	go func() { defer wg.Done(); nodeObs.run(obsCtx, cl, 100*time.Millisecond) }()
	defer func() { stopObs(); wg.Wait() }()

	secret := harness.Secret(harness.AgentNamespace, "restart-ca", ca.PEM, registry)
	secret.Annotations["nodetrust.io/host-trust"] = "true"
	t0 := time.Now()
	if create {
		_, err := cl.Admin.CoreV1().Secrets(harness.AgentNamespace).Create(ctx, secret, metav1.CreateOptions{})
		require.NoError(t, err)
	} else {
		_, err := cl.Admin.CoreV1().Secrets(harness.AgentNamespace).Update(ctx, secret, metav1.UpdateOptions{})
		require.NoError(t, err)
	}

	// Every agent logs one "restarted" line.
	var restarted []map[string]any
	var missing []string
	done := harness.Poll(overall, 100*time.Millisecond, func() bool {
		restarted, missing = make([]map[string]any, len(agents)), nil
		for i, a := range agents {
			if l := logsWith(a, "restarted"); len(l) > 0 {
				restarted[i] = l[0]
			} else {
				missing = append(missing, names[i])
			}
		}
		return len(missing) == 0
	})
	allRestarted := time.Since(t0)
	if !done {
		t.Fatalf("not every node restarted within %s of the Secret write: missing %s", overall, strings.Join(missing, ", "))
	}
	var allReady time.Duration
	require.Eventually(t, func() bool {
		applied := ""
		for _, name := range names {
			node, err := cl.Admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil || node.Annotations[annState] != "Ready" || node.Annotations[annMessage] != "" {
				return false
			}
			if applied == "" {
				applied = node.Annotations[annApplied]
			} else if node.Annotations[annApplied] != applied {
				return false
			}
		}
		allReady = time.Since(t0)
		return true
	}, 30*time.Second, 100*time.Millisecond, "every Node Ready with the same applied hash after its restart")
	time.Sleep(500 * time.Millisecond) // a last sweep of the observers
	stopObs()
	wg.Wait()

	// The containers' journals: exactly one restart each, none failed.
	type row struct {
		node         string
		span         restartSpan
		firstPending time.Time
		logged       time.Time
		oldPID       uint32
		newPID       uint32
	}
	rows := make([]row, len(cs))
	var spans []restartSpan
	for i, c := range cs {
		var sp []restartSpan
		require.Eventually(t, func() bool {
			sp = restartSpans(c.unitEvents(t, unit), t0)
			return len(sp) == 1 && !sp[0].Done.IsZero()
		}, 10*time.Second, 100*time.Millisecond, "%s: one finished restart of %s in its journal", names[i], unit)
		require.False(t, sp[0].Failed, "%s: restart failed", names[i])
		r := restarted[i]
		require.Equal(t, unit, r["unit"])
		newPID := c.mainPID(t, unit)
		require.EqualValues(t, pids[i], num(r, "oldPID"), "%s: oldPID", names[i])
		require.EqualValues(t, newPID, num(r, "newPID"), "%s: newPID", names[i])
		require.NotEqual(t, pids[i], newPID)
		require.Len(t, logsWith(agents[i], "restarted"), 1, "%s restarted once", names[i])
		logged, err := time.Parse(time.RFC3339Nano, fmt.Sprint(r["time"]))
		require.NoError(t, err)
		m, _, err := agents[i].Metrics()
		require.NoError(t, err)
		v, _ := harness.MetricSum(m, "nodetrust_runtime_restarts_total")
		require.Equal(t, 1.0, v, "%s: nodetrust_runtime_restarts_total", names[i])
		require.True(t, bundleHolds(t, c.Root, derOf(ca.PEM)), "%s: CA in the trust bundle", names[i])
		rows[i] = row{node: names[i], span: sp[0], firstPending: nodeObs.firstPending[names[i]], logged: logged,
			oldPID: pids[i], newPID: newPID}
		spans = append(spans, sp[0])
	}

	// At no instant more than n restarts (journal), nor more than n units
	// not active in one D-Bus sweep.
	maxJournal, at := maxOverlap(spans)
	maxSampled := samples.maxNotActive()
	sort.Slice(rows, func(i, j int) bool { return rows[i].span.Stopping.Before(rows[j].span.Stopping) })
	var b strings.Builder
	rel := func(tm time.Time) string {
		if tm.IsZero() {
			return "-"
		}
		return fmt.Sprintf("%.3f", tm.Sub(t0).Seconds())
	}
	fmt.Fprintf(&b, "timeline, seconds after the Secret was written (N=%d):\n", n)
	fmt.Fprintf(&b, "  %-7s  %8s  %8s  %8s  %7s  %8s  %8s  %s\n", "node", "pending", "stopping", "started", "restart", "agentlog", "handover", "MainPID")
	var handovers []time.Duration
	for _, r := range rows {
		// handover: from the last restart that ended before this one began
		// (a slot freed) to this start; "-" when none had ended yet.
		ho := "-"
		var freed time.Time
		for _, o := range rows {
			if !o.span.Done.After(r.span.Stopping) && o.span.Done.After(freed) {
				freed = o.span.Done
			}
		}
		if !freed.IsZero() {
			handovers = append(handovers, r.span.Stopping.Sub(freed))
			ho = fmt.Sprintf("%.3f", r.span.Stopping.Sub(freed).Seconds())
		}
		fmt.Fprintf(&b, "  %-7s  %8s  %8s  %8s  %7.3f  %8s  %8s  %d→%d\n", r.node, rel(r.firstPending), rel(r.span.Stopping),
			rel(r.span.Done), r.span.Duration().Seconds(), rel(r.logged), ho, r.oldPID, r.newPID)
	}
	first, last := rows[0].span.Stopping, rows[len(rows)-1].span.Done
	for _, r := range rows {
		last = later(last, r.span.Done)
	}
	fmt.Fprintf(&b, "  restart cycle: first restart began %.3f s, last ended %.3f s after the write (%.3f s for %d nodes); every agent logged \"restarted\" by %.3f s, every Node Ready by %.3f s\n",
		first.Sub(t0).Seconds(), last.Sub(t0).Seconds(), last.Sub(first).Seconds(), len(rows), allRestarted.Seconds(), allReady.Seconds())
	fmt.Fprintf(&b, "  max concurrent restarts: %d in the journals (at +%.3f s), %d units not active in one D-Bus sweep (%d sweeps, %d errors; %s)\n",
		maxJournal, at.Sub(t0).Seconds(), maxSampled, samples.sweeps, samples.errs, strings.Join(samples.worstSet, ", "))
	if len(handovers) > 0 {
		fmt.Fprintf(&b, "  handover (a restart ended → the next began): min %.3f s, mean %.3f s, max %.3f s\n",
			slices.Min(handovers).Seconds(), mean(handovers).Seconds(), slices.Max(handovers).Seconds())
	}
	fmt.Fprintf(&b, "  Nodes seen Pending \"waiting for a restart slot\": %d of %d", len(nodeObs.firstPending), len(names))
	for _, name := range names {
		if msg, ok := nodeObs.pendingMsg[name]; ok {
			fmt.Fprintf(&b, "\n  e.g. %s: %q", name, msg)
			break
		}
	}
	t.Log(b.String())

	require.LessOrEqual(t, maxJournal, n, "more than %d containers restarting at once (journal)", n)
	require.LessOrEqual(t, maxSampled, n, "more than %d units not active in one sweep", n)
	require.Zero(t, samples.errs, "D-Bus reads that failed during the sweeps (last: %s)", samples.lastErr)
	require.LessOrEqual(t, last.Sub(first), bound, "restart cycle of %d nodes", len(rows))
	require.NotEmpty(t, nodeObs.firstPending, "no Node was ever seen Pending waiting for a restart slot")

	// Every turn went through a Lease; all slots are free again.
	leases, err := cl.Admin.CoordinationV1().Leases(harness.AgentNamespace).List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	var slotNames []string
	for _, l := range leases.Items {
		if strings.HasPrefix(l.Name, "nodetrust-restart-") {
			slotNames = append(slotNames, l.Name)
			holder := ""
			if l.Spec.HolderIdentity != nil {
				holder = *l.Spec.HolderIdentity
			}
			require.Empty(t, holder, "%s still held", l.Name)
		}
	}
	sort.Strings(slotNames)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("nodetrust-restart-%d", i))
	}
	// Slot i exists once i+1 nodes held slots at once (N only grows here).
	require.Contains(t, slotNames, "nodetrust-restart-0")
	require.Subset(t, want, slotNames)
	require.Equal(t, int32(len(cs)), leaseTransitions(t, cl)-transitionsBefore, "one Lease take per node")

	for i, a := range agents {
		err, _, killed := a.Stop()
		require.False(t, killed, "%s's agent had to be killed", names[i])
		require.NoError(t, err, "%s's agent exit", names[i])
	}
	return fmt.Sprintf("N=%d: restart cycle %.1f s for %d nodes (first restart began %.1f s after the Secret write: trust store refreshes), every Node Ready after %.1f s; max concurrent %d (journal) / %d (D-Bus sweeps); each restart %s–%s; handover mean %s",
		n, last.Sub(first).Seconds(), len(cs), first.Sub(t0).Seconds(), allReady.Seconds(), maxJournal, maxSampled,
		minSpan(spans).Round(time.Millisecond), maxSpan(spans).Round(time.Millisecond), mean(handovers).Round(time.Millisecond))
}

// debianRoots extracts n Debian roots, parallel at a time.
func debianRoots(t *testing.T, n, parallel int) []string {
	t.Helper()
	roots := make([]string, n)
	errs := make([]error, n)
	took := make([]time.Duration, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range roots {
		roots[i] = filepath.Join(t.TempDir(), "root")
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			start := time.Now()
			errs[i] = harness.ExtractDebianRoot(roots[i])
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	t.Logf("extracted %d Debian roots (%d at a time), each in %s–%s", n, parallel,
		slices.Min(took).Round(time.Millisecond), slices.Max(took).Round(time.Millisecond))
	return roots
}

// leaseTransitions sums leaseTransitions of the restart slot Leases.
func leaseTransitions(t *testing.T, cl *harness.Cluster) int32 {
	t.Helper()
	leases, err := cl.Admin.CoordinationV1().Leases(harness.AgentNamespace).List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	var sum int32
	for _, l := range leases.Items {
		if strings.HasPrefix(l.Name, "nodetrust-restart-") && l.Spec.LeaseTransitions != nil {
			sum += *l.Spec.LeaseTransitions
		}
	}
	return sum
}

// maxOverlap returns the largest number of spans that cover one instant,
// and the first instant where it is reached. A span ending exactly when
// another starts does not overlap it.
func maxOverlap(spans []restartSpan) (int, time.Time) {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, s := range spans {
		edges = append(edges, edge{s.Stopping, +1}, edge{s.Done, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if !edges[i].at.Equal(edges[j].at) {
			return edges[i].at.Before(edges[j].at)
		}
		return edges[i].delta < edges[j].delta // ends first
	})
	cur, best := 0, 0
	var at time.Time
	for _, e := range edges {
		cur += e.delta
		if cur > best {
			best, at = cur, e.at
		}
	}
	return best, at
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

func minSpan(spans []restartSpan) time.Duration {
	d := spans[0].Duration()
	for _, s := range spans[1:] {
		d = min(d, s.Duration())
	}
	return d
}

func maxSpan(spans []restartSpan) time.Duration {
	d := spans[0].Duration()
	for _, s := range spans[1:] {
		d = max(d, s.Duration())
	}
	return d
}

// sampler reads every container's unit state over D-Bus in sweeps.
type sampler struct {
	mu       sync.Mutex
	sweeps   int
	worst    int      // most units not active in one sweep
	worstSet []string // their states
	errs     int
	lastErr  string
}

func (s *sampler) run(ctx context.Context, cs []*container, unit string, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		notActive := 0
		var states []string
		for i, c := range cs {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			active, sub, err := c.unitState(qctx, unit)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return // stopped during the sweep: not a sample
				}
				s.mu.Lock()
				s.errs++
				s.lastErr = fmt.Sprintf("node-%d: %v", i, err)
				s.mu.Unlock()
				continue
			}
			if active != "active" {
				notActive++
				states = append(states, fmt.Sprintf("node-%d %s/%s", i, active, sub))
			}
		}
		s.mu.Lock()
		s.sweeps++
		if notActive > s.worst {
			s.worst, s.worstSet = notActive, states
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (s *sampler) maxNotActive() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.worst
}

// nodeWatch polls the Nodes' annotations and remembers when each was first
// Pending waiting for a restart slot.
type nodeWatch struct {
	mu           sync.Mutex
	firstPending map[string]time.Time
	pendingMsg   map[string]string
}

func (w *nodeWatch) run(ctx context.Context, cl *harness.Cluster, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		list, err := cl.Admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			now := time.Now()
			w.mu.Lock()
			for _, node := range list.Items {
				if isWaitingForSlot(&node) {
					if _, seen := w.firstPending[node.Name]; !seen {
						w.firstPending[node.Name] = now
						w.pendingMsg[node.Name] = node.Annotations[annMessage]
					}
				}
			}
			w.mu.Unlock()
		} else if !apierrors.IsNotFound(err) && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "list nodes: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func isWaitingForSlot(n *corev1.Node) bool {
	return n.Annotations[annState] == "Pending" && strings.Contains(n.Annotations[annMessage], "waiting for a restart slot")
}

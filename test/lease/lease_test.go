package lease

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/pkg/kube"
	"github.com/nodetrust/nodetrust/pkg/lease"
	"github.com/nodetrust/nodetrust/test/harness"
)

// ns is where the agent runs, and so where its restart slots live.
const ns = harness.AgentNamespace

// leaseRule is what the agent's ServiceAccount needs for pkg/lease, and what
// deploy/rbac.yaml must grant in nodetrust-system.
var leaseRule = rbacv1.PolicyRule{
	APIGroups: []string{"coordination.k8s.io"},
	Resources: []string{"leases"},
	Verbs:     []string{"get", "create", "update"},
}

var ctx = context.Background()

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		shared.c.Stop()
	}
	os.Exit(code)
}

// shared is one cluster for every test; each test deletes its Leases.
var shared struct {
	once       sync.Once
	c          *harness.Cluster
	kubeconfig string // with a token of the agent's ServiceAccount
	err        error
}

func setup(t *testing.T) *harness.Cluster {
	t.Helper()
	harness.SkipUnlessReal(t)
	shared.once.Do(func() { shared.err = start() })
	require.NoError(t, shared.err)
	t.Cleanup(func() {
		err := shared.c.Admin.CoordinationV1().Leases(ns).DeleteCollection(ctx, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=restart-slot"})
		require.NoError(t, err)
	})
	return shared.c
}

// start brings up etcd + kube-apiserver, applies deploy/, writes the agent's
// kubeconfig and grants it leases if deploy/ does not.
func start() error {
	begin := time.Now()
	c, err := harness.StartCluster()
	if err != nil {
		return err
	}
	shared.c = c
	if _, err := c.ApplyDeploy(); err != nil {
		return err
	}
	tok, err := c.ServiceAccountToken(ctx, ns, harness.AgentServiceAccount, time.Hour)
	if err != nil {
		return err
	}
	shared.kubeconfig = filepath.Join(c.Dir, "lease-agent.kubeconfig")
	if err := harness.WriteKubeconfig(shared.kubeconfig, c.Server, c.CAPEM, tok, ns); err != nil {
		return err
	}
	rbac, err := grantLeases(c)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "cluster: etcd ready %v, kube-apiserver /readyz %v, deploy/ applied, all in %v; %s\n",
		c.EtcdReady.Round(time.Millisecond), c.APIReady.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond), rbac)
	return nil
}

// grantLeases adds a Role with leaseRule, bound to the agent's ServiceAccount
// in nodetrust-system, unless deploy/ already lets it read Leases there.
func grantLeases(c *harness.Cluster) (string, error) {
	api, err := agentClient("rbac-probe")
	if err != nil {
		return "", err
	}
	_, err = api.GetLease(ctx, ns, lease.SlotName(0))
	if !apierrors.IsForbidden(err) {
		if err != nil && !apierrors.IsNotFound(err) {
			return "", err
		}
		return "deploy/ grants leases", nil
	}
	meta := metav1.ObjectMeta{Name: "nodetrust-leases-test", Namespace: ns}
	role := &rbacv1.Role{ObjectMeta: meta, Rules: []rbacv1.PolicyRule{leaseRule}}
	if _, err := c.Admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: meta,
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: meta.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: harness.AgentServiceAccount, Namespace: ns}},
	}
	if _, err := c.Admin.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	if !harness.Poll(10*time.Second, 50*time.Millisecond, func() bool {
		_, err = api.GetLease(ctx, ns, lease.SlotName(0))
		return apierrors.IsNotFound(err)
	}) {
		return "", fmt.Errorf("lease RBAC not in effect after 10 s: %v", err)
	}
	return "deploy/ grants no leases yet (Forbidden): added Role+RoleBinding nodetrust-leases-test", nil
}

// agentClient builds a client the way an agent does, from its kubeconfig
// with kube.Config and kube.New (client-go's default 5 QPS, burst 10). Its
// own dialer gives it its own connections, as a separate process has:
// client-go otherwise shares one transport among clients with equal TLS
// settings.
func agentClient(name string) (*kube.Client, error) {
	cfg, err := kube.Config(shared.kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	return kube.New(cfg, "nodetrust-lease-test/"+name)
}

func newSlots(t *testing.T, holder string, count int, d time.Duration) *lease.Slots {
	t.Helper()
	api, err := agentClient(holder)
	require.NoError(t, err)
	return &lease.Slots{API: api, Namespace: ns, Count: count, Holder: holder, Duration: d}
}

// jitter returns a duration in [lo, hi).
func jitter(lo, hi time.Duration) time.Duration { return lo + rand.N(hi-lo) }

// hold is one agent's turn: from TryAcquire's success to just before
// Release. The API server's view of the same turn starts earlier (when it
// stored the take) and ends later (when it stores the release), so if its
// turns on a slot never overlap, neither do these.
type hold struct {
	holder, slot       string
	acquired, released time.Time
	attempts           int // TryAcquire calls
}

// agent waits for a slot (TryAcquire every 50–100 ms), "restarts" for
// 200–300 ms while counting itself in inside, and releases the slot.
func agent(ctx context.Context, s *lease.Slots, inside, most *atomic.Int32) (hold, error) {
	h := hold{holder: s.Holder}
	for {
		slot, ok, err := s.TryAcquire(ctx)
		h.attempts++
		if err != nil {
			return h, err
		}
		if ok {
			h.slot, h.acquired = slot, time.Now()
			break
		}
		select {
		case <-ctx.Done():
			return h, fmt.Errorf("%s: no slot after %d attempts: %w", s.Holder, h.attempts, ctx.Err())
		case <-time.After(jitter(50*time.Millisecond, 100*time.Millisecond)):
		}
	}
	cur := inside.Add(1)
	for m := most.Load(); cur > m && !most.CompareAndSwap(m, cur); m = most.Load() {
	}
	time.Sleep(jitter(200*time.Millisecond, 300*time.Millisecond))
	inside.Add(-1)
	h.released = time.Now()
	return h, s.Release(ctx, h.slot)
}

// maxOverlap is the largest number of holds in progress at one instant.
func maxOverlap(holds []hold) int {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, h := range holds {
		edges = append(edges, edge{h.acquired, 1}, edge{h.released, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].delta < edges[j].delta // a release before an acquire at the same instant
		}
		return edges[i].at.Before(edges[j].at)
	})
	cur, most := 0, 0
	for _, e := range edges {
		cur += e.delta
		most = max(most, cur)
	}
	return most
}

// TestConcurrentRestarts: 10 agents, each with its own client and the
// agent's ServiceAccount token, need a restart; at most N restart at once.
func TestConcurrentRestarts(t *testing.T) {
	for _, tc := range []struct {
		n     int
		bound time.Duration // for all 10 to finish
	}{
		{n: 1, bound: 20 * time.Second},
		{n: 3, bound: 10 * time.Second},
	} {
		t.Run(fmt.Sprintf("N=%d", tc.n), func(t *testing.T) {
			c := setup(t)
			slots := make([]*lease.Slots, 10)
			for i := range slots {
				slots[i] = newSlots(t, fmt.Sprintf("node-%d", i), tc.n, 30*time.Second)
			}
			ctx, cancel := context.WithTimeout(ctx, tc.bound)
			defer cancel()
			var inside, most atomic.Int32
			holds := make([]hold, len(slots))
			errs := make([]error, len(slots))
			var wg sync.WaitGroup
			start := time.Now()
			for i, s := range slots {
				wg.Go(func() { holds[i], errs[i] = agent(ctx, s, &inside, &most) })
			}
			wg.Wait()
			total := time.Since(start)
			for _, err := range errs {
				require.NoError(t, err)
			}

			overlap := maxOverlap(holds)
			t.Log(summary(tc.n, start, total, holds, overlap, int(most.Load())))
			require.LessOrEqual(t, overlap, tc.n, "timeline: more than N restarting at once")
			require.LessOrEqual(t, int(most.Load()), tc.n, "atomic counter: more than N restarting at once")
			require.Equal(t, tc.n, overlap, "all N slots used at some moment")
			requireSlotsExclusive(t, holds)

			// Every turn went through a Lease: N Leases, all free now, whose
			// holder changed 10 times in all.
			list, err := c.Admin.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=restart-slot"})
			require.NoError(t, err)
			var names []string
			var transitions int32
			for _, l := range list.Items {
				names = append(names, l.Name)
				require.Nil(t, l.Spec.HolderIdentity, "%s released", l.Name)
				transitions += *l.Spec.LeaseTransitions
			}
			var want []string
			for i := range tc.n {
				want = append(want, lease.SlotName(i))
			}
			require.ElementsMatch(t, want, names)
			require.Equal(t, int32(len(holds)), transitions)
		})
	}
}

// requireSlotsExclusive checks that the turns on each slot follow each other.
func requireSlotsExclusive(t *testing.T, holds []hold) {
	t.Helper()
	bySlot := map[string][]hold{}
	for _, h := range holds {
		bySlot[h.slot] = append(bySlot[h.slot], h)
	}
	for slot, hs := range bySlot {
		slices.SortFunc(hs, func(a, b hold) int { return a.acquired.Compare(b.acquired) })
		for i := 1; i < len(hs); i++ {
			require.False(t, hs[i].acquired.Before(hs[i-1].released),
				"%s: %s took it at %v, before %s released it at %v", slot, hs[i].holder, hs[i].acquired, hs[i-1].holder, hs[i-1].released)
		}
	}
}

// summary describes a run: totals, then one line per turn.
func summary(n int, start time.Time, total time.Duration, holds []hold, overlap, atomicMax int) string {
	hs := slices.Clone(holds)
	slices.SortFunc(hs, func(a, b hold) int { return a.acquired.Compare(b.acquired) })
	var b strings.Builder
	attempts, maxWait := 0, time.Duration(0)
	var gaps []time.Duration // from a release to the next take of the same slot
	last := map[string]time.Time{}
	for _, h := range hs {
		attempts += h.attempts
		maxWait = max(maxWait, h.acquired.Sub(start))
		if r, ok := last[h.slot]; ok {
			gaps = append(gaps, h.acquired.Sub(r))
		}
		last[h.slot] = h.released
	}
	slices.Sort(gaps)
	var gapSum time.Duration
	for _, g := range gaps {
		gapSum += g
	}
	fmt.Fprintf(&b, "N=%d: %d agents done in %v; max concurrent %d (timeline) / %d (atomic); %d TryAcquire calls; longest wait %v",
		n, len(hs), total.Round(time.Millisecond), overlap, atomicMax, attempts, maxWait.Round(time.Millisecond))
	if len(gaps) > 0 {
		fmt.Fprintf(&b, "; slot hand-over (release → next take) mean %v, max %v",
			(gapSum / time.Duration(len(gaps))).Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond))
	}
	for _, h := range hs {
		fmt.Fprintf(&b, "\n  %7.3fs – %7.3fs  %-7s %s  (%d attempts)", h.acquired.Sub(start).Seconds(), h.released.Sub(start).Seconds(),
			h.holder, h.slot, h.attempts)
	}
	return b.String()
}

// TestCrashedHolderExpires: a holder that dies without releasing (Duration
// 2 s) blocks the slot until its Lease expires, then another node takes it;
// the crashed node, back, neither frees nor retakes it; a holder that
// restarts gets its own slot back.
func TestCrashedHolderExpires(t *testing.T) {
	c := setup(t)
	crashed := newSlots(t, "node-crashed", 1, 2*time.Second)
	slot, ok, err := crashed.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	taken := time.Now()
	// node-crashed dies here: no renewal, no Release.

	b := newSlots(t, "node-b", 1, 2*time.Second)
	attempts := 0
	var got string
	for time.Since(taken) < 10*time.Second {
		got, ok, err = b.TryAcquire(ctx)
		attempts++
		require.NoError(t, err)
		if ok {
			break
		}
		time.Sleep(jitter(50*time.Millisecond, 100*time.Millisecond))
	}
	took := time.Since(taken)
	t.Logf("node-b took %s over from the crashed holder %v after it was taken (lease duration 2 s), %d attempts",
		got, took.Round(time.Millisecond), attempts)
	require.True(t, ok, "no takeover within 10 s")
	require.Equal(t, slot, got)
	require.GreaterOrEqual(t, took, 1900*time.Millisecond, "taken over before the lease expired")
	require.Less(t, took, 4*time.Second)
	l, err := c.Admin.CoordinationV1().Leases(ns).Get(ctx, slot, metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, "node-b", *l.Spec.HolderIdentity)
	require.Equal(t, int32(2), *l.Spec.LeaseTransitions)

	// node-crashed comes back: its Release is a no-op, and it must wait.
	require.NoError(t, crashed.Release(ctx, slot))
	_, ok, err = crashed.TryAcquire(ctx)
	require.NoError(t, err)
	require.False(t, ok)
	l2, err := c.Admin.CoordinationV1().Leases(ns).Get(ctx, slot, metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, l.ResourceVersion, l2.ResourceVersion, "node-crashed wrote nothing")

	// node-b's agent restarts: the new process finds and renews its slot.
	b2 := newSlots(t, "node-b", 1, 2*time.Second)
	held, err := b2.Held(ctx)
	require.NoError(t, err)
	require.Equal(t, slot, held)
	again, ok, err := b2.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, slot, again)
	require.NoError(t, b2.Release(ctx, slot))
	l3, err := c.Admin.CoordinationV1().Leases(ns).Get(ctx, slot, metav1.GetOptions{})
	require.NoError(t, err)
	require.Nil(t, l3.Spec.HolderIdentity)
	require.Equal(t, int32(2), *l3.Spec.LeaseTransitions, "a renewal is no transition")
}

// TestAPISemantics: the real API server answers kube.Client's Lease calls
// with the errors pkg/lease (and leasetest) rely on, and the agent's
// ServiceAccount has exactly leaseRule.
func TestAPISemantics(t *testing.T) {
	c := setup(t)
	api, err := agentClient("semantics")
	require.NoError(t, err)
	name := lease.SlotName(0)

	_, err = api.GetLease(ctx, ns, name)
	require.True(t, apierrors.IsNotFound(err), "get missing: %v", err)
	holder := "node-a"
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/component": "restart-slot"}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder},
	}
	created, err := api.CreateLease(ctx, l)
	require.NoError(t, err)
	require.NotEmpty(t, created.ResourceVersion)
	_, err = api.CreateLease(ctx, l)
	require.True(t, apierrors.IsAlreadyExists(err), "create existing: %v", err)

	change := created.DeepCopy()
	change.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	updated, err := api.UpdateLease(ctx, change)
	require.NoError(t, err)
	require.NotEqual(t, created.ResourceVersion, updated.ResourceVersion)
	_, err = api.UpdateLease(ctx, change)
	require.True(t, apierrors.IsConflict(err), "update with a stale resourceVersion: %v", err)
	noRV := updated.DeepCopy()
	noRV.ResourceVersion = ""
	noRV.Spec.RenewTime = &metav1.MicroTime{Time: time.Now().Add(time.Second)}
	_, err = api.UpdateLease(ctx, noRV)
	t.Logf("update without resourceVersion: %v", err)
	require.True(t, apierrors.IsInvalid(err), "update without resourceVersion: %v", err)
	// A Lease deleted after it was read: the UID it was read with makes the
	// update a Conflict. (Without a UID the API server would create it:
	// Leases allow create-on-update. pkg/lease always sends what it read.)
	missing := updated.DeepCopy()
	missing.Name = "nodetrust-restart-99"
	_, err = api.UpdateLease(ctx, missing)
	require.True(t, apierrors.IsConflict(err), "update of a missing Lease with a UID: %v", err)
	missing.UID = ""
	_, err = api.UpdateLease(ctx, missing)
	require.NoError(t, err, "update of a missing Lease without UID creates it")

	// Nothing beyond leaseRule: no list, delete or patch, no other namespace.
	cs := c.AgentClient(t)
	_, err = cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
	require.True(t, apierrors.IsForbidden(err), "list: %v", err)
	err = cs.CoordinationV1().Leases(ns).Delete(ctx, name, metav1.DeleteOptions{})
	require.True(t, apierrors.IsForbidden(err), "delete: %v", err)
	_, err = api.GetLease(ctx, "kube-system", "kube-scheduler")
	require.True(t, apierrors.IsForbidden(err), "get in kube-system: %v", err)
}

package lease_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/pkg/lease"
	"github.com/nodetrust/nodetrust/pkg/lease/leasetest"
)

const ns = "nodetrust-system"

var (
	ctx = context.Background()
	t0  = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
)

// clock is a settable time source for Slots.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func to[T any](v T) *T { return &v }

func deref(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

func slots(api lease.API, clk *clock, count int, holder string) *lease.Slots {
	return &lease.Slots{API: api, Namespace: ns, Count: count, Holder: holder, Duration: 2 * time.Minute, Now: clk.Now}
}

// held is a Lease held by holder, renewed at renew for secs seconds.
func held(i int, holder string, renew time.Time, secs int32) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: lease.SlotName(i), Namespace: ns},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       to(holder),
			LeaseDurationSeconds: to(secs),
			AcquireTime:          to(metav1.NewMicroTime(renew)),
			RenewTime:            to(metav1.NewMicroTime(renew)),
			LeaseTransitions:     to(int32(3)),
		},
	}
}

func free(i int) *coordinationv1.Lease {
	l := held(i, "", t0.Add(-time.Hour), 120)
	l.Spec.HolderIdentity, l.Spec.AcquireTime = nil, nil
	return l
}

func holderOf(t *testing.T, f *leasetest.API, i int) string {
	t.Helper()
	l := f.Lease(ns, lease.SlotName(i))
	require.NotNil(t, l, "lease %d", i)
	return deref(l.Spec.HolderIdentity, "")
}

func TestTryAcquire(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing []*coordinationv1.Lease
		count    int
		wantSlot string // "" means ok=false
		// transitions is the wanted leaseTransitions of the slot taken.
		transitions int32
	}{
		{name: "no lease yet: slot 0 created", count: 1, wantSlot: "nodetrust-restart-0", transitions: 1},
		{name: "free slot taken", count: 1, existing: []*coordinationv1.Lease{free(0)}, wantSlot: "nodetrust-restart-0", transitions: 4},
		{name: "held by another node: wait", count: 1, existing: []*coordinationv1.Lease{held(0, "node-b", t0.Add(-time.Minute), 120)}},
		{name: "held, expiring right now: wait", count: 1, existing: []*coordinationv1.Lease{held(0, "node-b", t0.Add(-2*time.Minute), 120)}},
		{
			name: "expired lease taken over", count: 1, existing: []*coordinationv1.Lease{held(0, "node-b", t0.Add(-2*time.Minute-time.Millisecond), 120)},
			wantSlot: "nodetrust-restart-0", transitions: 4,
		},
		{
			name: "held without renewTime counts as expired", count: 1,
			existing: []*coordinationv1.Lease{func() *coordinationv1.Lease {
				l := held(0, "node-b", t0, 120)
				l.Spec.RenewTime = nil
				return l
			}()},
			wantSlot: "nodetrust-restart-0", transitions: 4,
		},
		{
			name: "N=2, slot 0 held: slot 1 created", count: 2, existing: []*coordinationv1.Lease{held(0, "node-b", t0, 120)},
			wantSlot: "nodetrust-restart-1", transitions: 1,
		},
		{
			name: "N=2, both held: wait", count: 2,
			existing: []*coordinationv1.Lease{held(0, "node-b", t0, 120), held(1, "node-c", t0, 120)},
		},
		{
			name: "own slot renewed after a restart, although a lower one is free", count: 2,
			existing: []*coordinationv1.Lease{free(0), held(1, "node-a", t0.Add(-time.Minute), 120)},
			wantSlot: "nodetrust-restart-1", transitions: 3,
		},
		{
			name: "own expired slot renewed", count: 1, existing: []*coordinationv1.Lease{held(0, "node-a", t0.Add(-time.Hour), 120)},
			wantSlot: "nodetrust-restart-0", transitions: 3,
		},
		{
			name: "a slot beyond Count is not used", count: 1,
			existing: []*coordinationv1.Lease{held(0, "node-b", t0, 120), free(1)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := leasetest.New(tc.existing...)
			before := map[string]*coordinationv1.Lease{}
			for _, l := range tc.existing {
				before[l.Name] = f.Lease(ns, l.Name)
			}
			s := slots(f, &clock{now: t0}, tc.count, "node-a")
			s.Duration = 90 * time.Second

			slot, ok, err := s.TryAcquire(ctx)
			require.NoError(t, err)
			require.Equal(t, tc.wantSlot != "", ok)
			require.Equal(t, tc.wantSlot, slot)
			for name, l := range before {
				if name != slot {
					require.Equal(t, l, f.Lease(ns, name), "%s must not change", name)
				}
			}
			if !ok {
				return
			}
			l := f.Lease(ns, slot)
			require.Equal(t, "node-a", *l.Spec.HolderIdentity)
			require.Equal(t, int32(90), *l.Spec.LeaseDurationSeconds)
			require.True(t, l.Spec.RenewTime.Time.Equal(t0), "renewTime %v", l.Spec.RenewTime)
			require.Equal(t, tc.transitions, *l.Spec.LeaseTransitions)
			if old := before[slot]; old != nil && deref(old.Spec.HolderIdentity, "") == "node-a" {
				require.Equal(t, old.Spec.AcquireTime, l.Spec.AcquireTime, "a renewal keeps acquireTime")
			} else {
				require.True(t, l.Spec.AcquireTime.Time.Equal(t0), "acquireTime %v", l.Spec.AcquireTime)
			}
		})
	}
}

func TestTwoHolders(t *testing.T) {
	for _, tc := range []struct {
		count     int
		wantSlotB string // "" means b must wait
	}{
		{count: 1},
		{count: 2, wantSlotB: "nodetrust-restart-1"},
	} {
		t.Run(fmt.Sprintf("N=%d", tc.count), func(t *testing.T) {
			f := leasetest.New()
			clk := &clock{now: t0}
			a, b := slots(f, clk, tc.count, "node-a"), slots(f, clk, tc.count, "node-b")

			slotA, ok, err := a.TryAcquire(ctx)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, "nodetrust-restart-0", slotA)

			slotB, ok, err := b.TryAcquire(ctx)
			require.NoError(t, err)
			require.Equal(t, tc.wantSlotB, slotB)
			require.Equal(t, tc.wantSlotB != "", ok)
			if ok {
				return
			}

			require.NoError(t, a.Release(ctx, slotA))
			require.Empty(t, holderOf(t, f, 0))
			slotB, ok, err = b.TryAcquire(ctx)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, "nodetrust-restart-0", slotB)
		})
	}
}

// racing lets another node take a slot between this node's read and write.
type racing struct {
	*leasetest.API
	other *lease.Slots
	once  sync.Once
	won   string
}

func (r *racing) GetLease(ctx context.Context, namespace, name string) (*coordinationv1.Lease, error) {
	l, err := r.API.GetLease(ctx, namespace, name)
	r.once.Do(func() {
		r.won, _, _ = r.other.TryAcquire(ctx)
	})
	return l, err
}

func TestConflictMovesOn(t *testing.T) {
	f := leasetest.New(free(0), free(1))
	clk := &clock{now: t0}
	r := &racing{API: f, other: slots(f, clk, 2, "node-b")}
	a := slots(r, clk, 2, "node-a")

	slot, ok, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "nodetrust-restart-0", r.won, "node-b took slot 0 after node-a read it")
	require.Equal(t, "nodetrust-restart-1", slot)
	require.Equal(t, "node-b", holderOf(t, f, 0))
	require.Equal(t, "node-a", holderOf(t, f, 1))
}

func TestConflictOnCreate(t *testing.T) {
	f := leasetest.New()
	clk := &clock{now: t0}
	r := &racing{API: f, other: slots(f, clk, 1, "node-b")}
	a := slots(r, clk, 1, "node-a")

	slot, ok, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	require.False(t, ok, "node-b created slot 0 first")
	require.Empty(t, slot)
	require.Equal(t, "node-b", holderOf(t, f, 0))
}

func TestRelease(t *testing.T) {
	for _, tc := range []struct {
		name       string
		existing   []*coordinationv1.Lease
		wantHolder string // of slot 0 afterwards; "-" means no lease
		wantWrite  bool
	}{
		{name: "own slot freed", existing: []*coordinationv1.Lease{held(0, "node-a", t0, 120)}, wantWrite: true},
		{name: "slot taken over by another node: untouched", existing: []*coordinationv1.Lease{held(0, "node-b", t0, 120)}, wantHolder: "node-b"},
		{name: "free slot: untouched", existing: []*coordinationv1.Lease{free(0)}},
		{name: "missing slot: nothing to do", wantHolder: "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := leasetest.New(tc.existing...)
			clk := &clock{now: t0.Add(time.Second)}
			require.NoError(t, slots(f, clk, 1, "node-a").Release(ctx, "nodetrust-restart-0"))
			want := []string{"Get nodetrust-system/nodetrust-restart-0"}
			if tc.wantWrite {
				want = append(want, "Update nodetrust-system/nodetrust-restart-0")
			}
			require.Equal(t, want, f.Calls())
			l := f.Lease(ns, "nodetrust-restart-0")
			if tc.wantHolder == "-" {
				require.Nil(t, l)
				return
			}
			require.Equal(t, tc.wantHolder, deref(l.Spec.HolderIdentity, ""))
			if tc.wantWrite {
				require.Nil(t, l.Spec.AcquireTime)
				require.True(t, l.Spec.RenewTime.Time.Equal(clk.Now()), "renewTime records the release")
			}
		})
	}
}

func TestCrashedHolderExpires(t *testing.T) {
	f := leasetest.New()
	clk := &clock{now: t0}
	a, b := slots(f, clk, 1, "node-a"), slots(f, clk, 1, "node-b")
	a.Duration = 1500 * time.Millisecond // stored as 2 s

	slot, ok, err := a.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int32(2), *f.Lease(ns, slot).Spec.LeaseDurationSeconds)

	// node-a crashes and never releases.
	clk.Add(2 * time.Second)
	_, ok, err = b.TryAcquire(ctx)
	require.NoError(t, err)
	require.False(t, ok, "not expired at exactly renewTime + duration")

	clk.Add(time.Millisecond)
	slot, ok, err = b.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "nodetrust-restart-0", slot)
	require.Equal(t, int32(120), *f.Lease(ns, slot).Spec.LeaseDurationSeconds, "node-b's own duration")

	// node-a comes back: its release must not free node-b's slot, and it
	// must not get the slot back.
	require.NoError(t, a.Release(ctx, slot))
	require.Equal(t, "node-b", holderOf(t, f, 0))
	_, ok, err = a.TryAcquire(ctx)
	require.NoError(t, err)
	require.False(t, ok)
}

func TestRestartedHolderGetsItsSlotBack(t *testing.T) {
	f := leasetest.New()
	clk := &clock{now: t0}
	slot, ok, err := slots(f, clk, 3, "node-a").TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)

	clk.Add(time.Minute)
	again := slots(f, clk, 3, "node-a") // the agent after a crash
	held, err := again.Held(ctx)
	require.NoError(t, err)
	require.Equal(t, slot, held)
	slot2, ok, err := again.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, slot, slot2)
	require.True(t, f.Lease(ns, slot).Spec.RenewTime.Time.Equal(clk.Now()), "renewed")
	require.Nil(t, f.Lease(ns, lease.SlotName(1)), "no second slot taken")
}

func TestHeld(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing []*coordinationv1.Lease
		want     string
	}{
		{name: "none"},
		{name: "other holder", existing: []*coordinationv1.Lease{held(0, "node-b", t0, 120), free(1)}},
		{name: "own", existing: []*coordinationv1.Lease{held(0, "node-b", t0, 120), held(1, "node-a", t0, 120)}, want: "nodetrust-restart-1"},
		{name: "own but expired", existing: []*coordinationv1.Lease{held(0, "node-a", t0.Add(-time.Hour), 120)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := slots(leasetest.New(tc.existing...), &clock{now: t0}, 2, "node-a").Held(ctx)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestErrors(t *testing.T) {
	boom := errors.New("connection refused")
	f := leasetest.New(held(0, "node-a", t0, 120))
	f.SetErr(boom)
	s := slots(f, &clock{now: t0}, 1, "node-a")

	_, ok, err := s.TryAcquire(ctx)
	require.False(t, ok)
	require.ErrorIs(t, err, boom)
	require.EqualError(t, err, "get lease nodetrust-system/nodetrust-restart-0: connection refused")
	err = s.Release(ctx, "nodetrust-restart-0")
	require.ErrorIs(t, err, boom)
	_, err = s.Held(ctx)
	require.ErrorIs(t, err, boom)

	for _, tc := range []struct {
		name    string
		edit    func(*lease.Slots)
		wantErr string
	}{
		{name: "no API", edit: func(s *lease.Slots) { s.API = nil }, wantErr: "lease: no API"},
		{name: "no namespace", edit: func(s *lease.Slots) { s.Namespace = "" }, wantErr: "lease: no namespace"},
		{name: "no slots", edit: func(s *lease.Slots) { s.Count = 0 }, wantErr: "lease: 0 slots, want at least 1"},
		{name: "no holder", edit: func(s *lease.Slots) { s.Holder = "" }, wantErr: "lease: no holder identity"},
		{name: "negative duration", edit: func(s *lease.Slots) { s.Duration = -time.Second }, wantErr: "lease: negative duration -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := slots(leasetest.New(), &clock{now: t0}, 1, "node-a")
			tc.edit(s)
			_, _, err := s.TryAcquire(ctx)
			require.EqualError(t, err, tc.wantErr)
			require.EqualError(t, s.Release(ctx, "x"), tc.wantErr)
			_, err = s.Held(ctx)
			require.EqualError(t, err, tc.wantErr)
		})
	}
}

func TestDefaultDuration(t *testing.T) {
	f := leasetest.New()
	s := &lease.Slots{API: f, Namespace: ns, Count: 1, Holder: "node-a"}
	slot, ok, err := s.TryAcquire(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	l := f.Lease(ns, slot)
	require.Equal(t, int32(120), *l.Spec.LeaseDurationSeconds)
	require.WithinDuration(t, time.Now(), l.Spec.RenewTime.Time, time.Minute)
	require.Equal(t, map[string]string{"app.kubernetes.io/name": "nodetrust", "app.kubernetes.io/component": "restart-slot"}, l.Labels)
}

// TestManyHolders runs 10 nodes against N slots of one leasetest.API: never more than
// N hold a slot at once, and every node gets one.
func TestManyHolders(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			t.Parallel()
			f := leasetest.New()
			var inside, most atomic.Int32
			var wg sync.WaitGroup
			errs := make(chan error, 10)
			for i := range 10 {
				wg.Go(func() {
					s := &lease.Slots{API: f, Namespace: ns, Count: n, Holder: fmt.Sprintf("node-%d", i)}
					for {
						slot, ok, err := s.TryAcquire(ctx)
						if err != nil {
							errs <- err
							return
						}
						if !ok {
							time.Sleep(time.Millisecond)
							continue
						}
						cur := inside.Add(1)
						for m := most.Load(); cur > m && !most.CompareAndSwap(m, cur); m = most.Load() {
						}
						time.Sleep(2 * time.Millisecond)
						inside.Add(-1)
						errs <- s.Release(ctx, slot)
						return
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			require.LessOrEqual(t, most.Load(), int32(n))
			require.Positive(t, most.Load())
		})
	}
}

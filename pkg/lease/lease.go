// Package lease keeps at most N nodes restarting their container runtime at
// the same moment, cluster-wide (--max-concurrent-restarts). It is a counting
// semaphore whose N slots are coordination.k8s.io/v1 Leases named
// nodetrust-restart-0 … nodetrust-restart-(N-1) in the agent's namespace.
//
// A node takes a slot by writing its name into holderIdentity of a free or
// expired Lease, sending the resourceVersion it read: when two nodes race
// for one slot the API server accepts exactly one write and answers the
// other with a Conflict, and the loser moves on to the next slot. Release
// clears holderIdentity. A holder that dies without releasing keeps its slot
// until renewTime + leaseDurationSeconds has passed by the clock of the node
// that wants it, so Duration must be well above the restart time plus any
// clock skew between nodes.
package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Prefix starts the name of every slot Lease: slot i is Prefix + i.
const Prefix = "nodetrust-restart-"

// DefaultDuration is the lease duration when Slots.Duration is zero.
const DefaultDuration = 2 * time.Minute

// API is the part of the Kubernetes API that Slots uses. *kube.Client
// implements it; leasetest.API is an in-memory one for tests. Errors must keep the
// API status, so that apierrors.IsNotFound, IsAlreadyExists and IsConflict
// work on them.
type API interface {
	GetLease(ctx context.Context, namespace, name string) (*coordinationv1.Lease, error)
	CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
	UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
}

// Slots is one node's handle on the cluster's restart slots.
type Slots struct {
	// API reads and writes the Leases.
	API API
	// Namespace holds the Leases: the agent's own.
	Namespace string
	// Count is the number of slots, N; at least 1.
	Count int
	// Holder is written to holderIdentity: the node's name.
	Holder string
	// Duration is how long a slot this node took stays taken after the last
	// TryAcquire that took or renewed it, if Release never comes. It is
	// stored in whole seconds, rounded up; zero means DefaultDuration.
	Duration time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// SlotName returns the name of slot i.
func SlotName(i int) string { return Prefix + strconv.Itoa(i) }

// TryAcquire takes a slot for Holder without waiting and returns its name,
// or ok=false when all Count slots are held by other nodes and unexpired.
//
// A slot Holder already holds is renewed and returned, even if a lower one is
// free: an agent that crashed while holding a slot gets the same one back
// after its restart, never a second one. Otherwise the lowest slot that is
// missing (created), free or expired (taken over) is taken; a slot another
// node takes first, between our read and our write, is skipped. TryAcquire
// is also how a holder renews its slot during a long restart.
func (s *Slots) TryAcquire(ctx context.Context) (slot string, ok bool, err error) {
	if err := s.check(); err != nil {
		return "", false, err
	}
	leases, err := s.read(ctx)
	if err != nil {
		return "", false, err
	}
	now := s.now()
	for i, l := range leases {
		if l != nil && holder(l) == s.Holder {
			ok, err := s.update(ctx, s.taken(l, now))
			if err != nil {
				return "", false, err
			}
			if ok {
				return SlotName(i), true, nil
			}
		}
	}
	for i, l := range leases {
		switch {
		case l == nil:
			ok, err = s.create(ctx, SlotName(i), now)
		case holder(l) == "" || expired(l, now):
			ok, err = s.update(ctx, s.taken(l, now))
		default:
			continue
		}
		if err != nil {
			return "", false, err
		}
		if ok {
			return SlotName(i), true, nil
		}
	}
	return "", false, nil
}

// Release frees slot if Holder still holds it. A slot that is gone, or that
// another node has taken over after it expired, is left alone and is no
// error: either way this node no longer holds it.
func (s *Slots) Release(ctx context.Context, slot string) error {
	if err := s.check(); err != nil {
		return err
	}
	// A Conflict means the Lease changed after we read it: read it again to
	// see whether it is still ours.
	for range 3 {
		l, err := s.API.GetLease(ctx, s.Namespace, slot)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get lease %s/%s: %w", s.Namespace, slot, err)
		}
		if holder(l) != s.Holder {
			return nil
		}
		l = l.DeepCopy()
		l.Spec.HolderIdentity = nil
		l.Spec.AcquireTime = nil
		l.Spec.RenewTime = micro(s.now())
		_, err = s.API.UpdateLease(ctx, l)
		if err == nil || apierrors.IsNotFound(err) {
			return nil
		}
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("release lease %s/%s: %w", s.Namespace, slot, err)
		}
	}
	return fmt.Errorf("release lease %s/%s: still changing after 3 attempts", s.Namespace, slot)
}

// Held returns the slot Holder holds and that has not expired, or "".
func (s *Slots) Held(ctx context.Context) (string, error) {
	if err := s.check(); err != nil {
		return "", err
	}
	leases, err := s.read(ctx)
	if err != nil {
		return "", err
	}
	now := s.now()
	for i, l := range leases {
		if l != nil && holder(l) == s.Holder && !expired(l, now) {
			return SlotName(i), nil
		}
	}
	return "", nil
}

func (s *Slots) check() error {
	switch {
	case s.API == nil:
		return errors.New("lease: no API")
	case s.Namespace == "":
		return errors.New("lease: no namespace")
	case s.Count < 1:
		return fmt.Errorf("lease: %d slots, want at least 1", s.Count)
	case s.Holder == "":
		return errors.New("lease: no holder identity")
	case s.Duration < 0:
		return fmt.Errorf("lease: negative duration %v", s.Duration)
	}
	return nil
}

// read gets every slot; a missing one is nil.
func (s *Slots) read(ctx context.Context) ([]*coordinationv1.Lease, error) {
	leases := make([]*coordinationv1.Lease, s.Count)
	for i := range leases {
		l, err := s.API.GetLease(ctx, s.Namespace, SlotName(i))
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get lease %s/%s: %w", s.Namespace, SlotName(i), err)
		}
		leases[i] = l
	}
	return leases, nil
}

// create takes a slot whose Lease does not exist yet; another node creating
// it first is no error.
func (s *Slots) create(ctx context.Context, name string, now time.Time) (bool, error) {
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
		Name:      name,
		Namespace: s.Namespace,
		Labels:    map[string]string{"app.kubernetes.io/name": "nodetrust", "app.kubernetes.io/component": "restart-slot"},
	}}
	_, err := s.API.CreateLease(ctx, s.taken(l, now))
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsAlreadyExists(err):
		return false, nil
	}
	return false, fmt.Errorf("create lease %s/%s: %w", s.Namespace, name, err)
}

// update writes l with the resourceVersion it was read with; losing the
// race to another writer (Conflict) or to a deletion is no error.
func (s *Slots) update(ctx context.Context, l *coordinationv1.Lease) (bool, error) {
	_, err := s.API.UpdateLease(ctx, l)
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return false, nil
	}
	return false, fmt.Errorf("update lease %s/%s: %w", s.Namespace, l.Name, err)
}

// taken returns a copy of l held by Holder and renewed at now.
func (s *Slots) taken(l *coordinationv1.Lease, now time.Time) *coordinationv1.Lease {
	l = l.DeepCopy()
	if holder(l) != s.Holder {
		l.Spec.HolderIdentity = &s.Holder
		l.Spec.AcquireTime = micro(now)
		transitions := int32(1)
		if l.Spec.LeaseTransitions != nil {
			transitions = *l.Spec.LeaseTransitions + 1
		}
		l.Spec.LeaseTransitions = &transitions
	}
	secs := s.durationSeconds()
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = micro(now)
	return l
}

func (s *Slots) durationSeconds() int32 {
	d := s.Duration
	if d == 0 {
		d = DefaultDuration
	}
	return int32((d + time.Second - 1) / time.Second)
}

func (s *Slots) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// expired reports whether l's holder has not renewed it for longer than its
// lease duration. A held Lease without renewTime or duration counts as
// expired: nobody can tell how long it was meant to last.
func expired(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return true
	}
	end := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	return end.Before(now)
}

func micro(t time.Time) *metav1.MicroTime {
	m := metav1.NewMicroTime(t)
	return &m
}

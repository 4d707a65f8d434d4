// Package leasetest is an in-memory Lease API for tests of callers of
// package lease.
package leasetest

import (
	"context"
	"errors"
	"strconv"
	"sync"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/nodetrust/nodetrust/pkg/lease"
)

// API is an in-memory lease.API. Like the
// API server, it gives every write a new resourceVersion, answers an update
// whose resourceVersion is not the stored one with a Conflict, an update
// without one with Invalid, a create of an existing name with AlreadyExists
// and a read or update of a missing Lease with NotFound. It is safe for
// concurrent use.
type API struct {
	mu     sync.Mutex
	leases map[string]*coordinationv1.Lease // by namespace/name
	rv     int
	err    error
	calls  []string
}

var _ lease.API = (*API)(nil)

// New returns a API holding leases (copied).
func New(leases ...*coordinationv1.Lease) *API {
	f := &API{leases: map[string]*coordinationv1.Lease{}}
	for _, l := range leases {
		f.put(l.DeepCopy())
	}
	return f
}

// Lease returns a copy of the stored Lease, or nil.
func (f *API) Lease(namespace, name string) *coordinationv1.Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leases[namespace+"/"+name].DeepCopy()
}

// SetErr makes every later call fail with err; nil restores normal service.
func (f *API) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Calls returns every call so far, one string each: "Get ns/name",
// "Create ns/name" or "Update ns/name".
func (f *API) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// GetLease implements lease.API.
func (f *API) GetLease(_ context.Context, namespace, name string) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "Get "+namespace+"/"+name)
	if f.err != nil {
		return nil, f.err
	}
	l := f.leases[namespace+"/"+name]
	if l == nil {
		return nil, apierrors.NewNotFound(coordinationv1.Resource("leases"), name)
	}
	return l.DeepCopy(), nil
}

// CreateLease implements lease.API.
func (f *API) CreateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "Create "+l.Namespace+"/"+l.Name)
	if f.err != nil {
		return nil, f.err
	}
	if f.leases[l.Namespace+"/"+l.Name] != nil {
		return nil, apierrors.NewAlreadyExists(coordinationv1.Resource("leases"), l.Name)
	}
	l = l.DeepCopy()
	l.ResourceVersion, l.UID = "", ""
	return f.put(l).DeepCopy(), nil
}

// UpdateLease implements lease.API.
func (f *API) UpdateLease(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "Update "+l.Namespace+"/"+l.Name)
	if f.err != nil {
		return nil, f.err
	}
	old := f.leases[l.Namespace+"/"+l.Name]
	switch {
	case l.ResourceVersion == "":
		return nil, apierrors.NewInvalid(coordinationv1.SchemeGroupVersion.WithKind("Lease").GroupKind(), l.Name, field.ErrorList{
			field.Invalid(field.NewPath("metadata", "resourceVersion"), 0, "must be specified for an update")})
	case old == nil && l.UID == "":
		return nil, apierrors.NewNotFound(coordinationv1.Resource("leases"), l.Name)
	case old == nil || l.UID != "" && l.UID != old.UID:
		return nil, apierrors.NewConflict(coordinationv1.Resource("leases"), l.Name, errUID)
	case l.ResourceVersion != old.ResourceVersion:
		return nil, apierrors.NewConflict(coordinationv1.Resource("leases"), l.Name, errOutdated)
	}
	l = l.DeepCopy()
	l.UID = old.UID
	return f.put(l).DeepCopy(), nil
}

var (
	errOutdated = errors.New("the object has been modified; please apply your changes to the latest version and try again")
	errUID      = errors.New("precondition failed: UID differs")
)

// put stores l with the next resourceVersion, and a new UID if it has none;
// f.mu must be held.
func (f *API) put(l *coordinationv1.Lease) *coordinationv1.Lease {
	f.rv++
	l.ResourceVersion = strconv.Itoa(f.rv)
	if l.UID == "" {
		l.UID = types.UID("uid-" + l.ResourceVersion)
	}
	f.leases[l.Namespace+"/"+l.Name] = l
	return l
}

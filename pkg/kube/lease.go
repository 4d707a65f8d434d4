package kube

import (
	"context"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// Leases live in their own API group, so they get their own REST client and
// a scheme holding only coordination.k8s.io/v1: the core/v1 scheme stays as
// small as it is.
var (
	coordScheme = runtime.NewScheme()
	coordCodecs = serializer.NewCodecFactory(coordScheme)
)

func init() {
	if err := coordinationv1.AddToScheme(coordScheme); err != nil {
		panic(err)
	}
	metav1.AddToGroupVersion(coordScheme, coordinationv1.SchemeGroupVersion)
}

// GetLease reads a Lease. A missing Lease is an error for which
// apierrors.IsNotFound is true.
func (c *Client) GetLease(ctx context.Context, namespace, name string) (*coordinationv1.Lease, error) {
	l := &coordinationv1.Lease{}
	err := c.coord.Get().Namespace(namespace).Resource("leases").Name(name).Do(ctx).Into(l)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// CreateLease creates a Lease in its namespace and returns it as stored. If
// the name is taken, apierrors.IsAlreadyExists is true for the error.
func (c *Client) CreateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.coord.Post().Namespace(l.Namespace).Resource("leases").Body(l).Do(ctx).Into(out)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpdateLease replaces a Lease and returns it as stored. The API server
// checks l's resourceVersion: if the Lease changed since it was read,
// apierrors.IsConflict is true for the error.
func (c *Client) UpdateLease(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := c.coord.Put().Namespace(l.Namespace).Resource("leases").Name(l.Name).Body(l).Do(ctx).Into(out)
	if err != nil {
		return nil, err
	}
	return out, nil
}

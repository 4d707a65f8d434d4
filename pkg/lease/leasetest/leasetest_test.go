package leasetest_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/pkg/lease/leasetest"
)

const ns = "nodetrust-system"

var ctx = context.Background()

// held is a Lease named name held by holder.
func held(name, holder string) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &metav1.MicroTime{Time: time.Now()}},
	}
}

// TestFake checks the in-memory API answers as test/lease's TestAPISemantics shows
// kube-apiserver does.
func TestAPI(t *testing.T) {
	f := leasetest.New()
	_, err := f.GetLease(ctx, ns, "a")
	require.True(t, apierrors.IsNotFound(err), "get missing: %v", err)

	created, err := f.CreateLease(ctx, held("a", "node-a"))
	require.NoError(t, err)
	require.NotEmpty(t, created.ResourceVersion)
	require.NotEmpty(t, created.UID)
	_, err = f.CreateLease(ctx, held("a", "node-a"))
	require.True(t, apierrors.IsAlreadyExists(err), "create existing: %v", err)

	updated, err := f.UpdateLease(ctx, created)
	require.NoError(t, err)
	require.NotEqual(t, created.ResourceVersion, updated.ResourceVersion)
	require.Equal(t, created.UID, updated.UID)

	for _, tc := range []struct {
		name  string
		edit  func(*coordinationv1.Lease)
		check func(error) bool
	}{
		{name: "stale resourceVersion", edit: func(l *coordinationv1.Lease) { l.ResourceVersion = created.ResourceVersion }, check: apierrors.IsConflict},
		{name: "no resourceVersion", edit: func(l *coordinationv1.Lease) { l.ResourceVersion = "" }, check: apierrors.IsInvalid},
		{name: "other UID", edit: func(l *coordinationv1.Lease) { l.UID = "other" }, check: apierrors.IsConflict},
		{name: "missing, with UID", edit: func(l *coordinationv1.Lease) { l.Name = "gone" }, check: apierrors.IsConflict},
		{name: "missing, no UID", edit: func(l *coordinationv1.Lease) { l.Name, l.UID = "gone", "" }, check: apierrors.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := updated.DeepCopy()
			tc.edit(l)
			_, err := f.UpdateLease(ctx, l)
			require.True(t, tc.check(err), "%v", err)
		})
	}
}

package kube

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testLease() *coordinationv1.Lease {
	holder := "node-a"
	return &coordinationv1.Lease{
		TypeMeta:   metav1.TypeMeta{Kind: "Lease", APIVersion: "coordination.k8s.io/v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "nodetrust-restart-0", Namespace: "ns", ResourceVersion: "7"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder},
	}
}

func TestLeaseRequests(t *testing.T) {
	for _, tc := range []struct {
		name         string
		call         func(*Client) (*coordinationv1.Lease, error)
		method, body string
	}{
		{
			name: "get",
			call: func(c *Client) (*coordinationv1.Lease, error) {
				return c.GetLease(context.Background(), "ns", "nodetrust-restart-0")
			},
			method: "GET",
		},
		{
			name: "create",
			call: func(c *Client) (*coordinationv1.Lease, error) {
				return c.CreateLease(context.Background(), testLease())
			},
			method: "POST",
			body:   `"holderIdentity":"node-a"`,
		},
		{
			name: "update",
			call: func(c *Client) (*coordinationv1.Lease, error) {
				return c.UpdateLease(context.Background(), testLease())
			},
			method: "PUT",
			body:   `"resourceVersion":"7"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seen := server(t, 200, testLease())
			l, err := tc.call(c)
			require.NoError(t, err)
			require.Equal(t, "node-a", *l.Spec.HolderIdentity)
			require.Equal(t, "7", l.ResourceVersion)
			r := (*seen)[0]
			require.Equal(t, tc.method, r.method)
			path := "/apis/coordination.k8s.io/v1/namespaces/ns/leases"
			if tc.method != "POST" {
				path += "/nodetrust-restart-0"
			}
			require.Equal(t, path, r.path)
			if tc.body != "" {
				require.Contains(t, r.body, tc.body)
				require.Contains(t, r.body, `"kind":"Lease","apiVersion":"coordination.k8s.io/v1"`)
			}
		})
	}
}

func TestUpdateLeaseConflict(t *testing.T) {
	status := metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
		Reason: metav1.StatusReasonConflict, Code: 409,
		Message: `Operation cannot be fulfilled on leases.coordination.k8s.io "nodetrust-restart-0": the object has been modified`}
	c, _ := server(t, 409, status)
	_, err := c.UpdateLease(context.Background(), testLease())
	require.True(t, apierrors.IsConflict(err), "%v", err)
}

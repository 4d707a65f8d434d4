package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

type request struct {
	method, path, query, contentType, body string
}

func server(t *testing.T, status int, reply any) (*Client, *[]request) {
	t.Helper()
	var seen []request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen = append(seen, request{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), string(body)})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		require.NoError(t, json.NewEncoder(w).Encode(reply))
	}))
	t.Cleanup(srv.Close)
	c, err := New(&rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}}, "nodetrust/test")
	require.NoError(t, err)
	return c, &seen
}

func TestListWatchList(t *testing.T) {
	list := corev1.SecretList{TypeMeta: metav1.TypeMeta{Kind: "SecretList", APIVersion: "v1"},
		Items: []corev1.Secret{{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "ns"}}}}
	c, seen := server(t, 200, list)
	lw := c.ListWatch("secrets", "ns", func(o *metav1.ListOptions) { o.LabelSelector = "nodetrust.io/ca=true" })
	obj, err := lw.List(metav1.ListOptions{ResourceVersion: "0"})
	require.NoError(t, err)
	require.Equal(t, "a", obj.(*corev1.SecretList).Items[0].Name)
	require.Equal(t, "/api/v1/namespaces/ns/secrets", (*seen)[0].path)
	require.Contains(t, (*seen)[0].query, "labelSelector=nodetrust.io%2Fca%3Dtrue")
	require.Contains(t, (*seen)[0].query, "resourceVersion=0")
}

func TestPatchNode(t *testing.T) {
	c, seen := server(t, 200, corev1.Node{TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}})
	require.NoError(t, c.PatchNode(context.Background(), "n1", types.MergePatchType, []byte(`{"metadata":{"annotations":{"a":"b"}}}`)))
	r := (*seen)[0]
	require.Equal(t, "PATCH", r.method)
	require.Equal(t, "/api/v1/nodes/n1", r.path)
	require.Equal(t, "application/merge-patch+json", r.contentType)
	require.JSONEq(t, `{"metadata":{"annotations":{"a":"b"}}}`, r.body)

	require.NoError(t, c.PatchNode(context.Background(), "n1", types.StrategicMergePatchType, []byte(`{"status":{}}`), "status"))
	r = (*seen)[1]
	require.Equal(t, "/api/v1/nodes/n1/status", r.path)
	require.Equal(t, "application/strategic-merge-patch+json", r.contentType)
}

func TestCreateEventAlreadyExists(t *testing.T) {
	status := metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
		Reason: metav1.StatusReasonAlreadyExists, Code: 409, Message: `events "x" already exists`}
	c, seen := server(t, 409, status)
	err := c.CreateEvent(context.Background(), &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}, Reason: "Rejected"})
	require.True(t, apierrors.IsAlreadyExists(err), "%v", err)
	require.Equal(t, "POST", (*seen)[0].method)
	require.Equal(t, "/api/v1/namespaces/ns/events", (*seen)[0].path)
	require.Contains(t, (*seen)[0].body, `"reason":"Rejected"`)
}

func TestListNodes(t *testing.T) {
	list := corev1.NodeList{TypeMeta: metav1.TypeMeta{Kind: "NodeList", APIVersion: "v1"},
		Items: []corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, {ObjectMeta: metav1.ObjectMeta{Name: "n2"}}}}
	c, seen := server(t, 200, list)
	nodes, err := c.ListNodes(context.Background(), "kubernetes.io/os=linux")
	require.NoError(t, err)
	require.Len(t, nodes, 2)
	require.Equal(t, "/api/v1/nodes", (*seen)[0].path)
	require.Equal(t, "labelSelector=kubernetes.io%2Fos%3Dlinux", (*seen)[0].query)

	c, _ = server(t, 403, metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure", Reason: metav1.StatusReasonForbidden, Code: 403, Message: "nodes is forbidden"})
	_, err = c.ListNodes(context.Background(), "")
	require.ErrorContains(t, err, "list nodes: nodes is forbidden")
}

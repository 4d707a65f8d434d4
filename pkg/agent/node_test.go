package agent_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/cluster"
	"github.com/nodetrust/nodetrust/pkg/cluster/clustertest"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

func (e *env) condition() *corev1.NodeCondition {
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	require.NoError(e.t, err)
	for _, c := range n.Status.Conditions {
		if c.Type == cluster.ConditionType {
			return &c
		}
	}
	return nil
}

func (e *env) statusPatches() int {
	n := 0
	for _, a := range e.client.Actions() {
		if a.GetVerb() == "patch" && a.GetSubresource() == "status" {
			n++
		}
	}
	return n
}

// NodeTrustReady (SPEC §4) follows the state, through nodes/status, next to
// the kubelet's own conditions, and only when it changes.
func TestAgentNodeTrustReadyCondition(t *testing.T) {
	node := testNode(nil)
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"}}
	e := start(t, node, caSecret(t, "a", "r.example:5000", nil))
	e.eventually(func() bool { c := e.condition(); return c != nil && c.Status == corev1.ConditionTrue }, "NodeTrustReady True")
	c := e.condition()
	require.Equal(t, annotation.ReasonApplied, c.Reason)
	require.Contains(t, c.Message, "1 sources applied")
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	require.NoError(t, err)
	require.Len(t, n.Status.Conditions, 2, "the kubelet's condition stays")

	patches := e.statusPatches()
	e.agent.Trigger()
	time.Sleep(150 * time.Millisecond)
	require.Equal(t, patches, e.statusPatches(), "nothing new: no patch")

	bad := caSecret(t, "bad", "r.example/x", nil)
	_, err = e.client.CoreV1().Secrets(ns).Create(context.Background(), bad, metav1.CreateOptions{})
	require.NoError(t, err)
	e.eventually(func() bool { c := e.condition(); return c != nil && c.Status == corev1.ConditionFalse }, "NodeTrustReady False")
	c = e.condition()
	require.Equal(t, annotation.ReasonDegraded, c.Reason)
	require.Equal(t, e.annotations()[annotation.KeyMessage], c.Message)
}

// --startup-taint: the taint goes after the first complete sync, and
// other taints stay.
func TestAgentRemovesStartupTaint(t *testing.T) {
	node := testNode(nil)
	node.Spec.Taints = []corev1.Taint{
		{Key: "nodetrust.io/agent-not-ready", Effect: corev1.TaintEffectNoSchedule},
		{Key: "other", Value: "x", Effect: corev1.TaintEffectNoExecute},
	}
	dir := t.TempDir()
	hostfstest.MkdirAll(t, dir, "etc/docker")
	e := startWith(t, dir, func(o *agent.Options) { o.StartupTaint = "nodetrust.io/agent-not-ready" }, node, caSecret(t, "a", "r.example:5000", nil))
	e.eventually(func() bool { return e.file(dockerFile) != "" }, "applied")
	e.eventually(func() bool {
		n, err := e.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
		require.NoError(t, err)
		return len(n.Spec.Taints) == 1
	}, "the startup taint is removed")
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, "other", n.Spec.Taints[0].Key)
}

// downAPI fails every list, as an unreachable API server does.
type downAPI struct{ clustertest.API }

func (downAPI) ListWatch(string, string, func(*metav1.ListOptions)) cache.ListerWatcher {
	return &cache.ListWatch{
		ListFunc: func(metav1.ListOptions) (runtime.Object, error) {
			return nil, errors.New(`dial tcp 10.96.0.1:443: connect: connection refused`)
		},
		WatchFunc: func(metav1.ListOptions) (watch.Interface, error) { return nil, errors.New("down") },
	}
}

// An agent that cannot reach the API server says so: Waiting, and the
// /readyz body.
func TestAgentSaysWhileAPIServerIsDown(t *testing.T) {
	root, err := hostfs.Open(t.TempDir())
	require.NoError(t, err)
	defer root.Close()
	k := cluster.New(downAPI{}, "n1", []string{ns})
	a := agent.New(agent.Options{Root: root, Inputs: k, Publisher: k, Resync: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	require.Eventually(t, func() bool { return strings.Contains(k.Waiting(), "connection refused") }, 5*time.Second, 20*time.Millisecond)
	require.Contains(t, k.Waiting(), "waiting for the API server for ")

	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Contains(t, string(body), "no completed sync yet: waiting for the API server for ")
	require.Contains(t, string(body), "connection refused")
}

package status_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/pkg/status"
)

func node(name string, ann map[string]string) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
}

func report(state, applied, sources, message string) map[string]string {
	return map[string]string{
		"nodetrust.io/state": state, "nodetrust.io/applied": applied, "nodetrust.io/sources": sources,
		"nodetrust.io/message": message, "nodetrust.io/synced-at": "2026-11-22T13:00:00Z", "nodetrust.io/warnings": "0",
	}
}

func TestSummarize(t *testing.T) {
	ready := report("Ready", "abc123abc123", "2", "")
	tests := []struct {
		name  string
		nodes []corev1.Node
		ok    bool
		line  string
	}{
		{name: "all ready and agreeing", ok: true,
			nodes: []corev1.Node{node("b", ready), node("a", ready)},
			line:  "2 nodes: 2 Ready, 0 Degraded, 0 Pending, 0 not reporting; the same applied state"},
		{name: "one node disagrees",
			nodes: []corev1.Node{node("a", ready), node("b", report("Ready", "ffff00001111", "1", ""))},
			line:  "2 nodes: 2 Ready, 0 Degraded, 0 Pending, 0 not reporting; 2 different applied states"},
		{name: "degraded and pending",
			nodes: []corev1.Node{node("a", ready), node("b", report("Degraded", "abc123abc123", "2", "rejected ns/x: bad")),
				node("c", report("Pending", "abc123abc123", "2", "restart pending"))},
			line: "3 nodes: 1 Ready, 1 Degraded, 1 Pending, 0 not reporting; the same applied state"},
		{name: "a node without an agent",
			nodes: []corev1.Node{node("a", ready), node("b", nil)},
			line:  "2 nodes: 1 Ready, 0 Degraded, 0 Pending, 1 not reporting; the same applied state"},
		{name: "no nodes", line: "0 nodes: 0 Ready, 0 Degraded, 0 Pending, 0 not reporting; 0 different applied states"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := status.Summarize(tc.nodes)
			require.Equal(t, tc.ok, s.OK())
			require.Equal(t, tc.line, s.Line())
		})
	}
}

func TestFromNodeAndTable(t *testing.T) {
	s := status.Summarize([]corev1.Node{
		node("worker-2", nil),
		node("worker-1", report("Degraded", "abc123abc123", "1", "rejected registry/bad: tls.crt holds a private key")),
	})
	require.Equal(t, "worker-1", s.Nodes[0].Name, "sorted")
	n := s.Nodes[0]
	require.Equal(t, 1, n.Sources)
	require.True(t, n.SyncedAt.Equal(time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC)))
	require.False(t, s.Nodes[1].Reported())

	var b bytes.Buffer
	require.NoError(t, s.WriteTable(&b))
	require.Equal(t, `NODE      STATE     SOURCES  APPLIED       SYNCED                NOT VERIFIED  MESSAGE
worker-1  Degraded  1        abc123abc123  2026-11-22T13:00:00Z  -             rejected registry/bad: tls.crt holds a private key
worker-2  -         -        -             -                     -             no report: no nodetrust agent has run on this node
2 nodes: 0 Ready, 1 Degraded, 0 Pending, 1 not reporting; the same applied state
`, b.String())
}

func TestTableHasNoTrailingSpaces(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, status.Summarize([]corev1.Node{node("a", report("Ready", "abc123abc123", "1", ""))}).WriteTable(&b))
	require.Equal(t, "NODE  STATE  SOURCES  APPLIED       SYNCED                NOT VERIFIED  MESSAGE\na     Ready  1        abc123abc123  2026-11-22T13:00:00Z  -\n1 node: 1 Ready, 0 Degraded, 0 Pending, 0 not reporting; the same applied state\n", b.String())
}

// A registry that does not verify on a node shows in its row, and
// --registry shows that registry on every node.
func TestRegistryColumnAndView(t *testing.T) {
	good := report("Ready", "abc123abc123", "2", "")
	good["nodetrust.io/verified"] = "harbor.local:5000,r.example"
	bad := report("Degraded", "abc123abc123", "2", "registry harbor.local:5000 not verified: containerd: unknown-authority: …")
	bad["nodetrust.io/verified"] = "r.example"
	bad["nodetrust.io/unverified"] = "harbor.local:5000"
	s := status.Summarize([]corev1.Node{node("a", good), node("b", bad), node("c", report("Ready", "abc123abc123", "2", ""))})
	var b bytes.Buffer
	require.NoError(t, s.WriteTable(&b))
	require.Contains(t, b.String(), "b     Degraded  2        abc123abc123  2026-11-22T13:00:00Z  harbor.local:5000  registry harbor.local:5000 not verified")

	v := s.Registry("harbor.local:5000")
	require.Equal(t, map[string]string{"a": "verified", "b": "not verified", "c": "not checked"}, v.Nodes)
	require.False(t, v.OK())
	b.Reset()
	require.NoError(t, v.WriteTable(&b))
	require.Equal(t, "NODE  harbor.local:5000\na     verified\nb     not verified\nc     not checked\nharbor.local:5000: verified on 1 of the 2 nodes that checked it (3 nodes)\n", b.String())
	require.True(t, s.Registry("r.example").OK())
	require.False(t, s.Registry("unknown.example").OK(), "checked nowhere")
}

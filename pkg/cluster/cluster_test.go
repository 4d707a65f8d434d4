package cluster_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/cluster"
	"github.com/nodetrust/nodetrust/pkg/cluster/clustertest"
	"github.com/nodetrust/nodetrust/pkg/kube"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/source"
)

const ns = "nodetrust-system"

// The agent finds what a Cluster does through these interfaces, some by a
// type assertion: a signature drifting apart must not compile.
var (
	_ cluster.API        = (*kube.Client)(nil)
	_ cluster.API        = clustertest.API{}
	_ agent.Inputs       = (*cluster.Cluster)(nil)
	_ agent.Publisher    = (*cluster.Cluster)(nil)
	_ agent.TaintRemover = (*cluster.Cluster)(nil)
	_ agent.Unpublisher  = (*cluster.Cluster)(nil)
)

// rejectedSecret is a labelled CA Secret whose registries do not parse.
func rejectedSecret(t *testing.T, name string) *corev1.Secret {
	ca := certstest.NewCA(t, name)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{source.LabelCA: "true"},
			Annotations: map[string]string{source.AnnotationRegistries: "a b"}},
		Data: map[string][]byte{"tls.crt": ca.CertPEM()},
	}
}

func TestEventAlreadyCreatedByAnotherNode(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, rejectedSecret(t, "bad"))
	client.PrependReactor("create", "events", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewAlreadyExists(schema.GroupResource{Resource: "events"}, "x")
	})
	c := cluster.New(clustertest.API{Client: client}, "n1", []string{ns})
	ctx := context.Background()
	require.NoError(t, c.Wait(ctx, func() {}))
	set, _ := c.Collect()
	require.Len(t, set.Rejected, 1)
	rep := reconcile.Report{Rejected: set.Rejected}
	pub, err := c.Publish(ctx, agent.StatusOf(rep), rep)
	require.NoError(t, err)
	require.Equal(t, 0, pub.Events)
	require.True(t, pub.Patched)
	pub, err = c.Publish(ctx, agent.StatusOf(rep), rep)
	require.NoError(t, err)
	require.Equal(t, agent.Published{}, pub, "nothing new to publish")
}

// An uninstall runs no informers: it has no Node to read a version from.
func TestRuntimeVersionBeforeWait(t *testing.T) {
	require.Empty(t, cluster.New(nil, "n1", nil).RuntimeVersion())
}

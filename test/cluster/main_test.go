package cluster

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopShared()
	harness.CleanupBinary()
	os.Exit(code)
}

// shared is one cluster (deploy/ applied) for the tests that can isolate
// themselves by namespace and Node name; tests that stop the API server or
// run controllers start their own.
var shared struct {
	once  sync.Once
	c     *harness.Cluster
	err   error
	setup time.Duration
}

func sharedCluster(t *testing.T) *harness.Cluster {
	t.Helper()
	harness.SkipUnlessReal(t)
	shared.once.Do(func() {
		start := time.Now()
		c, err := harness.StartCluster()
		if err != nil {
			shared.err = err
			return
		}
		if _, err := c.ApplyDeploy(); err != nil {
			c.Stop()
			shared.err = err
			return
		}
		shared.c = c
		shared.setup = time.Since(start)
		fmt.Fprintf(os.Stderr, "shared cluster: etcd ready %v, kube-apiserver /readyz %v, with deploy/ applied %v\n",
			c.EtcdReady.Round(time.Millisecond), c.APIReady.Round(time.Millisecond), shared.setup.Round(time.Millisecond))
	})
	if shared.err != nil {
		t.Fatalf("shared cluster: %v", shared.err)
	}
	return shared.c
}

func stopShared() {
	if shared.c != nil {
		shared.c.Stop()
	}
}

// newClusterWithDeploy starts a private cluster and applies deploy/.
func newClusterWithDeploy(t *testing.T) *harness.Cluster {
	t.Helper()
	harness.SkipUnlessReal(t)
	c := harness.NewCluster(t)
	if _, err := c.ApplyDeploy(); err != nil {
		t.Fatal(err)
	}
	return c
}

var ctx = context.Background()

// nodeAnnotations returns the nodetrust.io/ annotations of a Node.
func nodeAnnotations(t *testing.T, c *harness.Cluster, name string) map[string]string {
	t.Helper()
	n, err := c.Admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node %s: %v", name, err)
	}
	out := map[string]string{}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, "nodetrust.io/") {
			out[k] = v
		}
	}
	return out
}

// waitNode polls the Node's annotations until cond holds.
func waitNode(t *testing.T, c *harness.Cluster, name string, timeout time.Duration, desc string, cond func(ann map[string]string) bool) map[string]string {
	t.Helper()
	var last map[string]string
	ok := harness.Poll(timeout, 100*time.Millisecond, func() bool {
		last = nodeAnnotations(t, c, name)
		return cond(last)
	})
	if !ok {
		t.Fatalf("node %s: %s not reached within %v; annotations now: %v", name, desc, timeout, last)
	}
	return last
}

// rejectedEvents lists Events with reason Rejected about a source.
func rejectedEvents(t *testing.T, c *harness.Cluster, ns, kind, name string) []corev1.Event {
	t.Helper()
	sel := fields.Set{"involvedObject.name": name, "involvedObject.kind": kind, "reason": "Rejected"}.AsSelector().String()
	evs, err := c.Admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	return evs.Items
}

func describeEvents(evs []corev1.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %s type=%s reason=%s count=%d source=%s/%s obj=%s/%s/%s msg=%q",
			e.Name, e.Type, e.Reason, e.Count, e.Source.Component, e.Source.Host, e.InvolvedObject.Kind,
			e.InvolvedObject.Namespace, e.InvolvedObject.Name, e.Message)
	}
	return b.String()
}

// waitTrusted polls until every runtime under root trusts leaf for reg and
// returns how long it took.
func waitTrusted(t *testing.T, root, reg string, leaf *x509.Certificate, timeout time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	var why string
	if !harness.Poll(timeout, 20*time.Millisecond, func() bool {
		var ok bool
		ok, why = harness.TrustedEverywhere(root, reg, leaf)
		return ok
	}) {
		t.Fatalf("%s: %s not trusted for %s within %v: %s", what, leaf.Subject.CommonName, reg, timeout, why)
	}
	return time.Since(start)
}

// waitUntrusted polls until no runtime under root trusts leaf for reg.
func waitUntrusted(t *testing.T, root, reg string, leaf *x509.Certificate, timeout time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	var why string
	if !harness.Poll(timeout, 20*time.Millisecond, func() bool {
		var ok bool
		ok, why = harness.TrustedNowhere(root, reg, leaf)
		return ok
	}) {
		t.Fatalf("%s: %s for %s not gone within %v: %s", what, leaf.Subject.CommonName, reg, timeout, why)
	}
	return time.Since(start)
}

// waitGone polls until no runtime has a certs.d/reg directory under root.
func waitGone(t *testing.T, root, reg string, timeout time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	var why string
	if !harness.Poll(timeout, 20*time.Millisecond, func() bool {
		var ok bool
		ok, why = harness.RegistryDirsGone(root, reg)
		return ok
	}) {
		t.Fatalf("%s: certs.d/%s not cleaned up within %v: %s", what, reg, timeout, why)
	}
	return time.Since(start)
}

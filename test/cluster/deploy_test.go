package cluster

import (
	"strings"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestDeployApplies: `kubectl apply -k deploy/` against a real API server
// creates what the agent needs, and a second apply is a no-op.
func TestDeployApplies(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	cs := c.Admin
	if _, err := cs.CoreV1().Namespaces().Get(ctx, harness.AgentNamespace, metav1.GetOptions{}); err != nil {
		t.Errorf("namespace %s: %v", harness.AgentNamespace, err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(harness.AgentNamespace).Get(ctx, harness.AgentServiceAccount, metav1.GetOptions{}); err != nil {
		t.Errorf("serviceaccount %s/%s: %v", harness.AgentNamespace, harness.AgentServiceAccount, err)
	}
	ds, err := cs.AppsV1().DaemonSets(harness.AgentNamespace).Get(ctx, "nodetrust", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("daemonset: %v", err)
	}
	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != harness.AgentServiceAccount {
		t.Errorf("daemonset serviceAccountName = %q, want %q", spec.ServiceAccountName, harness.AgentServiceAccount)
	}
	if len(spec.Containers) != 1 || len(spec.Containers[0].Args) == 0 || spec.Containers[0].Args[0] != "agent" {
		t.Errorf("daemonset container args = %v, want [agent ...]", spec.Containers)
	}
	// A second apply changes nothing on the server: every object keeps its
	// resourceVersion, and `kubectl diff` sees no difference.
	before, err := c.Kubectl("get", "-k", harness.DeployDir(), "-o", "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}")
	if err != nil {
		t.Fatalf("kubectl get -k: %v\n%s", err, before)
	}
	out, err := c.Kubectl("apply", "-k", harness.DeployDir())
	if err != nil {
		t.Fatalf("second apply: %v\n%s", err, out)
	}
	after, _ := c.Kubectl("get", "-k", harness.DeployDir(), "-o", "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}")
	if before != after {
		t.Errorf("second `kubectl apply -k deploy/` changed objects:\nbefore:\n%s\nafter:\n%s\napply said:\n%s", before, after, out)
	}
	if diff, err := c.Kubectl("diff", "-k", harness.DeployDir()); err != nil {
		t.Errorf("`kubectl diff -k deploy/` after apply reports differences (%v):\n%s", err, diff)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasSuffix(l, " unchanged") {
			// kubectl's client-side three-way patch is not empty, although the
			// server changes nothing (see resourceVersions above).
			t.Logf("note: second apply printed %q", l)
		}
	}
}

// TestRBAC: the agent's ServiceAccount token (TokenRequest) can do what the
// agent needs and nothing beyond: no Secrets outside its namespace.
func TestRBAC(t *testing.T) {
	t.Parallel()
	c := sharedCluster(t)
	agent := c.AgentClient(t)

	other := "rbac-other-" + harness.RandHex(3)
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.Admin.CoreV1().Namespaces().Delete(ctx, other, metav1.DeleteOptions{})
	for _, ns := range []string{other, harness.AgentNamespace} {
		s := harness.Secret(ns, "some-secret", harness.NewCA("rbac").PEM, "r.test")
		if _, err := c.Admin.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	defer c.Admin.CoreV1().Secrets(harness.AgentNamespace).Delete(ctx, "some-secret", metav1.DeleteOptions{})

	// Forbidden.
	forbidden := map[string]error{}
	_, forbidden["get secret in another namespace"] = agent.CoreV1().Secrets(other).Get(ctx, "some-secret", metav1.GetOptions{})
	_, forbidden["get secret in kube-system"] = agent.CoreV1().Secrets("kube-system").Get(ctx, "x", metav1.GetOptions{})
	_, forbidden["list secrets cluster-wide"] = agent.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	_, forbidden["list configmaps in another namespace"] = agent.CoreV1().ConfigMaps(other).List(ctx, metav1.ListOptions{})
	forbidden["delete secret in own namespace"] = agent.CoreV1().Secrets(harness.AgentNamespace).Delete(ctx, "some-secret", metav1.DeleteOptions{})
	_, forbidden["update secret in own namespace"] = agent.CoreV1().Secrets(harness.AgentNamespace).Update(ctx, harness.Secret(harness.AgentNamespace, "some-secret", nil, ""), metav1.UpdateOptions{})
	forbidden["delete node"] = agent.CoreV1().Nodes().Delete(ctx, "no-such-node", metav1.DeleteOptions{})
	_, forbidden["create node"] = agent.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "rbac-evil-node"}}, metav1.CreateOptions{})
	_, forbidden["list pods"] = agent.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	for what, err := range forbidden {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s with the agent's token: want Forbidden, got %v", what, err)
		}
	}

	// Allowed: what the agent needs.
	node := "rbac-node-" + harness.RandHex(3)
	c.CreateNode(t, node, nil)
	allowed := map[string]error{}
	_, allowed["get secret in nodetrust-system"] = agent.CoreV1().Secrets(harness.AgentNamespace).Get(ctx, "some-secret", metav1.GetOptions{})
	_, allowed["list secrets in nodetrust-system"] = agent.CoreV1().Secrets(harness.AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: harness.LabelCA + "=true"})
	_, allowed["list configmaps in nodetrust-system"] = agent.CoreV1().ConfigMaps(harness.AgentNamespace).List(ctx, metav1.ListOptions{})
	_, allowed["get node"] = agent.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	_, allowed["patch node annotations"] = agent.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"nodetrust.io/state":"Ready"}}}`), metav1.PatchOptions{})
	_, allowed["create event in nodetrust-system"] = agent.CoreV1().Events(harness.AgentNamespace).Create(ctx, &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: "rbac-test." + harness.RandHex(4), Namespace: harness.AgentNamespace},
		InvolvedObject: corev1.ObjectReference{Kind: "Secret", Namespace: harness.AgentNamespace, Name: "some-secret"},
		Reason:         "RBACTest", Message: "rbac test", Type: "Normal",
	}, metav1.CreateOptions{})
	for what, err := range allowed {
		if err != nil {
			t.Errorf("%s with the agent's token: want allowed, got %v", what, err)
		}
	}

	// Watch is what informers need; SelfSubjectAccessReview answers without side effects.
	for _, ra := range []authorizationv1.ResourceAttributes{
		{Namespace: harness.AgentNamespace, Verb: "watch", Resource: "secrets"},
		{Namespace: harness.AgentNamespace, Verb: "watch", Resource: "configmaps"},
		{Verb: "watch", Resource: "nodes"},
	} {
		ra := ra
		r, err := agent.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !r.Status.Allowed {
			t.Errorf("agent may not %s %s in %q: %s", ra.Verb, ra.Resource, ra.Namespace, r.Status.Reason)
		}
	}
}

package chart

// The Own-Node admission policy on a real kube-apiserver (test/harness's
// harness): deploy/ and deploy/admission applied with kubectl, a Pod of the
// agent's ServiceAccount bound to Node a, and a TokenRequest token bound to
// that Pod, as the kubelet mounts it into the agent's container.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	policyName    = "nodetrust-own-node"
	nodeNameExtra = "authentication.kubernetes.io/node-name"
)

// boundToken creates a Pod of the agent's ServiceAccount on node (no
// kubelet runs it) and returns a token bound to that Pod.
func boundToken(t *testing.T, c *harness.Cluster, ns, node string) string {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent-" + node, Namespace: ns},
		Spec: corev1.PodSpec{
			ServiceAccountName: harness.AgentServiceAccount,
			NodeName:           node,
			Containers:         []corev1.Container{{Name: "agent", Image: "ghcr.io/nodetrust/nodetrust:latest"}},
		},
	}
	pod, err := c.Admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	require.NoError(t, err)
	// No kubelet confirms its termination: delete it at once, so that its
	// namespace can go.
	t.Cleanup(func() {
		zero := int64(0)
		_ = c.Admin.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	secs := int64(3600)
	tr, err := c.Admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, harness.AgentServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	return tr.Status.Token
}

func tokenClient(t *testing.T, c *harness.Cluster, token string) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: c.Server, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM}})
	require.NoError(t, err)
	return cs
}

// patch is one request the agent's token makes.
type patch struct {
	node, subresource string
	body              any
}

func (p patch) do(cs *kubernetes.Clientset) error {
	b, err := json.Marshal(p.body)
	if err != nil {
		return err
	}
	var sub []string
	if p.subresource != "" {
		sub = []string{p.subresource}
	}
	_, err = cs.CoreV1().Nodes().Patch(context.Background(), p.node, types.StrategicMergePatchType, b, metav1.PatchOptions{}, sub...)
	return err
}

// deniedByPolicy reports whether err is the policy's denial (not RBAC's).
func deniedByPolicy(err error) bool {
	return err != nil && apierrors.IsForbidden(err) && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policyName+"'")
}

func annotate(node, key, value string) patch {
	return patch{node: node, body: map[string]any{"metadata": map[string]any{"annotations": map[string]any{key: value}}}}
}

func condition(node, typ, status string) patch {
	return patch{node: node, subresource: "status", body: map[string]any{"status": map[string]any{"conditions": []any{
		map[string]any{"type": typ, "status": status, "reason": "Test", "message": "test", "lastHeartbeatTime": time.Now().UTC().Format(time.RFC3339)},
	}}}}
}

// createNodes creates Nodes a and b with a label, a foreign annotation, a
// Ready condition and a taint each, as a kubelet would have.
func createNodes(t *testing.T, c *harness.Cluster, startupTaint string, names ...string) {
	t.Helper()
	ctx := context.Background()
	for _, name := range names {
		taints := []corev1.Taint{{Key: "dedicated", Value: "infra", Effect: corev1.TaintEffectNoSchedule}}
		if startupTaint != "" {
			taints = append(taints, corev1.Taint{Key: startupTaint, Effect: corev1.TaintEffectNoSchedule})
		}
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pool": "blue"}, Annotations: map[string]string{"other.io/x": "1"}},
			Spec:       corev1.NodeSpec{Taints: taints},
		}
		n, err := c.Admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		require.NoError(t, err)
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now()}}
		_, err = c.Admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
}

// waitPolicy waits until the policy denies a foreign-node patch (policies
// take effect asynchronously, from kube-apiserver's informer).
func waitPolicy(t *testing.T, agent *kubernetes.Clientset, foreign string) {
	t.Helper()
	var last error
	ok := harness.Poll(30*time.Second, 200*time.Millisecond, func() bool {
		last = annotate(foreign, "nodetrust.io/probe", "1").do(agent)
		return deniedByPolicy(last)
	})
	require.True(t, ok, "policy not in force after 30 s; last: %v", last)
}

// untaint removes the taint key from node with the JSON patch `kubectl
// taint` and the agent send: a test of the taint's key at its current index,
// then its removal.
func untaint(node, key string) func(cs *kubernetes.Clientset) error {
	return func(cs *kubernetes.Clientset) error {
		n, err := cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		i := slices.IndexFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
		if i < 0 {
			return fmt.Errorf("node %s has no taint %s", node, key)
		}
		b := fmt.Sprintf(`[{"op":"test","path":"/spec/taints/%d/key","value":%q},{"op":"remove","path":"/spec/taints/%d"}]`, i, key, i)
		_, err = cs.CoreV1().Nodes().Patch(context.Background(), node, types.JSONPatchType, []byte(b), metav1.PatchOptions{})
		return err
	}
}

// grantNodeStatus lets the agent's ServiceAccount patch nodes/status (for
// its NodeTrustReady condition) when deploy/'s ClusterRole does not yet, so
// that the policy, not RBAC, is what the status cases meet.
func grantNodeStatus(t *testing.T, c *harness.Cluster) {
	t.Helper()
	ctx := context.Background()
	cr, err := c.Admin.RbacV1().ClusterRoles().Get(ctx, "nodetrust", metav1.GetOptions{})
	require.NoError(t, err)
	for _, r := range cr.Rules {
		if slices.Contains(r.Resources, "nodes/status") && slices.Contains(r.Verbs, "patch") {
			return
		}
	}
	t.Log("deploy/'s ClusterRole has no nodes/status patch: granted by the test")
	_, err = c.Admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "nodetrust-test-status"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = c.Admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "nodetrust-test-status"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "nodetrust-test-status"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: harness.AgentServiceAccount, Namespace: harness.AgentNamespace}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// requireTypeChecked: kube-controller-manager's policy status controller
// type-checked every expression of the
// policy against the Node schema without a warning (a misspelt field would
// show here, not as a denial).
func requireTypeChecked(t *testing.T, c *harness.Cluster) {
	t.Helper()
	var vap *admissionregistrationv1.ValidatingAdmissionPolicy
	require.True(t, harness.Poll(20*time.Second, 200*time.Millisecond, func() bool {
		var err error
		vap, err = c.Admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(context.Background(), policyName, metav1.GetOptions{})
		return err == nil && vap.Status.TypeChecking != nil
	}), "no type checking status")
	require.Empty(t, vap.Status.TypeChecking.ExpressionWarnings)
}

type policyCase struct {
	do      func(cs *kubernetes.Clientset) error
	allowed bool
}

func runPolicyCases(t *testing.T, agent *kubernetes.Clientset, cases map[string]policyCase) {
	t.Helper()
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := tc.do(agent)
			if tc.allowed {
				require.NoError(t, err)
				return
			}
			require.True(t, deniedByPolicy(err), "want the policy's denial, got %v", err)
		})
	}
}

// TestOwnNodePolicy: with deploy/ and deploy/admission applied, the agent's
// pod-bound token may patch only its own Node's nodetrust.io/ annotations
// and NodeTrustReady condition and remove its startup taint; every other
// change is denied by the policy (not by RBAC, which allows patch on every
// Node). The real agent, with the same token and --startup-taint, runs a
// sync, reports on its Node and removes the taint.
func TestOwnNodePolicy(t *testing.T) {
	harness.SkipUnlessReal(t)
	t.Parallel()
	c := harness.NewCluster(t)
	_, err := c.ApplyDeploy()
	require.NoError(t, err)
	out, err := c.Kubectl("apply", "-k", filepath.Join(RepoRoot(), "deploy", "admission"))
	require.NoError(t, err, out)
	grantNodeStatus(t, c)
	createNodes(t, c, startupTaint, "node-a", "node-b")
	tok := boundToken(t, c, harness.AgentNamespace, "node-a")
	agent := tokenClient(t, c, tok)

	// kube-apiserver v1.34 puts the Pod's node into the token (and into
	// userInfo.extra) with no feature gate: ServiceAccountTokenPodNodeInfo.
	review, err := agent.AuthenticationV1().SelfSubjectReviews().Create(context.Background(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.Equal(t, "system:serviceaccount:nodetrust-system:nodetrust", review.Status.UserInfo.Username)
	require.Equal(t, authenticationv1.ExtraValue{"node-a"}, review.Status.UserInfo.Extra[nodeNameExtra])
	t.Logf("pod-bound token extra: %v", review.Status.UserInfo.Extra)

	waitPolicy(t, agent, "node-b")
	// A token of the same ServiceAccount not bound to a Pod has no node.
	unbound := c.AgentClient(t)

	runPolicyCases(t, agent, map[string]policyCase{
		"own nodetrust.io/ annotation": {annotate("node-a", "nodetrust.io/state", "Ready").do, true},
		"add and remove own nodetrust.io/ annotation": {func(cs *kubernetes.Clientset) error {
			if err := annotate("node-a", "nodetrust.io/probe", "1").do(cs); err != nil {
				return err
			}
			return patch{node: "node-a", body: map[string]any{"metadata": map[string]any{"annotations": map[string]any{"nodetrust.io/probe": nil}}}}.do(cs)
		}, true},
		"own NodeTrustReady condition":  {condition("node-a", "NodeTrustReady", "True").do, true},
		"another Node's nodetrust.io/":  {annotate("node-b", "nodetrust.io/state", "Ready").do, false},
		"another Node's NodeTrustReady": {condition("node-b", "NodeTrustReady", "True").do, false},
		"another annotation":            {annotate("node-a", "other.io/x", "2").do, false},
		"remove another annotation":     {patch{node: "node-a", body: map[string]any{"metadata": map[string]any{"annotations": map[string]any{"other.io/x": nil}}}}.do, false},
		"a label":                       {patch{node: "node-a", body: map[string]any{"metadata": map[string]any{"labels": map[string]any{"pool": "red"}}}}.do, false},
		"a new label":                   {patch{node: "node-a", body: map[string]any{"metadata": map[string]any{"labels": map[string]any{"nodetrust.io/x": "1"}}}}.do, false},
		"cordon":                        {patch{node: "node-a", body: map[string]any{"spec": map[string]any{"unschedulable": true}}}.do, false},
		"another Node's startup taint":  {untaint("node-b", startupTaint), false},
		"remove another taint":          {untaint("node-a", "dedicated"), false},
		"the Ready condition":           {condition("node-a", "Ready", "False").do, false},
		"an address":                    {patch{node: "node-a", subresource: "status", body: map[string]any{"status": map[string]any{"addresses": []any{map[string]any{"type": "InternalIP", "address": "10.9.9.9"}}}}}.do, false},
		"a finalizer":                   {patch{node: "node-a", body: map[string]any{"metadata": map[string]any{"finalizers": []any{"x.io/y"}}}}.do, false},
		"unbound token, own nodetrust.io/": {func(*kubernetes.Clientset) error {
			return annotate("node-a", "nodetrust.io/state", "Ready").do(unbound)
		}, false},
		"admin (not matched) changes a label": {func(*kubernetes.Clientset) error {
			return patch{node: "node-b", body: map[string]any{"metadata": map[string]any{"labels": map[string]any{"pool": "green"}}}}.do(c.Admin)
		}, true},
	})

	// The agent itself, with this token, applies a source and reports.
	ctx := context.Background()
	ca := harness.NewCA("policy-ca")
	_, err = c.Admin.CoreV1().Secrets(harness.AgentNamespace).Create(ctx, harness.Secret(harness.AgentNamespace, "policy-ca", ca.PEM, "registry.example:5000"), metav1.CreateOptions{})
	require.NoError(t, err)
	kc := filepath.Join(t.TempDir(), "agent.kubeconfig")
	require.NoError(t, harness.WriteKubeconfig(kc, c.Server, c.CAPEM, tok, harness.AgentNamespace))
	a := harness.StartAgent(t, harness.AgentOptions{Kubeconfig: kc, Node: "node-a", Root: harness.NewHostRoot(t), Extra: []string{"--verify=false", "--startup-taint", startupTaint}})
	a.WaitReady(t, 30*time.Second)
	var n *corev1.Node
	require.True(t, harness.Poll(20*time.Second, 100*time.Millisecond, func() bool {
		n, err = c.Admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		return err == nil && n.Annotations["nodetrust.io/state"] == "Ready" && n.Annotations["nodetrust.io/sources"] == "1" &&
			slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool {
				return c.Type == "NodeTrustReady" && c.Status == corev1.ConditionTrue
			}) && !hasTaint(n, startupTaint)
	}), "agent's report on node-a: %v %v %v\n%s", n.Annotations, n.Status.Conditions, n.Spec.Taints, a.Log())
	require.NotContains(t, a.Log(), policyName, "the agent's own requests are never denied")
	require.True(t, hasTaint(n, "dedicated"), "other taints stay")
	b, err := c.Admin.CoreV1().Nodes().Get(ctx, "node-b", metav1.GetOptions{})
	require.NoError(t, err)
	require.NotContains(t, b.Annotations, "nodetrust.io/state")
	require.Equal(t, "green", b.Labels["pool"])
	require.True(t, hasTaint(b, startupTaint), "another Node's startup taint stays")

	t.Run("kubectl nodetrust status", func(t *testing.T) { pluginStatus(t, c) })
}

// pluginStatus runs the real kubectl with the binary on $PATH as
// kubectl-nodetrust (a symlink, as `make plugin` makes it): kubectl lists
// the plugin, and `kubectl nodetrust status` reads the Nodes through
// $KUBECONFIG: node-a (its agent reported) Ready, exit 0; with node-b (no
// agent) exit 1.
func pluginStatus(t *testing.T, c *harness.Cluster) {
	dir := t.TempDir()
	require.NoError(t, os.Symlink(harness.Binary(t), filepath.Join(dir, "kubectl-nodetrust")))
	kubectl := func(args ...string) (string, error) {
		cmd := exec.Command(harness.K8sBin("kubectl"), args...)
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "KUBECONFIG="+c.AdminKubeconfig)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := kubectl("plugin", "list")
	require.NoError(t, err, out)
	require.Contains(t, out, filepath.Join(dir, "kubectl-nodetrust"))

	_, err = c.Admin.CoreV1().Nodes().Patch(context.Background(), "node-a", types.MergePatchType, []byte(`{"metadata":{"labels":{"plugin-test":"a"}}}`), metav1.PatchOptions{})
	require.NoError(t, err)
	out, err = kubectl("nodetrust", "status", "--selector", "plugin-test=a")
	require.NoError(t, err, out)
	require.Contains(t, out, "1 node: 1 Ready")
	t.Logf("kubectl nodetrust status:\n%s", out)

	out, err = kubectl("nodetrust", "status", "--selector", "pool")
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, out)
	require.Equal(t, 1, exit.ExitCode(), out)
	require.Contains(t, out, "1 not reporting")

	out, err = kubectl("nodetrust", "agent")
	require.ErrorAs(t, err, &exit, out)
	require.Equal(t, 2, exit.ExitCode(), out)
	require.Contains(t, out, "usage: kubectl nodetrust")
}

func hasTaint(n *corev1.Node, key string) bool {
	return slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
}

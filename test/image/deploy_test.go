package image

// Renders deploy/ (the `kubectl apply -k deploy/` base) with kustomize's own
// library, decodes every object strictly into the Kubernetes API types and
// checks what the agent relies on. No cluster needed.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

const (
	deployDir = "../../deploy"
	namespace = "nodetrust-system"
	saName    = "nodetrust"
)

// rendered is the decoded output of one kustomize build.
type rendered struct {
	objs []runtime.Object
}

// renderDir builds the kustomization in dir of fsys and decodes each object
// strictly (unknown or duplicate fields fail).
func renderDir(t *testing.T, fsys filesys.FileSystem, dir string) rendered {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var r rendered
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		r.objs = append(r.objs, decodeStrict(t, y))
	}
	return r
}

func decodeStrict(t *testing.T, y []byte) runtime.Object {
	t.Helper()
	codecs := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
	obj, _, err := codecs.UniversalDeserializer().Decode(y, nil, nil)
	if err != nil {
		t.Fatalf("strict decode:\n%s\n%v", y, err)
	}
	return obj
}

// only returns the single object of type T, failing when there is not exactly one.
func only[T runtime.Object](t *testing.T, r rendered) T {
	t.Helper()
	var found []T
	for _, o := range r.objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, got %d", zero, len(found))
	}
	return found[0]
}

func renderBase(t *testing.T) rendered {
	t.Helper()
	return renderDir(t, filesys.MakeFsOnDisk(), deployDir)
}

func TestDeployObjects(t *testing.T) {
	t.Parallel()
	r := renderBase(t)
	var got []string
	for _, o := range r.objs {
		got = append(got, typeName(o))
	}
	slices.Sort(got)
	want := []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace",
		"ResourceQuota", "Role", "RoleBinding", "ServiceAccount"}
	if !slices.Equal(got, want) {
		t.Fatalf("objects: got %v, want %v (example sources must stay out of the base)", got, want)
	}
	ns := only[*corev1.Namespace](t, r)
	if ns.Name != namespace {
		t.Errorf("namespace %q, want %q", ns.Name, namespace)
	}
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace must allow privileged pods: %v", ns.Labels)
	}
	for _, o := range r.objs {
		m := metaOf(t, o)
		switch o.(type) {
		case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
			if m.GetNamespace() != "" {
				t.Errorf("%T %s: cluster-scoped object with a namespace", o, m.GetName())
			}
		default:
			if m.GetNamespace() != namespace {
				t.Errorf("%T %s: namespace %q, want %q", o, m.GetName(), m.GetNamespace(), namespace)
			}
		}
		if m.GetLabels()["app.kubernetes.io/part-of"] != "nodetrust" {
			t.Errorf("%T %s: no app.kubernetes.io/part-of label", o, m.GetName())
		}
	}
	quota := only[*corev1.ResourceQuota](t, r)
	sel := quota.Spec.ScopeSelector
	if sel == nil || len(sel.MatchExpressions) != 1 || sel.MatchExpressions[0].ScopeName != corev1.ResourceQuotaScopePriorityClass ||
		!slices.Contains(sel.MatchExpressions[0].Values, "system-node-critical") {
		t.Errorf("resource quota must admit system-node-critical pods: %+v", sel)
	}
}

func TestDeployRBAC(t *testing.T) {
	t.Parallel()
	r := renderBase(t)
	cr := only[*rbacv1.ClusterRole](t, r)
	for _, rule := range cr.Rules {
		for _, res := range rule.Resources {
			if res != "nodes" && res != "nodes/status" {
				t.Errorf("ClusterRole grants %q cluster-wide (rule %+v); only nodes (and nodes/status) may be", res, rule)
			}
		}
		if slices.Contains(rule.Verbs, "*") || slices.Contains(rule.APIGroups, "*") || len(rule.NonResourceURLs) > 0 {
			t.Errorf("ClusterRole wildcard or non-resource rule: %+v", rule)
		}
	}
	if !allows(cr.Rules, "", "nodes", "get", "list", "watch", "patch") {
		t.Errorf("ClusterRole must allow get/list/watch/patch on nodes: %+v", cr.Rules)
	}
	if !allows(cr.Rules, "", "nodes/status", "patch") || allows(cr.Rules, "", "nodes/status", "update") {
		t.Errorf("ClusterRole must allow patch, and only patch, on nodes/status (the NodeTrustReady condition): %+v", cr.Rules)
	}
	if allows(cr.Rules, "", "nodes", "update") || allows(cr.Rules, "", "nodes", "delete") {
		t.Errorf("ClusterRole allows more than patch on nodes: %+v", cr.Rules)
	}

	role := only[*rbacv1.Role](t, r)
	for _, want := range []struct {
		group, resource string
		verbs           []string
	}{
		{"", "secrets", []string{"get", "list", "watch"}},
		{"", "configmaps", []string{"get", "list", "watch"}},
		{"", "events", []string{"create"}},
		{"coordination.k8s.io", "leases", []string{"get", "create", "update"}},
	} {
		if !allows(role.Rules, want.group, want.resource, want.verbs...) {
			t.Errorf("Role must allow %v on %s.%s", want.verbs, want.resource, want.group)
		}
	}
	granted := 0
	for _, rule := range role.Rules {
		granted += len(rule.APIGroups) * len(rule.Resources) * len(rule.Verbs)
	}
	if granted != 2*3+1+3 { // secrets+configmaps get/list/watch, events create, leases get/create/update
		t.Errorf("Role grants %d (group, resource, verb) triples, want exactly 10: %+v", granted, role.Rules)
	}
	for _, verb := range []string{"create", "update", "patch", "delete"} {
		if allows(role.Rules, "", "secrets", verb) || allows(role.Rules, "", "configmaps", verb) {
			t.Errorf("Role may %s sources; it must only read them", verb)
		}
	}

	rb := only[*rbacv1.RoleBinding](t, r)
	crb := only[*rbacv1.ClusterRoleBinding](t, r)
	sa := only[*corev1.ServiceAccount](t, r)
	checkBinding(t, "RoleBinding", rb.RoleRef, "Role", role.Name, rb.Subjects, sa)
	checkBinding(t, "ClusterRoleBinding", crb.RoleRef, "ClusterRole", cr.Name, crb.Subjects, sa)
}

func checkBinding(t *testing.T, what string, ref rbacv1.RoleRef, kind, name string, subjects []rbacv1.Subject, sa *corev1.ServiceAccount) {
	t.Helper()
	if ref.Kind != kind || ref.Name != name || ref.APIGroup != rbacv1.GroupName {
		t.Errorf("%s roleRef %+v, want %s %s", what, ref, kind, name)
	}
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace}}
	if !slices.Equal(subjects, want) {
		t.Errorf("%s subjects %+v, want %+v", what, subjects, want)
	}
}

// allows reports whether some rule grants every verb on group/resource.
func allows(rules []rbacv1.PolicyRule, group, resource string, verbs ...string) bool {
	for _, verb := range verbs {
		ok := false
		for _, r := range rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) &&
				(slices.Contains(r.Verbs, verb) || slices.Contains(r.Verbs, "*")) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func TestDeployDaemonSet(t *testing.T) {
	t.Parallel()
	r := renderBase(t)
	ds := only[*appsv1.DaemonSet](t, r)
	sa := only[*corev1.ServiceAccount](t, r)
	pod := ds.Spec.Template.Spec

	if pod.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, want %q", pod.ServiceAccountName, sa.Name)
	}
	if pod.AutomountServiceAccountToken == nil || !*pod.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken must be true (in-cluster config)")
	}
	if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork with dnsPolicy ClusterFirstWithHostNet: the agent starts before any CNI (hostNetwork %v, dnsPolicy %q)", pod.HostNetwork, pod.DNSPolicy)
	}
	if pod.HostPID || pod.HostIPC {
		t.Error("no host PID or IPC namespace")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds != 30 {
		t.Error("terminationGracePeriodSeconds must be 30")
	}
	tolerateAll := false
	for _, tol := range pod.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			tolerateAll = true
		}
	}
	if !tolerateAll {
		t.Errorf("must tolerate every taint: %+v", pod.Tolerations)
	}
	if !labelsMatch(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Errorf("selector %v does not match template labels %v", ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
	}
	if _, ok := ds.Spec.Selector.MatchLabels["app.kubernetes.io/part-of"]; ok {
		t.Error("the kustomization's common label leaked into the immutable selector")
	}
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 || ru.MaxSurge.Type == intstr.String {
		t.Errorf("RollingUpdate with maxSurge 0 (one agent per node): %+v", ds.Spec.UpdateStrategy)
	}

	var hostRootVolume string
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			if v.HostPath.Path != "/" || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectory {
				t.Errorf("hostPath %s: only the host's / (type Directory) may be mounted: %+v", v.Name, v.HostPath)
			}
			hostRootVolume = v.Name
		}
	}
	if hostRootVolume == "" {
		t.Fatal("no hostPath / volume")
	}

	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != "ghcr.io/nodetrust/nodetrust:latest" {
		t.Errorf("image %q", c.Image)
	}
	if !slices.Equal(c.Args, []string{"agent"}) || len(c.Command) != 0 {
		t.Errorf("command %v args %v, want the image's entrypoint with args [agent]", c.Command, c.Args)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["NODE_NAME"] != "spec.nodeName" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("env NODE_NAME/POD_NAMESPACE from the downward API: %+v", c.Env)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("container must be privileged")
	}
	if sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation=false contradicts privileged and is rejected by the API")
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == hostRootVolume {
			mounted = m.MountPath == "/host" && !m.ReadOnly
		}
	}
	if !mounted {
		t.Errorf("host / must be mounted read-write at /host (--host-root default): %+v", c.VolumeMounts)
	}

	var healthPort int32
	for _, p := range c.Ports {
		if p.Name == "health" {
			healthPort = p.ContainerPort
		}
	}
	if healthPort != 9713 {
		t.Errorf("port named health must be 9713 (--health-addr default): %+v", c.Ports)
	}
	checkProbe(t, "readiness", c.ReadinessProbe, "/readyz")
	checkProbe(t, "liveness", c.LivenessProbe, "/healthz")

	res := c.Resources
	if res.Requests.Cpu().String() != "10m" || res.Requests.Memory().String() != "32Mi" || res.Limits.Memory().String() != "128Mi" {
		t.Errorf("resources %+v", res)
	}
	if !res.Limits.Cpu().IsZero() {
		t.Error("no CPU limit: throttling would only slow syncs and probes")
	}
}

func checkProbe(t *testing.T, what string, p *corev1.Probe, path string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s probe: want httpGet %s", what, path)
		return
	}
	if p.HTTPGet.Path != path || p.HTTPGet.Port != intstr.FromString("health") {
		t.Errorf("%s probe: %s on %s, want %s on port health", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path)
	}
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

// An overlay can move everything to another namespace and pin an image tag;
// the bindings follow the ServiceAccount.
func TestDeployOverlay(t *testing.T) {
	t.Parallel()
	fsys := filesys.MakeFsInMemory()
	entries, err := os.ReadDir(deployDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(deployDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := fsys.WriteFile(filepath.Join("/base", e.Name()), data); err != nil {
			t.Fatal(err)
		}
	}
	overlay := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: platform-trust
resources: ["../base"]
images:
  - name: ghcr.io/nodetrust/nodetrust
    newName: registry.example.internal:5000/nodetrust
    newTag: v1.2.3
`
	if err := fsys.WriteFile("/overlay/kustomization.yaml", []byte(overlay)); err != nil {
		t.Fatal(err)
	}
	r := renderDir(t, fsys, "/overlay")
	if img := only[*appsv1.DaemonSet](t, r).Spec.Template.Spec.Containers[0].Image; img != "registry.example.internal:5000/nodetrust:v1.2.3" {
		t.Errorf("image override: got %q", img)
	}
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: saName, Namespace: "platform-trust"}}
	if s := only[*rbacv1.RoleBinding](t, r).Subjects; !slices.Equal(s, want) {
		t.Errorf("RoleBinding subjects %+v, want %+v", s, want)
	}
	if s := only[*rbacv1.ClusterRoleBinding](t, r).Subjects; !slices.Equal(s, want) {
		t.Errorf("ClusterRoleBinding subjects %+v, want %+v", s, want)
	}
	if ns := only[*corev1.Namespace](t, r).Name; ns != "platform-trust" {
		t.Errorf("Namespace object %q, want platform-trust", ns)
	}
}

// The examples decode strictly; the labelled Secret is a source the agent
// installed by the base would read.
func TestDeployExamples(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join(deployDir, "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	sources := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			obj := decodeStrict(t, []byte(doc))
			if s, ok := obj.(*corev1.Secret); ok {
				if s.Labels["nodetrust.io/ca"] != "true" || s.Namespace != namespace {
					t.Errorf("%s: Secret %s/%s is not a source the base agent reads", f, s.Namespace, s.Name)
				}
				if !strings.Contains(s.StringData["ca.crt"], "BEGIN CERTIFICATE") {
					t.Errorf("%s: no certificate in ca.crt", f)
				}
				sources++
			}
			if rb, ok := obj.(*rbacv1.RoleBinding); ok {
				want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: saName, Namespace: namespace}}
				if !slices.Equal(rb.Subjects, want) {
					t.Errorf("%s: subjects %+v", f, rb.Subjects)
				}
			}
		}
	}
	if sources == 0 {
		t.Error("no labelled Secret among the examples")
	}
}

func typeName(o runtime.Object) string {
	gvks, _, err := scheme.Scheme.ObjectKinds(o)
	if err != nil || len(gvks) == 0 {
		return "?"
	}
	return gvks[0].Kind
}

type objectMeta interface {
	GetName() string
	GetNamespace() string
	GetLabels() map[string]string
}

func metaOf(t *testing.T, o runtime.Object) objectMeta {
	t.Helper()
	m, ok := o.(objectMeta)
	if !ok {
		t.Fatalf("%T has no object metadata", o)
	}
	return m
}

// examples/deploy/manage-containerd-config and examples/deploy/uninstall are
// the base with one flag more; everything else, RBAC included, is the base's.
// (They live outside deploy/: kustomize refuses a base that contains its
// overlay.)
func TestDeployFlagOverlays(t *testing.T) {
	t.Parallel()
	base := renderBase(t)
	for dir, args := range map[string][]string{
		"manage-containerd-config": {"agent", "--manage-containerd-config"},
		"uninstall":                {"agent", "--uninstall"},
		"startup-taint":            {"agent", "--startup-taint", "nodetrust.io/agent-not-ready"},
	} {
		r := renderDir(t, filesys.MakeFsOnDisk(), filepath.Join("../../examples/deploy", dir))
		ds := only[*appsv1.DaemonSet](t, r)
		if got := ds.Spec.Template.Spec.Containers[0].Args; !slices.Equal(got, args) {
			t.Errorf("%s: args %v, want %v", dir, got, args)
		}
		if len(r.objs) != len(base.objs) {
			t.Errorf("%s: %d objects, the base has %d", dir, len(r.objs), len(base.objs))
		}
		baseDS := only[*appsv1.DaemonSet](t, base).DeepCopy()
		baseDS.Spec.Template.Spec.Containers[0].Args = args
		if !equalObjects(baseDS, ds) {
			t.Errorf("%s: the DaemonSet differs from the base in more than its args", dir)
		}
		for _, o := range r.objs {
			if _, isDS := o.(*appsv1.DaemonSet); isDS {
				continue
			}
			if !slices.ContainsFunc(base.objs, func(b runtime.Object) bool { return equalObjects(b, o) }) {
				t.Errorf("%s: %s %s differs from the base", dir, typeName(o), metaOf(t, o).GetName())
			}
		}
	}
}

func equalObjects(a, b runtime.Object) bool {
	return equality.Semantic.DeepEqual(a, b)
}

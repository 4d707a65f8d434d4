package chart

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := Load(ChartDir())
	require.NoError(t, err)
	return c
}

func render(t *testing.T, c *chart.Chart, vals map[string]any) []Object {
	t.Helper()
	objs, _, err := Render(c, vals, ReleaseNamespace)
	require.NoError(t, err)
	return objs
}

// deployObjects is what deploy/ ships: the base and the Own-Node admission policy.
func deployObjects(t *testing.T) []Object {
	t.Helper()
	root := RepoRoot()
	objs, err := Kustomize(filepath.Join(root, "deploy"), filepath.Join(root, "deploy", "admission"))
	require.NoError(t, err)
	return objs
}

func find(objs []Object, key string) Object {
	for _, o := range objs {
		if o.Key() == key {
			return o
		}
	}
	return nil
}

// strictDecode decodes every object of a core API group strictly (unknown
// or duplicate fields fail); monitoring.coreos.com objects are skipped.
func strictDecode(t *testing.T, objs []Object) {
	t.Helper()
	codecs := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
	for _, o := range objs {
		if strings.HasPrefix(o["apiVersion"].(string), "monitoring.coreos.com/") {
			continue
		}
		_, _, err := codecs.UniversalDeserializer().Decode([]byte(o.YAML()), nil, nil)
		require.NoError(t, err, "strict decode of %s", o.Key())
	}
}

// TestDefaultsRenderDeploy: with default values the chart renders exactly
// deploy/'s objects (same keys, same content), Helm's three bookkeeping
// labels aside.
func TestDefaultsRenderDeploy(t *testing.T) {
	want := deployObjects(t)
	got := render(t, loadChart(t), nil)
	strictDecode(t, got)
	strictDecode(t, want)

	var wantKeys, gotKeys []string
	for _, o := range want {
		wantKeys = append(wantKeys, o.Key())
	}
	for _, o := range got {
		gotKeys = append(gotKeys, o.Key())
		l := o.Labels()
		for _, k := range HelmLabels {
			require.Contains(t, l, k, "%s lacks Helm's label %s", o.Key(), k)
			delete(l, k)
		}
	}
	require.Equal(t, wantKeys, gotKeys)
	for i := range want {
		require.Equal(t, want[i].YAML(), got[i].YAML(), want[i].Key())
	}
}

// TestLint: Helm's linter finds no warning or error (what `helm lint
// --strict` fails on), with the defaults and with every toggle on.
func TestLint(t *testing.T) {
	for name, vals := range map[string]map[string]any{
		"defaults": nil,
		"everything": {
			"watchNamespaces": []any{"team-a", "team-b"},
			"startupTaint":    "nodetrust.io/agent-not-ready",
			"metrics": map[string]any{
				"podMonitor":     map[string]any{"enabled": true},
				"serviceMonitor": map[string]any{"enabled": true},
				"prometheusRule": map[string]any{"enabled": true},
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			l := lint.AllWithKubeVersion(ChartDir(), vals, ReleaseNamespace, nil)
			var msgs []string
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					msgs = append(msgs, m.Error())
				}
			}
			require.Empty(t, msgs)
		})
	}
}

// TestSchemaRejects: values.schema.json refuses typos and wrong types, as
// helm install would.
func TestSchemaRejects(t *testing.T) {
	c := loadChart(t)
	for name, tc := range map[string]struct {
		vals map[string]any
		want string
	}{
		"top-level typo":    {map[string]any{"nodeSelecter": map[string]any{}}, "nodeSelecter"},
		"nested typo":       {map[string]any{"image": map[string]any{"tga": "v1"}}, "tga"},
		"monitor typo":      {map[string]any{"metrics": map[string]any{"podMonitor": map[string]any{"enable": true}}}, "enable"},
		"restart value":     {map[string]any{"restart": "always"}, "restart"},
		"restarts zero":     {map[string]any{"maxConcurrentRestarts": 0}, "maxConcurrentRestarts"},
		"verify string":     {map[string]any{"verify": "yes"}, "verify"},
		"taint with effect": {map[string]any{"startupTaint": "nodetrust.io/agent-not-ready:NoSchedule"}, "startupTaint"},
		"extra arg no dash": {map[string]any{"extraArgs": []any{"resync=1m"}}, "extraArgs"},
		"bad namespace":     {map[string]any{"watchNamespaces": []any{"Team_A"}}, "watchNamespaces"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Render(c, tc.vals, ReleaseNamespace)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
	_, _, err := Render(c, map[string]any{"startupTaint": "nodetrust.io/agent-not-ready", "extraArgs": []any{"--resync=1m"}}, ReleaseNamespace)
	require.NoError(t, err, "valid values")
}

func daemonSet(t *testing.T, objs []Object) map[string]any {
	t.Helper()
	ds := find(objs, "DaemonSet/"+AgentNamespace+"/nodetrust")
	require.NotNil(t, ds)
	return ds
}

func podSpec(ds map[string]any) map[string]any {
	return ds["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
}

func container(ds map[string]any) map[string]any {
	return podSpec(ds)["containers"].([]any)[0].(map[string]any)
}

// TestValues: each value reaches the objects it is about.
func TestValues(t *testing.T) {
	c := loadChart(t)
	for name, tc := range map[string]struct {
		vals  map[string]any
		check func(t *testing.T, objs []Object)
	}{
		"agent flags": {
			map[string]any{"restart": "never", "maxConcurrentRestarts": 3, "manageContainerdConfig": true,
				"startupTaint": "example.com/cas-pending", "verify": false, "extraArgs": []any{"--resync=1m"}},
			func(t *testing.T, objs []Object) {
				require.Equal(t, []any{"agent", "--restart=never", "--max-concurrent-restarts=3", "--manage-containerd-config",
					"--startup-taint=example.com/cas-pending", "--verify=false", "--resync=1m"}, container(daemonSet(t, objs))["args"])
				vap := find(objs, "ValidatingAdmissionPolicy//nodetrust-own-node")
				require.Equal(t, "['nodetrust.io/agent-not-ready', 'example.com/cas-pending']", policyVariable(t, vap, "startupTaintKeys"))
			},
		},
		"startup taint nodetrust's own": {
			map[string]any{"startupTaint": "nodetrust.io/agent-not-ready"},
			func(t *testing.T, objs []Object) {
				vap := find(objs, "ValidatingAdmissionPolicy//nodetrust-own-node")
				require.Equal(t, "['nodetrust.io/agent-not-ready']", policyVariable(t, vap, "startupTaintKeys"))
			},
		},
		"uninstall": {
			map[string]any{"uninstall": true},
			func(t *testing.T, objs []Object) {
				require.Equal(t, []any{"agent", "--uninstall"}, container(daemonSet(t, objs))["args"])
			},
		},
		"image, scheduling, resources, no host network": {
			map[string]any{
				"image":        map[string]any{"repository": "registry.example/nt", "tag": "v0.2.0", "pullPolicy": "Always"},
				"nodeSelector": map[string]any{"pool": "gpu"}, "tolerations": []any{map[string]any{"key": "gpu", "operator": "Exists"}},
				"resources":   map[string]any{"limits": map[string]any{"memory": "256Mi"}},
				"hostNetwork": false, "healthPort": 8080,
			},
			func(t *testing.T, objs []Object) {
				ds := daemonSet(t, objs)
				ctr, spec := container(ds), podSpec(ds)
				require.Equal(t, "registry.example/nt:v0.2.0", ctr["image"])
				require.Equal(t, "Always", ctr["imagePullPolicy"])
				// Helm merges maps: the default kubernetes.io/os stays (set it to null to drop it).
				require.Equal(t, map[string]any{"kubernetes.io/os": "linux", "pool": "gpu"}, spec["nodeSelector"])
				require.Equal(t, []any{map[string]any{"key": "gpu", "operator": "Exists"}}, spec["tolerations"])
				require.Equal(t, map[string]any{"limits": map[string]any{"memory": "256Mi"},
					"requests": map[string]any{"cpu": "10m", "memory": "32Mi"}}, ctr["resources"])
				require.NotContains(t, spec, "hostNetwork")
				require.NotContains(t, spec, "dnsPolicy")
				require.Equal(t, []any{"agent", "--health-addr=:8080"}, ctr["args"])
				require.Equal(t, []any{map[string]any{"name": "health", "containerPort": float64(8080), "protocol": "TCP"}}, ctr["ports"])
			},
		},
		"watch namespaces": {
			map[string]any{"watchNamespaces": []any{"team-a", "team-b"}},
			func(t *testing.T, objs []Object) {
				require.Equal(t, []any{"agent", "--namespaces=nodetrust-system,team-a,team-b"}, container(daemonSet(t, objs))["args"])
				for _, ns := range []string{"team-a", "team-b"} {
					role := find(objs, "Role/"+ns+"/nodetrust")
					require.NotNil(t, role, ns)
					require.NotContains(t, role.YAML(), "leases", "restart slots live in the release namespace only")
					rb := find(objs, "RoleBinding/"+ns+"/nodetrust")
					require.NotNil(t, rb, ns)
					require.Equal(t, []any{map[string]any{"kind": "ServiceAccount", "name": "nodetrust", "namespace": AgentNamespace}}, rb["subjects"])
				}
				require.Contains(t, find(objs, "Role/"+AgentNamespace+"/nodetrust").YAML(), "leases")
			},
		},
		"monitoring": {
			map[string]any{"metrics": map[string]any{
				"podMonitor":     map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
				"serviceMonitor": map[string]any{"enabled": true},
				"prometheusRule": map[string]any{"enabled": true},
			}},
			func(t *testing.T, objs []Object) {
				pm := find(objs, "PodMonitor/"+AgentNamespace+"/nodetrust")
				require.NotNil(t, pm)
				require.Equal(t, "prom", pm.Labels()["release"])
				require.NotNil(t, find(objs, "ServiceMonitor/"+AgentNamespace+"/nodetrust"))
				require.NotNil(t, find(objs, "Service/"+AgentNamespace+"/nodetrust-metrics"))
				pr := find(objs, "PrometheusRule/"+AgentNamespace+"/nodetrust")
				require.NotNil(t, pr)
				rules := readAlertsFile(t)
				require.Equal(t, rules, pr["spec"])
			},
		},
		"agent namespace from the release": {
			map[string]any{"namespace": "", "createNamespace": false},
			func(t *testing.T, objs []Object) {
				require.NotNil(t, find(objs, "DaemonSet/"+ReleaseNamespace+"/nodetrust"))
				require.Nil(t, find(objs, "DaemonSet/"+AgentNamespace+"/nodetrust"))
			},
		},
		"no namespace, no policy, no quota": {
			map[string]any{"createNamespace": false, "admissionPolicy": map[string]any{"enabled": false}, "criticalPodsQuota": false},
			func(t *testing.T, objs []Object) {
				for _, o := range objs {
					require.NotContains(t, []string{"Namespace", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ResourceQuota"}, o["kind"])
				}
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			objs := render(t, c, tc.vals)
			strictDecode(t, objs)
			tc.check(t, objs)
		})
	}
}

// TestNotes: NOTES.txt names the rollout, `nodetrust status` and the
// uninstall order.
func TestNotes(t *testing.T) {
	c := loadChart(t)
	_, notes, err := Render(c, nil, ReleaseNamespace)
	require.NoError(t, err)
	require.Contains(t, notes, "kubectl -n nodetrust-system rollout status daemonset/nodetrust")
	require.Contains(t, notes, "nodetrust status --wait")
	require.Contains(t, notes, "--set uninstall=true")
	_, notes, err = Render(c, map[string]any{"uninstall": true}, ReleaseNamespace)
	require.NoError(t, err)
	require.Contains(t, notes, "UNINSTALL MODE")
	require.Contains(t, notes, "helm uninstall nodetrust -n default")
}

// previousChart extracts, from git history, the newest commit's chart whose
// Chart.yaml version differs from the current one.
func previousChart(t *testing.T, current string) (dir, version string) {
	t.Helper()
	root := RepoRoot()
	chartYAML := "deploy/chart/nodetrust/Chart.yaml"
	out, err := exec.Command("git", "-C", root, "log", "--format=%H", "--", chartYAML).Output()
	if err != nil {
		t.Skipf("no git history: %v", err)
	}
	for _, commit := range strings.Fields(string(out)) {
		b, err := exec.Command("git", "-C", root, "show", commit+":"+chartYAML).Output()
		if err != nil {
			continue
		}
		var meta chart.Metadata
		require.NoError(t, yaml.Unmarshal(b, &meta))
		if meta.Version == current {
			continue
		}
		dir = t.TempDir()
		cmd := exec.Command("sh", "-c", "git -C "+root+" archive "+commit+" deploy/chart/nodetrust | tar -x -C "+dir)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return filepath.Join(dir, "deploy", "chart", "nodetrust"), meta.Version
	}
	t.Skipf("no earlier chart version than %s in git history", current)
	return "", ""
}

// TestUpgradeKeepsSelector: the previous chart version (from git) and this
// one render the same DaemonSet selector and pod template labels, so
// `helm upgrade` never hits the immutable-selector error.
func TestUpgradeKeepsSelector(t *testing.T) {
	c := loadChart(t)
	dir, prev := previousChart(t, c.Metadata.Version)
	old, err := Load(dir)
	require.NoError(t, err)
	t.Logf("previous chart %s, current %s", prev, c.Metadata.Version)
	// Chart 0.1.0 put everything into the release's namespace.
	oldObjs, _, err := Render(old, nil, AgentNamespace)
	require.NoError(t, err)
	oldDS, newDS := daemonSet(t, oldObjs), daemonSet(t, render(t, c, nil))
	require.Equal(t, oldDS["spec"].(map[string]any)["selector"], newDS["spec"].(map[string]any)["selector"])
	require.Equal(t, oldDS["spec"].(map[string]any)["template"].(map[string]any)["metadata"],
		newDS["spec"].(map[string]any)["template"].(map[string]any)["metadata"])
}

func readAlertsFile(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ChartDir(), "files", "alerts.yaml"))
	require.NoError(t, err)
	v, err := chartutil.ReadValues(b)
	require.NoError(t, err)
	return v
}

// TestMonitoringExamples: examples/monitoring holds the chart's PodMonitor
// and PrometheusRule specs, for clusters installed from deploy/.
func TestMonitoringExamples(t *testing.T) {
	objs := render(t, loadChart(t), map[string]any{"metrics": map[string]any{
		"podMonitor": map[string]any{"enabled": true}, "prometheusRule": map[string]any{"enabled": true},
	}})
	for _, name := range []string{"prometheusrule.yaml", "podmonitor.yaml"} {
		b, err := os.ReadFile(filepath.Join(RepoRoot(), "examples", "monitoring", name))
		require.NoError(t, err)
		ex, err := parse(string(b))
		require.NoError(t, err)
		chartObj := find(objs, ex.Key())
		require.NotNil(t, chartObj, ex.Key())
		require.Equal(t, Object(chartObj["spec"].(map[string]any)).YAML(), Object(ex["spec"].(map[string]any)).YAML(), name)
	}
}

// policyVariable returns the expression of a ValidatingAdmissionPolicy's variable.
func policyVariable(t *testing.T, vap Object, name string) string {
	t.Helper()
	require.NotNil(t, vap)
	for _, v := range vap["spec"].(map[string]any)["variables"].([]any) {
		if v := v.(map[string]any); v["name"] == name {
			return v["expression"].(string)
		}
	}
	t.Fatalf("no variable %s", name)
	return ""
}

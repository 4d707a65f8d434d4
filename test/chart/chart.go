// Package chart renders nodetrust's Helm chart (deploy/chart/nodetrust) with
// Helm's own Go library and the kustomize base (deploy/) with kustomize's, so
// tests can compare them object by object, lint the chart, check its values
// schema, install it on a real kube-apiserver (test/harness) and
// test the alert rules with Prometheus's Go module. It is a separate module
// so that Helm and Prometheus never enter the main go.mod.
package chart

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// The release the tests install: its record lives in ReleaseNamespace, the
// agent's objects in AgentNamespace (the chart's default `namespace`, which
// deploy/ uses).
const (
	ReleaseName      = "nodetrust"
	ReleaseNamespace = "default"
	AgentNamespace   = "nodetrust-system"
)

// HelmLabels are the labels the chart adds to deploy/'s for Helm's
// bookkeeping; everything else must equal deploy/.
var HelmLabels = []string{"app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "helm.sh/chart"}

// Object is one rendered Kubernetes object as generic YAML data.
type Object map[string]any

// Key is kind/namespace/name.
func (o Object) Key() string {
	md, _ := o["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	name, _ := md["name"].(string)
	kind, _ := o["kind"].(string)
	return kind + "/" + ns + "/" + name
}

// YAML is the object's YAML (keys sorted).
func (o Object) YAML() string {
	b, err := yaml.Marshal(map[string]any(o))
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return string(b)
}

// Labels returns metadata.labels (nil when none).
func (o Object) Labels() map[string]any {
	md, _ := o["metadata"].(map[string]any)
	l, _ := md["labels"].(map[string]any)
	return l
}

// RepoRoot is the repository root (this package lives in test/chart).
func RepoRoot() string {
	abs, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	return abs
}

// ChartDir is the chart in the repository.
func ChartDir() string { return filepath.Join(RepoRoot(), "deploy", "chart", "nodetrust") }

// Load loads a chart directory.
func Load(dir string) (*chart.Chart, error) {
	c, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	return c, nil
}

// Values returns the render values of an install of c into namespace with
// the user values vals, validated against values.schema.json as helm
// install does.
func Values(c *chart.Chart, vals map[string]any, namespace string) (chartutil.Values, error) {
	if vals == nil {
		vals = map[string]any{}
	}
	opts := chartutil.ReleaseOptions{Name: ReleaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	v, err := chartutil.ToRenderValues(c, vals, opts, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	return v, nil
}

// Render renders c with vals (as helm template does) into objects sorted by
// Key; NOTES.txt is returned apart.
func Render(c *chart.Chart, vals map[string]any, namespace string) (objs []Object, notes string, err error) {
	v, err := Values(c, vals, namespace)
	if err != nil {
		return nil, "", err
	}
	files, err := engine.Render(c, v)
	if err != nil {
		return nil, "", fmt.Errorf("render: %w", err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasSuffix(n, "NOTES.txt") {
			notes = files[n]
			continue
		}
		if !strings.HasSuffix(n, ".yaml") {
			continue
		}
		for _, doc := range releaseutil.SplitManifests(files[n]) {
			o, err := parse(doc)
			if err != nil {
				return nil, "", fmt.Errorf("%s: %w", n, err)
			}
			if o != nil {
				objs = append(objs, o)
			}
		}
	}
	sortObjects(objs)
	return objs, notes, nil
}

// Kustomize builds each kustomization directory with kustomize's library and
// returns all their objects sorted by Key.
func Kustomize(dirs ...string) ([]Object, error) {
	var objs []Object
	for _, d := range dirs {
		m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), d)
		if err != nil {
			return nil, fmt.Errorf("kustomize build %s: %w", d, err)
		}
		for _, r := range m.Resources() {
			y, err := r.AsYAML()
			if err != nil {
				return nil, fmt.Errorf("kustomize build %s: %w", d, err)
			}
			o, err := parse(string(y))
			if err != nil {
				return nil, fmt.Errorf("kustomize build %s: %w", d, err)
			}
			objs = append(objs, o)
		}
	}
	sortObjects(objs)
	return objs, nil
}

func parse(doc string) (Object, error) {
	var o Object
	if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
		return nil, err
	}
	if len(o) == 0 {
		return nil, nil
	}
	return o, nil
}

func sortObjects(objs []Object) {
	sort.Slice(objs, func(i, j int) bool { return objs[i].Key() < objs[j].Key() })
}

package plan_test

import (
	"errors"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/certs"
	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/plan"
	"github.com/nodetrust/nodetrust/pkg/registry"
	"github.com/nodetrust/nodetrust/pkg/source"
	"github.com/nodetrust/nodetrust/pkg/truststore"
)

func src(t *testing.T, kind, ns, name string, regs ...registry.Host) source.Source {
	t.Helper()
	cs, _, err := certs.Parse(certstest.NewCA(t, name).CertPEM())
	require.NoError(t, err)
	return source.Source{ID: source.ID{Kind: kind, Namespace: ns, Name: name}, Registries: regs, Certs: cs}
}

func paths(p plan.Plan) []string {
	var out []string
	for _, f := range p.Files {
		out = append(out, f.Path)
	}
	return out
}

func TestBuildFilesPerRuntime(t *testing.T) {
	a := src(t, source.KindSecret, "ns", "a", "r.example:5000")
	b := src(t, source.KindConfigMap, "ns", "a", "r.example:5000", "[fd00::1]:5000")
	all := plan.Facts{Containerd: true, Docker: true, Containers: true}

	tests := map[string]struct {
		facts plan.Facts
		want  []string
	}{
		"no runtime": {plan.Facts{}, nil},
		"docker only": {plan.Facts{Docker: true}, []string{
			"etc/docker/certs.d/[fd00::1]:5000/nodetrust_configmap_ns_a.crt",
			"etc/docker/certs.d/r.example:5000/nodetrust_configmap_ns_a.crt",
			"etc/docker/certs.d/r.example:5000/nodetrust_secret_ns_a.crt",
		}},
		"all": {all, []string{
			"etc/containerd/certs.d/[fd00::1]:5000/hosts.toml",
			"etc/containerd/certs.d/[fd00::1]:5000/nodetrust_configmap_ns_a.crt",
			"etc/containerd/certs.d/r.example:5000/hosts.toml",
			"etc/containerd/certs.d/r.example:5000/nodetrust_configmap_ns_a.crt",
			"etc/containerd/certs.d/r.example:5000/nodetrust_secret_ns_a.crt",
			"etc/containers/certs.d/[fd00::1]:5000/nodetrust_configmap_ns_a.crt",
			"etc/containers/certs.d/r.example:5000/nodetrust_configmap_ns_a.crt",
			"etc/containers/certs.d/r.example:5000/nodetrust_secret_ns_a.crt",
			"etc/docker/certs.d/[fd00::1]:5000/nodetrust_configmap_ns_a.crt",
			"etc/docker/certs.d/r.example:5000/nodetrust_configmap_ns_a.crt",
			"etc/docker/certs.d/r.example:5000/nodetrust_secret_ns_a.crt",
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.want, paths(plan.Build([]source.Source{a, b}, tc.facts)))
		})
	}

	p := plan.Build([]source.Source{b, a}, all)
	for _, f := range p.Files {
		switch {
		case strings.HasSuffix(f.Path, "/hosts.toml"):
			require.True(t, f.Late)
			require.Equal(t, containerd.MergerName, f.Merger)
			require.Equal(t, plan.ContainerdDir, f.Base)
		case strings.Contains(f.Path, "/r.example:5000/nodetrust_secret_ns_a.crt"):
			require.Equal(t, certs.EncodePEM(a.Certs), f.Data)
		}
	}
	hosts := p.Files[2]
	require.Equal(t, "etc/containerd/certs.d/r.example:5000/hosts.toml", hosts.Path)
	require.Equal(t, containerd.RenderHosts([]string{"nodetrust_configmap_ns_a.crt", "nodetrust_secret_ns_a.crt"}), hosts.Data)
	require.Equal(t, []string{ // hostfs names only those in place
		"etc/containerd/certs.d/r.example:5000/nodetrust_configmap_ns_a.crt",
		"etc/containerd/certs.d/r.example:5000/nodetrust_secret_ns_a.crt",
	}, hosts.Needs)
}

func TestBuildHostTrust(t *testing.T) {
	s := src(t, source.KindSecret, "ns", "corp")
	s.HostTrust = true
	extra := certstest.NewCA(t, "second")
	more, _, err := certs.Parse(extra.CertPEM())
	require.NoError(t, err)
	s.Certs = certs.Normalize(append(s.Certs, more...))

	st, err := truststore.Detect([]byte("ID=debian\n"))
	require.NoError(t, err)
	p := plan.Build([]source.Source{s}, plan.Facts{TrustStore: &st})
	require.Len(t, p.Files, 2, "one anchor per certificate")
	for i, f := range p.Files {
		require.True(t, f.Refresh)
		require.Equal(t, "usr/local/share/ca-certificates", f.Base)
		require.Equal(t, "usr/local/share/ca-certificates/nodetrust_secret_ns_corp_"+s.Certs[i].SHA256[:16]+".crt", f.Path)
		require.Equal(t, certs.EncodePEM(s.Certs[i:i+1]), f.Data)
	}
	require.Empty(t, p.Warnings)

	p = plan.Build([]source.Source{s}, plan.Facts{TrustStoreErr: errors.New("host trust is unsupported on talos")})
	require.Empty(t, p.Files, "nothing half-written")
	require.Equal(t, []plan.Warning{{ID: s.ID, Message: "host trust is unsupported on talos"}}, p.Warnings)
}

func TestBuildNodeSelector(t *testing.T) {
	gpu := src(t, source.KindSecret, "ns", "gpu", "r")
	sel, err := labels.Parse("accelerator in (nvidia),!edge")
	require.NoError(t, err)
	gpu.NodeSelector = sel
	all := src(t, source.KindSecret, "ns", "all", "r")
	facts := plan.Facts{Docker: true}

	p := plan.Build([]source.Source{gpu, all}, facts)
	require.Len(t, p.Sources, 2, "selectors are ignored without node labels")

	facts.NodeLabels = labels.Set{"accelerator": "nvidia"}
	require.Len(t, plan.Build([]source.Source{gpu, all}, facts).Sources, 2)
	facts.NodeLabels = labels.Set{"accelerator": "nvidia", "edge": ""}
	p = plan.Build([]source.Source{gpu, all}, facts)
	require.Equal(t, []source.ID{all.ID}, []source.ID{p.Sources[0].ID})
	require.Equal(t, 1, p.NotSelected)
	require.Equal(t, []string{"etc/docker/certs.d/r/nodetrust_secret_ns_all.crt"}, paths(p))
}

func TestHashStable(t *testing.T) {
	a := src(t, source.KindSecret, "ns", "a", "r")
	b := src(t, source.KindSecret, "ns", "b", "r")
	h1 := plan.Build([]source.Source{a, b}, plan.Facts{Docker: true}).Hash
	h2 := plan.Build([]source.Source{b, a}, plan.Facts{Containerd: true}).Hash
	require.Equal(t, h1, h2, "independent of order and of which runtimes are present")
	require.Len(t, h1, 12)

	rotated := a
	rotated.Certs = src(t, source.KindSecret, "ns", "a2").Certs
	require.NotEqual(t, h1, plan.Build([]source.Source{rotated, b}, plan.Facts{}).Hash)
	moved := a
	moved.Registries = []registry.Host{"other"}
	require.NotEqual(t, h1, plan.Build([]source.Source{moved, b}, plan.Facts{}).Hash)
}

func TestFileNameUnique(t *testing.T) {
	ids := []source.ID{
		{Kind: source.KindSecret, Namespace: "a-b", Name: "c"},
		{Kind: source.KindSecret, Namespace: "a", Name: "b-c"},
		{Kind: source.KindConfigMap, Namespace: "a", Name: "b-c"},
		{Kind: source.KindSecret, Namespace: "a", Name: "b.c"},
	}
	var names []string
	for _, id := range ids {
		names = append(names, plan.FileName(id))
	}
	sort.Strings(names)
	require.Equal(t, []string{
		"nodetrust_configmap_a_b-c.crt",
		"nodetrust_secret_a-b_c.crt",
		"nodetrust_secret_a_b-c.crt",
		"nodetrust_secret_a_b.c.crt",
	}, names)
}

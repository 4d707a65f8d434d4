package containerd

import (
	"testing"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/stretchr/testify/require"
)

const operatorHosts = `# my registry
server = "https://registry.example:5000"
ca = "/etc/certs/existing.crt"
skip_verify = false

[host."https://mirror.example"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/certs/mirror.crt"
  [host."https://mirror.example".header]
    x-custom = ["1"]
`

func decode(t *testing.T, data []byte) map[string]any {
	t.Helper()
	m := map[string]any{}
	require.NoError(t, toml.Unmarshal(data, &m))
	return m
}

func TestRenderHosts(t *testing.T) {
	got := decode(t, RenderHosts([]string{"a.crt", "b.crt"}))
	require.Equal(t, map[string]any{"ca": []any{"a.crt", "b.crt"}, "host": map[string]any{}}, got,
		"ca and an empty host table (containerd 1.6 needs one); no server key")
}

func TestMergeKeepsEverythingElse(t *testing.T) {
	ours := RenderHosts([]string{"nodetrust_secret_a_b.crt"})
	merged, err := HostsMerger{}.Merge([]byte(operatorHosts), ours)
	require.NoError(t, err)

	want := decode(t, []byte(operatorHosts))
	want["ca"] = []any{"/etc/certs/existing.crt", "nodetrust_secret_a_b.crt"}
	require.Equal(t, want, decode(t, merged))

	again, err := HostsMerger{}.Merge(merged, ours)
	require.NoError(t, err)
	require.Equal(t, decode(t, merged), decode(t, again), "merging twice adds nothing")

	back, err := HostsMerger{}.Unmerge(merged, ours)
	require.NoError(t, err)
	want["ca"] = []any{"/etc/certs/existing.crt"}
	require.Equal(t, want, decode(t, back))
}

func TestMergeCAShapes(t *testing.T) {
	ours := RenderHosts([]string{"n.crt"})
	tests := map[string]struct {
		base, wantCA any
	}{
		"no ca":        {`server = "https://r"`, []any{"n.crt"}},
		"ca string":    {`ca = "x.crt"`, []any{"x.crt", "n.crt"}},
		"ca list":      {`ca = ["x.crt", "y.crt"]`, []any{"x.crt", "y.crt", "n.crt"}},
		"already ours": {`ca = ["n.crt"]`, []any{"n.crt"}},
		"empty file":   {``, []any{"n.crt"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			merged, err := HostsMerger{}.Merge([]byte(tc.base.(string)), ours)
			require.NoError(t, err)
			require.Equal(t, tc.wantCA, decode(t, merged)["ca"])
		})
	}
}

func TestUnmergeDropsEmptyCA(t *testing.T) {
	merged, err := HostsMerger{}.Merge([]byte("server = \"https://r\"\n"), RenderHosts([]string{"n.crt"}))
	require.NoError(t, err)
	require.Equal(t, map[string]any{}, decode(t, merged)["host"], "containerd 1.6 needs a host table")
	out, err := HostsMerger{}.Unmerge(merged, RenderHosts([]string{"n.crt"}))
	require.NoError(t, err)
	require.Equal(t, map[string]any{"server": "https://r"}, decode(t, out), "the empty host table goes with our ca")
}

func TestMergeErrors(t *testing.T) {
	ours := RenderHosts([]string{"n.crt"})
	for base, want := range map[string]string{
		"server = ":        "does not parse",
		"ca = 3":           "top-level ca is int64",
		"ca = [[\"a\",1]]": "holds []interface {}",
	} {
		_, err := HostsMerger{}.Merge([]byte(base), ours)
		require.ErrorContains(t, err, want, base)
	}
}

func TestShadowDir(t *testing.T) {
	for registry, want := range map[string]string{
		"registry.example:5000": "registry.example_5000_",
		"[fd00::1]:5000":        "[fd00::1]_5000_",
		"registry.example":      "",
		"[fd00::1]":             "",
		"10.0.0.1:443":          "10.0.0.1_443_",
	} {
		require.Equal(t, want, ShadowDir(registry), registry)
	}
}

func TestHostsGeneratedAndRender(t *testing.T) {
	m := HostsMerger{}
	rendered := m.Render([]string{"etc/containerd/certs.d/r/b.crt", "etc/containerd/certs.d/r/a.crt"})
	require.Equal(t, string(RenderHosts([]string{"b.crt", "a.crt"})), string(rendered), "names relative to the file")
	merged, err := m.Merge([]byte("server = \"https://r\"\n"), rendered)
	require.NoError(t, err)
	for data, want := range map[string]bool{
		string(rendered):           true,
		string(merged):             false,
		"server = \"https://r\"\n": false,
	} {
		require.Equal(t, want, m.Generated([]byte(data)), data)
	}
	require.True(t, ConfigMerger{}.Generated(NewConfig()))
	require.False(t, ConfigMerger{}.Generated([]byte("version = 2\n")))
}

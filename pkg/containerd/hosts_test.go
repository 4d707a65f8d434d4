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
		"ca = 3":           "top-level ca is a integer",
		"ca = [[\"a\",1]]": "top-level ca holds a array",
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

// The merge is a text edit: every byte of the operator's file stays, and
// containerd's view is the original plus nodetrust's CA files.
func TestMergeIsMinimal(t *testing.T) {
	base := `# pull-through caches, primary first
server = 'https://upstream.example'   # literal quoting stays
host."https://z-dotted.example".capabilities = ["pull"]

[host."https://z-primary.example"]
  capabilities = ["pull", "resolve"]

[host."https://a-fallback.example:5000"]
  capabilities = ["pull", "resolve"]
  ca = [
    "/etc/certs/a.crt", # comment kept
  ]
`
	ours := RenderAdditions(Additions{
		CA:    []string{"nodetrust_x.crt"},
		Hosts: map[string][]string{"https://a-fallback.example:5000": {"../a-fallback.example:5000/nodetrust_x.crt"}, "https://z-dotted.example": {"../z/n.crt"}, "https://gone.example": {"n.crt"}},
	})
	merged, err := HostsMerger{}.Merge([]byte(base), ours)
	require.NoError(t, err)
	want := `# pull-through caches, primary first
server = 'https://upstream.example'   # literal quoting stays
host."https://z-dotted.example".capabilities = ["pull"]
ca = ["nodetrust_x.crt"] # added by nodetrust
host."https://z-dotted.example".ca = ["../z/n.crt"] # added by nodetrust

[host."https://z-primary.example"]
  capabilities = ["pull", "resolve"]

[host."https://a-fallback.example:5000"]
  capabilities = ["pull", "resolve"]
  ca = [
    "/etc/certs/a.crt", "../a-fallback.example:5000/nodetrust_x.crt", # comment kept
  ]
`
	require.Equal(t, want, string(merged))
	urls, err := HostURLs(merged)
	require.NoError(t, err)
	require.Equal(t, []string{"https://z-dotted.example", "https://z-primary.example", "https://a-fallback.example:5000"}, urls, "the order containerd tries them in")

	again, err := HostsMerger{}.Merge(merged, ours)
	require.NoError(t, err)
	require.Equal(t, string(merged), string(again), "merging twice changes nothing")

	back, err := HostsMerger{}.Unmerge(merged, ours)
	require.NoError(t, err)
	require.Equal(t, decode(t, []byte(base)), decode(t, back))
	require.NotContains(t, string(back), "nodetrust")
}

func TestMergeHostTableWithoutCA(t *testing.T) {
	base := "server = \"https://docker.io\"\n\n[host.\"https://harbor.local:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	ours := RenderAdditions(Additions{Hosts: map[string][]string{"https://harbor.local:5000": {"../harbor.local:5000/nodetrust_x.crt"}}})
	merged, err := HostsMerger{}.Merge([]byte(base), ours)
	require.NoError(t, err)
	require.Equal(t, base[:len(base)-len("  capabilities = [\"pull\", \"resolve\"]\n")]+
		"  ca = [\"../harbor.local:5000/nodetrust_x.crt\"] # added by nodetrust\n  capabilities = [\"pull\", \"resolve\"]\n", string(merged))
	back, err := HostsMerger{}.Unmerge(merged, ours)
	require.NoError(t, err)
	require.Equal(t, base, string(back), "the marked line goes, byte for byte")

	created, err := HostsMerger{}.Create(ours)
	require.NoError(t, err)
	require.Nil(t, created, "a mirror's entries never create a file")
	created, err = HostsMerger{}.Create(RenderAdditions(Additions{CA: []string{"n.crt"}}))
	require.NoError(t, err)
	require.Equal(t, string(RenderHosts([]string{"n.crt"})), string(created))
	require.True(t, Generated(created))
	require.False(t, Generated([]byte(base)))
}

func TestMergeRefusesInlineHost(t *testing.T) {
	ours := RenderAdditions(Additions{Hosts: map[string][]string{"https://m": {"n.crt"}}})
	_, err := HostsMerger{}.Merge([]byte("host.\"https://m\" = { capabilities = [\"pull\"] }\n"), ours)
	require.ErrorContains(t, err, "inline table")
}

func TestHostOf(t *testing.T) {
	for url, want := range map[string]string{
		"https://harbor.local:5000":          "harbor.local:5000",
		"https://harbor.local:5000/v2/proxy": "harbor.local:5000",
		"harbor.local":                       "harbor.local",
		"http://harbor.local":                "",
		"HTTPS://[fd00::1]:5000":             "[fd00::1]:5000",
	} {
		require.Equal(t, want, HostOf(url), url)
	}
}

// Hosts written as keys below [host]: the ca goes after the entry's own
// keys, so the order containerd tries them in stays.
func TestMergeKeysBelowHostKeepOrder(t *testing.T) {
	base := "[host]\n\"https://first.example\".capabilities = [\"pull\"]\n\"https://harbor.local:5000\".capabilities = [\"pull\", \"resolve\"]\n\"https://harbor.local:5000\".override_path = true\n\"https://last.example\".capabilities = [\"pull\"]\n"
	ours := RenderAdditions(Additions{Hosts: map[string][]string{"https://harbor.local:5000": {"../harbor.local:5000/n.crt"}}})
	merged, err := HostsMerger{}.Merge([]byte(base), ours)
	require.NoError(t, err)
	require.Contains(t, string(merged), "\"https://harbor.local:5000\".override_path = true\n\"https://harbor.local:5000\".ca = [\"../harbor.local:5000/n.crt\"] # added by nodetrust\n\"https://last.example\"")
	urls, err := HostURLs(merged)
	require.NoError(t, err)
	require.Equal(t, []string{"https://first.example", "https://harbor.local:5000", "https://last.example"}, urls)
}

// Taking nodetrust's entries out of an edited file cuts only them: the
// list's layout and comments stay.
func TestUnmergeCutsOnlyOurEntries(t *testing.T) {
	ours := RenderAdditions(Additions{CA: []string{"n.crt"}})
	for name, tc := range map[string]struct{ edited, want string }{
		"multi-line list":           {"ca = [\n  \"a.crt\", # mine\n  \"n.crt\",\n  \"b.crt\", # also mine\n]\n[host]\n", "ca = [\n  \"a.crt\", # mine\n  \"b.crt\", # also mine\n]\n[host]\n"},
		"ours first":                {"ca = [\"n.crt\", \"a.crt\"]\n", "ca = [\"a.crt\"]\n"},
		"ours last, trailing comma": {"ca = [\"a.crt\", \"n.crt\",]\n", "ca = [\"a.crt\",]\n"},
		"only ours, not our line":   {"ca = [\"n.crt\"] # theirs now\nserver = \"https://r\"\n", "ca = [] # theirs now\nserver = \"https://r\"\n"},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := HostsMerger{}.Unmerge([]byte(tc.edited), ours)
			require.NoError(t, err)
			require.Equal(t, tc.want, string(out))
		})
	}
}

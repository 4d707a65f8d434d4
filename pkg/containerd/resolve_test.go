package containerd_test

import (
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/containerd"
)

func TestResolveHosts(t *testing.T) {
	const d = "etc/containerd/certs.d/reg.example:5000"
	all := []string{"pull", "resolve", "push", "referrers"}
	upstream := func(host string, ca ...string) containerd.Endpoint {
		return containerd.Endpoint{Scheme: "https", Host: host, Path: "/v2", Capabilities: all, CAFiles: ca, Upstream: true}
	}
	tests := []struct {
		name     string
		files    map[string]string
		dir      string
		registry string
		from     string
		want     []containerd.Endpoint
		warning  string
	}{
		{name: "no directory: the default upstream", registry: "reg.example:5000", from: "defaults",
			want: []containerd.Endpoint{upstream("reg.example:5000")}},
		{name: "docker.io goes to registry-1.docker.io", registry: "docker.io", from: "defaults",
			want: []containerd.Endpoint{upstream("registry-1.docker.io")}},
		{name: "loopback with a port: plain http, no verification", registry: "127.0.0.1:5000", from: "defaults",
			want: []containerd.Endpoint{{Scheme: "http", Host: "127.0.0.1:5000", Path: "/v2", Capabilities: all, SkipVerify: true, Upstream: true}}},
		{name: "localhost without a port: https, not verified", registry: "localhost", from: "defaults",
			want: []containerd.Endpoint{{Scheme: "https", Host: "localhost", Path: "/v2", Capabilities: all, SkipVerify: true, Upstream: true}}},
		{name: "directory that does not exist", dir: d, registry: "reg.example:5000", from: "defaults",
			want: []containerd.Endpoint{upstream("reg.example:5000")}},
		{name: "nodetrust's own hosts.toml", dir: d, registry: "reg.example:5000", from: "hosts.toml",
			files: map[string]string{d + "/hosts.toml": "ca = [\"nodetrust_a.crt\", \"/etc/ssl/extra.pem\"]\n[host]\n"},
			want:  []containerd.Endpoint{upstream("reg.example:5000", "/"+d+"/nodetrust_a.crt", "/etc/ssl/extra.pem")}},
		{name: "ca as a string, server with a path", dir: d, registry: "reg.example:5000", from: "hosts.toml",
			files: map[string]string{d + "/hosts.toml": "server = \"https://mirror.example/base\"\nca = \"ca.crt\"\n[host]\n"},
			want:  []containerd.Endpoint{{Scheme: "https", Host: "mirror.example", Path: "/base/v2", Capabilities: all, CAFiles: []string{"/" + d + "/ca.crt"}, Upstream: true}}},
		{name: "host tables in file order, then the server; a sub-table after another host repeats it, as containerd's getSortedHosts does", dir: d, registry: "docker.io", from: "hosts.toml",
			files: map[string]string{d + "/hosts.toml": `server = "https://registry-1.docker.io"
skip_verify = false

[host."https://zz-mirror.example:5000"]
  capabilities = ["pull", "Resolve"]
  ca = ["zz.crt"]
  client = [["c.cert", "c.key"]]

[host."http://aa-mirror.example"]
  capabilities = ["pull"]
  skip_verify = true
  override_path = true

[host."https://zz-mirror.example:5000".header]
  x-custom = "1"
`},
			want: []containerd.Endpoint{
				{Scheme: "https", Host: "zz-mirror.example:5000", Path: "/v2", Capabilities: []string{"pull", "resolve"}, CAFiles: []string{"/" + d + "/zz.crt"}},
				{Scheme: "http", Host: "aa-mirror.example", Capabilities: []string{"pull"}, SkipVerify: true},
				{Scheme: "https", Host: "zz-mirror.example:5000", Path: "/v2", Capabilities: []string{"pull", "resolve"}, CAFiles: []string{"/" + d + "/zz.crt"}},
				upstream("registry-1.docker.io"),
			}},
		{name: "host without scheme is https", dir: d, registry: "reg.example:5000", from: "hosts.toml",
			files: map[string]string{d + "/hosts.toml": "[host.\"m.example\"]\n"},
			want:  []containerd.Endpoint{{Scheme: "https", Host: "m.example", Path: "/v2", Capabilities: all}, upstream("reg.example:5000")}},
		{name: "a dotted host key is not a table: containerd skips it", dir: d, registry: "reg.example:5000", from: "hosts.toml",
			files: map[string]string{d + "/hosts.toml": "host.\"https://m.example\".capabilities = [\"pull\"]\n"},
			want:  []containerd.Endpoint{upstream("reg.example:5000")}},
		{name: "no hosts.toml: *.crt files docker-style, client pairs ignored", dir: d, registry: "reg.example:5000", from: "*.crt files",
			files: map[string]string{d + "/b.crt": "x", d + "/a.crt": "x", d + "/client.cert": "x", d + "/client.key": "x", d + "/sub/c.crt": "x"},
			want:  []containerd.Endpoint{upstream("reg.example:5000", "/"+d+"/a.crt", "/"+d+"/b.crt")}},
		{name: "empty hosts.toml reads *.crt files", dir: d, registry: "reg.example:5000", from: "*.crt files",
			files: map[string]string{d + "/hosts.toml": "", d + "/a.crt": "x"},
			want:  []containerd.Endpoint{upstream("reg.example:5000", "/"+d+"/a.crt")}},
		{name: "hosts.toml that does not decode: *.crt files, said", dir: d, registry: "reg.example:5000", from: "*.crt files",
			files:   map[string]string{d + "/hosts.toml": "ca = [\n", d + "/a.crt": "x"},
			want:    []containerd.Endpoint{upstream("reg.example:5000", "/"+d+"/a.crt")},
			warning: "containerd ignores etc/containerd/certs.d/reg.example:5000/hosts.toml"},
		{name: "unknown capability: ignored like a decode error", dir: d, registry: "reg.example:5000", from: "*.crt files",
			files:   map[string]string{d + "/hosts.toml": "[host.\"https://m\"]\ncapabilities = [\"fly\"]\n"},
			want:    []containerd.Endpoint{upstream("reg.example:5000")},
			warning: "unknown capability fly"},
		{name: "ca of the wrong type", dir: d, registry: "reg.example:5000", from: "*.crt files",
			files:   map[string]string{d + "/hosts.toml": "ca = 5\n[host]\n"},
			want:    []containerd.Endpoint{upstream("reg.example:5000")},
			warning: `invalid type 5 for "ca"`},
		{name: "no host table: containerd 1.6 would not read it", dir: d, registry: "reg.example:5000", from: "hosts.toml",
			files:   map[string]string{d + "/hosts.toml": "ca = \"a.crt\"\n"},
			want:    []containerd.Endpoint{upstream("reg.example:5000", "/"+d+"/a.crt")},
			warning: "containerd 1.6 rejects a hosts.toml without a [host] table"},
		{name: "absolute dir is taken inside the root", dir: "/" + d, registry: "reg.example:5000", from: "hosts.toml",
			files: map[string]string{d + "/hosts.toml": "ca = \"a.crt\"\n[host]\n"},
			want:  []containerd.Endpoint{upstream("reg.example:5000", "/"+d+"/a.crt")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for p, body := range tt.files {
				fsys[p] = &fstest.MapFile{Data: []byte(body)}
			}
			res, err := containerd.ResolveHosts(fsys, tt.dir, tt.registry)
			require.NoError(t, err)
			require.Equal(t, tt.from, res.From)
			require.Equal(t, tt.want, res.Endpoints)
			if tt.warning == "" {
				require.Empty(t, res.Warnings)
			} else {
				require.Len(t, res.Warnings, 1)
				require.Contains(t, res.Warnings[0], tt.warning)
			}
		})
	}
}

func TestResolveHostsUnreadableDir(t *testing.T) {
	fsys := fstest.MapFS{"etc/containerd/certs.d/r": &fstest.MapFile{Data: []byte("a file, not a directory")}}
	_, err := containerd.ResolveHosts(fsys, "etc/containerd/certs.d/r", "r")
	require.ErrorContains(t, err, "hosts directory etc/containerd/certs.d/r")
}

func TestEndpointURL(t *testing.T) {
	require.Equal(t, "https://registry-1.docker.io/v2", containerd.Endpoint{Scheme: "https", Host: "registry-1.docker.io", Path: "/v2"}.URL())
}

package reconcile_test

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/source"
)

const k3sDir = "var/lib/rancher/k3s/agent/etc/containerd"

// files lists the regular files under the root, the record left out.
func files(t *testing.T, dir string) []string {
	var out []string
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			if !strings.HasPrefix(rel, "var/lib/nodetrust/") {
				out = append(out, filepath.ToSlash(rel))
			}
		}
		return err
	}))
	sort.Strings(out)
	return out
}

// TestSyncLayouts: each distribution's containerd gets the files where it
// reads them, or a node problem that says why it would not.
func TestSyncLayouts(t *testing.T) {
	const ca = "nodetrust_secret_ns_a.crt"
	tests := []struct {
		name    string
		files   map[string]string
		dirs    []string
		version string
		want    []string // files written (besides the fixtures)
		problem string
	}{
		{name: "k3s: no /etc/containerd", version: "1.7.23-k3s2",
			files: map[string]string{k3sDir + "/config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/" + k3sDir + "/certs.d\"\n"},
			want:  []string{k3sDir + "/certs.d/r:5000/hosts.toml", k3sDir + "/certs.d/r:5000/" + ca}},
		{name: "rke2 v3", version: "2.0.5",
			files: map[string]string{"var/lib/rancher/rke2/agent/etc/containerd/config.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/var/lib/rancher/rke2/agent/etc/containerd/certs.d'\n"},
			want:  []string{"var/lib/rancher/rke2/agent/etc/containerd/certs.d/r:5000/hosts.toml", "var/lib/rancher/rke2/agent/etc/containerd/certs.d/r:5000/" + ca}},
		{name: "EKS AL2023: a list with discard_unpacked_layers", version: "2.1.4",
			files: map[string]string{configFile: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  discard_unpacked_layers = true\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n"},
			want:  []string{"etc/containerd/certs.d/r:5000/hosts.toml", "etc/containerd/certs.d/r:5000/" + ca}},
		{name: "2.2 transfer service with the default list", version: "2.2.4",
			files:   map[string]string{configFile: "version = 3\n"},
			want:    []string{"etc/containerd/certs.d/r:5000/hosts.toml", "etc/containerd/certs.d/r:5000/" + ca},
			problem: `set config_path = "/etc/containerd/certs.d", or use_local_image_pull = true`},
		{name: "Talos: nothing written", dirs: []string{"etc/containerd"},
			files:   map[string]string{"etc/os-release": "NAME=Talos\nID=talos\n"},
			problem: `machine.registries.config."r:5000".tls.ca`},
		{name: "CRI-O: a foreign certs.rootful.d directory comes first", dirs: []string{"etc/containers/certs.rootful.d/r:5000"},
			want:    []string{"etc/containers/certs.d/r:5000/" + ca},
			problem: "reads /etc/containers/certs.rootful.d/r:5000 before /etc/containers/certs.d/r:5000"},
		{name: "OpenShift: node-ca owns /etc/docker/certs.d", dirs: []string{"etc/docker", "etc/containers"},
			files: map[string]string{"etc/os-release": "ID=\"rhcos\"\nID_LIKE=\"rhel fedora\"\n"},
			want:  []string{"etc/containers/certs.d/r:5000/" + ca}},
		{name: "podman installed, no /etc/containers yet", dirs: []string{"etc", "usr/bin"},
			files: map[string]string{"usr/bin/podman": "#!"},
			want:  []string{"etc/containers/certs.d/r:5000/" + ca}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, tc.dirs...)
			h.version = tc.version
			for p, data := range tc.files {
				hostfstest.WriteFile(t, h.dir, p, data)
			}
			before := files(t, h.dir)
			rep := h.sync(source.Set{Sources: []source.Source{mkSource(t, "a", regs("r:5000"))}}, nil)
			require.Empty(t, rep.Failed)
			if tc.problem == "" {
				require.Empty(t, rep.NodeProblems)
			} else {
				require.Len(t, rep.NodeProblems, 1)
				require.Contains(t, rep.NodeProblems[0], tc.problem)
			}
			want := append(append([]string(nil), before...), tc.want...)
			sort.Strings(want)
			require.Equal(t, want, files(t, h.dir), "the whole tree")

			h.sync(source.Set{}, nil)
			require.Equal(t, before, files(t, h.dir), "removed again")
		})
	}
}

// A mirror: the operator's docker.io hosts.toml sends pulls to a
// pull-through cache; the cache's CA reaches that [host] entry, and the
// file comes back byte for byte.
func TestSyncMirrorHostCA(t *testing.T) {
	h := newHost(t, "etc/containerd")
	mirror := "# pull-through cache\nserver = \"https://registry-1.docker.io\"\n\n[host.\"https://harbor.local:5000/v2/dockerhub\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
	hostfstest.WriteFile(t, h.dir, "etc/containerd/certs.d/docker.io/hosts.toml", mirror)
	set := source.Set{Sources: []source.Source{mkSource(t, "harbor", regs("harbor.local:5000"))}}
	rep := h.sync(set, nil)
	require.True(t, rep.OK(), "%v", rep.Failed)
	got := h.read("etc/containerd/certs.d/docker.io/hosts.toml")
	require.Contains(t, got, "  ca = [\"../harbor.local:5000/nodetrust_secret_ns_harbor.crt\"] # added by nodetrust\n")
	require.True(t, strings.HasPrefix(got, "# pull-through cache\nserver"), "the rest stays: %s", got)
	require.FileExists(t, filepath.Join(h.dir, "etc/containerd/certs.d/harbor.local:5000/nodetrust_secret_ns_harbor.crt"))

	require.Empty(t, h.sync(set, nil).Written, "quiet")

	// The operator deletes the mirror file: nodetrust does not bring it back.
	require.NoError(t, os.Remove(filepath.Join(h.dir, "etc/containerd/certs.d/docker.io/hosts.toml")))
	rep = h.sync(set, nil)
	require.True(t, rep.OK(), "%v", rep.Failed)
	require.NoFileExists(t, filepath.Join(h.dir, "etc/containerd/certs.d/docker.io/hosts.toml"))
	require.NotContains(t, rep.Owned, "etc/containerd/certs.d/docker.io/hosts.toml")
	// ... and puts it back: merged again.
	hostfstest.WriteFile(t, h.dir, "etc/containerd/certs.d/docker.io/hosts.toml", mirror)
	h.sync(set, nil)
	require.Contains(t, h.read("etc/containerd/certs.d/docker.io/hosts.toml"), "# added by nodetrust")

	h.sync(source.Set{}, nil)
	require.Equal(t, mirror, h.read("etc/containerd/certs.d/docker.io/hosts.toml"), "restored byte for byte")
}

// k3s removes the directory of every registry in registries.yaml at start
// and writes its own hosts.toml: nodetrust's CA comes back, merged into
// k3s's file, and k3s's file is what stays when the source goes.
func TestSyncK3sRewrite(t *testing.T) {
	h := newHost(t)
	hostfstest.WriteFile(t, h.dir, k3sDir+"/config.toml", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/"+k3sDir+"/certs.d\"\n")
	set := source.Set{Sources: []source.Source{mkSource(t, "a", regs("r:5000"))}}
	require.Empty(t, h.sync(set, nil).NodeProblems)

	dir := filepath.Join(h.dir, k3sDir, "certs.d", "r:5000")
	require.NoError(t, os.RemoveAll(dir))
	k3s := "# File generated by k3s. DO NOT EDIT.\nserver = \"https://r:5000\"\ncapabilities = [\"pull\", \"resolve\", \"push\"]\n\n[host.\"https://r:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	hostfstest.WriteFile(t, h.dir, k3sDir+"/certs.d/r:5000/hosts.toml", k3s)

	rep := h.sync(set, nil)
	require.True(t, rep.OK(), "%v", rep.Failed)
	got := h.read(k3sDir + "/certs.d/r:5000/hosts.toml")
	require.True(t, strings.HasPrefix(got, "# File generated by k3s. DO NOT EDIT.\n"), got)
	require.Contains(t, got, "ca = [\"nodetrust_secret_ns_a.crt\"] # added by nodetrust\n")
	require.Contains(t, got, "  ca = [\"nodetrust_secret_ns_a.crt\"] # added by nodetrust\n", "the [host] entry for the registry itself too")
	require.FileExists(t, filepath.Join(dir, "nodetrust_secret_ns_a.crt"))

	h.sync(source.Set{}, nil)
	require.Equal(t, k3s, h.read(k3sDir+"/certs.d/r:5000/hosts.toml"), "k3s's file, byte for byte")
	require.NoFileExists(t, filepath.Join(dir, "nodetrust_secret_ns_a.crt"))
}

// A runtime directory that is a symlink is reported, not silently taken
// for "runtime absent".
func TestSyncWarnsOnSymlinkedRuntimeDir(t *testing.T) {
	h := newHost(t, "srv/docker")
	require.NoError(t, os.MkdirAll(filepath.Join(h.dir, "etc"), 0o755))
	require.NoError(t, os.Symlink("/srv/docker", filepath.Join(h.dir, "etc/docker")))
	rep := h.sync(source.Set{Sources: []source.Source{mkSource(t, "a", regs("r:5000"))}}, nil)
	require.Contains(t, strings.Join(rep.NodeWarnings, "\n"), "/etc/docker is a symlink to /srv/docker: nodetrust writes through no symlink")
	require.Empty(t, rep.Written)
}

// A mirror written as an inline table cannot take the CA: said, with the
// line to add, instead of "applied" while containerd's first endpoint is
// untrusted.
func TestSyncWarnsOnInlineMirror(t *testing.T) {
	h := newHost(t, "etc/containerd")
	mirror := "server = \"https://registry-1.docker.io\"\nhost = { \"https://harbor.local:5000\" = { capabilities = [\"pull\", \"resolve\"] } }\n"
	hostfstest.WriteFile(t, h.dir, "etc/containerd/certs.d/docker.io/hosts.toml", mirror)
	rep := h.sync(source.Set{Sources: []source.Source{mkSource(t, "harbor", regs("harbor.local:5000"))}}, nil)
	require.Contains(t, strings.Join(rep.NodeWarnings, "\n"),
		`/etc/containerd/certs.d/docker.io/hosts.toml points containerd at https://harbor.local:5000, but nodetrust cannot add its CA there`)
	require.Contains(t, strings.Join(rep.NodeWarnings, "\n"), `add ca = ["../harbor.local:5000/nodetrust_secret_ns_harbor.crt"] to that entry yourself`)
	require.Equal(t, mirror, h.read("etc/containerd/certs.d/docker.io/hosts.toml"), "left as it is")
}

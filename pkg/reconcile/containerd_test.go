package reconcile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/source"
)

const configFile = "etc/containerd/config.toml"

func hostfile(t *testing.T, name string) string {
	data, err := os.ReadFile(filepath.Join("../../hostfiles/containerd", name))
	require.NoError(t, err)
	return string(data)
}

func (h *host) read(rel string) string {
	data, err := os.ReadFile(filepath.Join(h.dir, rel))
	require.NoError(h.t, err)
	return string(data)
}

func TestSyncManagesContainerdConfig(t *testing.T) {
	original := hostfile(t, "containerd-1.6-config-default.toml")
	h := newHost(t, "etc/containerd")
	hostfstest.WriteFile(t, h.dir, configFile, original)
	set := source.Set{Sources: []source.Source{mkSource(t, "a", regs("r.example:5000"))}}

	rep := h.sync(set, nil)
	require.Contains(t, strings.Join(rep.NodeProblems, "\n"), "config_path is unset", "off by default: reported, not edited")
	require.Equal(t, original, h.read(configFile))
	require.Empty(t, rep.Restart.Units)

	h.manage = true
	rep = h.sync(set, nil)
	require.True(t, rep.OK())
	require.Empty(t, rep.NodeProblems, "containerd's config now reads hosts.toml")
	require.Equal(t, []string{configFile}, rep.Written)
	require.Equal(t, []string{containerd.Unit}, rep.Restart.Units, "containerd must restart to load it")
	require.False(t, rep.Restart.TrustStore, "the trust store did not change")
	edited := h.read(configFile)
	require.Contains(t, edited, "config_path = \"/etc/containerd/certs.d\" # set by nodetrust")

	rep = h.sync(set, nil)
	require.Empty(t, rep.Written, "a second sync writes nothing")
	require.Equal(t, []string{containerd.Unit}, rep.Restart.Units, "the restart stays pending until done")
	require.NoError(t, h.root.ClearRestarts())
	require.Empty(t, h.sync(set, nil).Restart.Units)

	// The operator adds a line: it stays, and so does nodetrust's edit.
	hostfstest.WriteFile(t, h.dir, configFile, edited+"# operator\n")
	rep = h.sync(set, nil)
	require.Empty(t, rep.Written)
	require.Empty(t, rep.NodeProblems)

	// No hosts.toml left to read: the file is restored, without a restart.
	rep = h.sync(source.Set{}, nil)
	require.Contains(t, rep.Removed, configFile)
	require.Equal(t, original+"# operator\n", h.read(configFile), "the original, with the operator's line")
	require.Empty(t, rep.Restart.Units)
	_, err := os.Stat(filepath.Join(h.dir, "var/lib/nodetrust/state.json"))
	require.ErrorIs(t, err, os.ErrNotExist, "nothing owned, nothing recorded")
}

// managedHost is a containerd node with --manage-containerd-config, its
// config (none when ""), and one source for a registry with a port.
func managedHost(t *testing.T, config string) (*host, source.Set) {
	h := newHost(t, "etc/containerd")
	h.manage = true
	if config != "" {
		hostfstest.WriteFile(t, h.dir, configFile, config)
	}
	return h, source.Set{Sources: []source.Source{mkSource(t, "a", regs("r.example:5000"))}}
}

func TestSyncManagedContainerdConfigRestoresByteForByte(t *testing.T) {
	original := hostfile(t, "debian12-default.toml")
	h, set := managedHost(t, original)
	rep := h.sync(set, nil)
	require.Empty(t, rep.NodeProblems)
	require.NotEqual(t, original, h.read(configFile))
	h.sync(source.Set{}, nil)
	require.Equal(t, original, h.read(configFile))
}

func TestSyncManagedContainerdConfigCases(t *testing.T) {
	set := func(t *testing.T) source.Set {
		return source.Set{Sources: []source.Source{mkSource(t, "a", regs("r.example:5000"))}}
	}
	tests := []struct {
		name    string
		files   map[string]string // relative to the host root
		edited  string            // the file nodetrust edits, "" for none
		problem string
		hosts   string // where the hosts.toml goes, when not etc/containerd/certs.d
	}{
		{name: "no config file: one is created", edited: configFile},
		{name: "a drop-in sets another directory: written there, nothing edited",
			files: map[string]string{
				configFile:                            hostfile(t, "dropin-main.toml"),
				"etc/containerd/conf.d/registry.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/opt/certs.d\"\n",
			},
			hosts: "opt/certs.d/r.example:5000/hosts.toml"},
		{name: "an import hides config_path from containerd 1.x: the import is edited",
			files: map[string]string{
				configFile:                            "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
				"etc/containerd/conf.d/registry.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n",
			},
			edited: "etc/containerd/conf.d/registry.toml"},
		{name: "already right: untouched", files: map[string]string{configFile: hostfile(t, "containerd-1.7-certsd.toml")}},
		{name: "mirrors: refused", files: map[string]string{configFile: hostfile(t, "gke-style.toml")},
			problem: "cannot be set as it is: /etc/containerd/config.toml: registry.mirrors is set"},
		{name: "hidden from 1.x by a file outside /etc/containerd: refused",
			files: map[string]string{
				configFile:                     "version = 2\nimports = [\"/opt/containerd/registry.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
				"opt/containerd/registry.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n",
			},
			problem: "nodetrust does not edit /opt/containerd/registry.toml, the file that sets containerd's config_path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, "etc/containerd", "opt/containerd")
			h.manage = true
			for p, data := range tc.files {
				hostfstest.WriteFile(t, h.dir, p, data)
			}
			before := hostfstest.Tree(t, h.dir, "var")
			rep := h.sync(set(t), nil)
			if tc.problem != "" {
				require.Contains(t, strings.Join(rep.NodeProblems, "\n"), tc.problem)
			} else {
				require.Empty(t, rep.NodeProblems)
			}
			if tc.problem == "" {
				require.Empty(t, rep.NodeWarnings)
			}
			hosts := tc.hosts
			if hosts == "" {
				hosts = "etc/containerd/certs.d/r.example:5000/hosts.toml"
			}
			require.Contains(t, rep.Written, hosts)
			after := hostfstest.Tree(t, h.dir, "var")
			var changed []string
			for p := range after {
				if strings.HasSuffix(p, "config.toml") || strings.HasSuffix(p, "registry.toml") {
					if before[p] != after[p] {
						changed = append(changed, p)
					}
				}
			}
			if tc.edited == "" {
				require.Empty(t, changed)
				require.Empty(t, rep.Restart.Units)
			} else {
				require.Equal(t, []string{tc.edited}, changed)
				require.Equal(t, []string{containerd.Unit}, rep.Restart.Units)
			}

			h.sync(source.Set{}, nil)
			require.Equal(t, before, hostfstest.Tree(t, h.dir, "var"), "an empty set restores the tree exactly")
		})
	}
}

func TestSyncReportsShadowingHostDir(t *testing.T) {
	h := newHost(t, "etc/containerd/certs.d/r.example_5000_", "etc/containerd/certs.d/other.example")
	hostfstest.WriteFile(t, h.dir, configFile, hostfile(t, "containerd-1.7-certsd.toml"))
	set := source.Set{Sources: []source.Source{
		mkSource(t, "a", regs("r.example:5000")),
		mkSource(t, "b", regs("other.example")),
	}}
	rep := h.sync(set, nil)
	require.True(t, rep.OK(), "the files still apply")
	require.Equal(t, []string{"containerd reads /etc/containerd/certs.d/r.example_5000_ before /etc/containerd/certs.d/r.example:5000 (the older host_port_ naming comes first), so nodetrust's CA for r.example:5000 is not used; move what that directory holds into /etc/containerd/certs.d/r.example:5000/hosts.toml and remove it"},
		rep.NodeProblems)
}

// Mirrors added after nodetrust set config_path would stop containerd's
// CRI plugin at its next start: nodetrust takes its line out again.
func TestSyncManagedConfigTakenOutWhenMirrorsAppear(t *testing.T) {
	original := hostfile(t, "containerd-1.6-config-default.toml")
	h, set := managedHost(t, original)
	h.sync(set, nil)
	edited := h.read(configFile)
	require.Contains(t, edited, "# set by nodetrust")

	mirrors := "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n"
	hostfstest.WriteFile(t, h.dir, configFile, edited+mirrors)
	rep := h.sync(set, nil)
	require.Len(t, rep.Failed, 1)
	require.ErrorContains(t, rep.Failed[0], "registry.mirrors is set")
	require.Equal(t, original+mirrors, h.read(configFile), "the operator's file without nodetrust's line")
	require.Empty(t, rep.Restart.Units, "nothing to load: containerd keeps running as it is")
	require.Contains(t, strings.Join(rep.NodeProblems, "\n"), "cannot be set as it is")
}

// A config a package installs over the one nodetrust created is edited, not
// overwritten, and survives the uninstall.
func TestSyncCreatedConfigReplacedByAPackage(t *testing.T) {
	h, set := managedHost(t, "")
	h.sync(set, nil)
	require.Equal(t, string(containerd.NewConfig("")), h.read(configFile), "created")

	pkg := hostfile(t, "containerd-1.6-config-default.toml")
	hostfstest.WriteFile(t, h.dir, configFile, pkg)
	rep := h.sync(set, nil)
	require.Empty(t, rep.NodeProblems)
	require.Contains(t, h.read(configFile), "#nodetrust-original# config_path = \"\"", "the package's file, edited")
	require.Equal(t, []string{containerd.Unit}, rep.Restart.Units)

	h.sync(source.Set{}, nil)
	require.Equal(t, pkg, h.read(configFile), "the package's file survives, byte for byte")
}

// A hosts directory is read by name, not as a glob pattern: a mirror's
// hosts.toml in a config_path holding glob metacharacters gets the CA as
// in any other (SPEC §2a Mirrors). Before ab20292 the directory was
// globbed, so "certs[x].d" matched nothing and the mirror was missed.
func TestSyncMirrorInHostsDirWithGlobMetacharacters(t *testing.T) {
	h := newHost(t, "etc/containerd")
	hostfstest.WriteFile(t, h.dir, configFile, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs[x].d\"\n")
	mirror := "etc/containerd/certs[x].d/docker.io/hosts.toml"
	hostfstest.WriteFile(t, h.dir, mirror, "server = \"https://registry-1.docker.io\"\n[host.\"https://harbor.example\"]\n  capabilities = [\"pull\"]\n")
	rep := h.sync(source.Set{Sources: []source.Source{mkSource(t, "a", regs("harbor.example"))}}, nil)
	require.True(t, rep.OK(), "%v", rep.Failed)
	require.Contains(t, rep.Written, mirror)
	require.Contains(t, h.read(mirror), "../harbor.example/")
}

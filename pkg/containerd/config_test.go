package containerd

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
)

// mapFS is a host root holding files by host path.
type mapFS map[string]string

// Open opens name in the fstest.MapFS of m.
func (m mapFS) Open(name string) (fs.File, error) {
	fsys := fstest.MapFS{}
	for p, s := range m {
		fsys[strings.TrimPrefix(p, "/")] = &fstest.MapFile{Data: []byte(s)}
	}
	return fsys.Open(name)
}

func fixture(t *testing.T, name string) string {
	data, err := os.ReadFile(filepath.Join("../../hostfiles/containerd", name))
	require.NoError(t, err)
	return string(data)
}

func TestReadRegistryFixtures(t *testing.T) {
	tests := []struct {
		file, dropin string
		version      int
		configPath   string
		problem      string
	}{
		{file: "debian12-default.toml", version: 2, problem: `config_path is unset under [plugins."io.containerd.grpc.v1.cri".registry] in /etc/containerd/config.toml`},
		{file: "containerd-1.6-config-default.toml", version: 2, problem: "containerd reads no hosts.toml"},
		{file: "containerd-1.7-certsd.toml", version: 2, configPath: "/etc/containerd/certs.d"},
		{file: "containerd-2-certsd.toml", version: 3, configPath: "/etc/containerd/certs.d"},
		{file: "containerd-2-config-default-style.toml", version: 3, configPath: "/etc/containerd/certs.d:/etc/docker/certs.d",
			problem: `it pulls through its transfer service, which takes config_path as one directory`},
		{file: "k3s-style.toml", version: 3, configPath: "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"},
		{file: "gke-style.toml", version: 2, problem: "config_path is unset"},
		{file: "dropin-main.toml", dropin: "dropin-certsd.toml", version: 2, configPath: "/etc/containerd/certs.d"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			fsys := mapFS{"/etc/containerd/config.toml": fixture(t, tc.file)}
			if tc.dropin != "" {
				fsys["/etc/containerd/conf.d/10-nodetrust.toml"] = fixture(t, tc.dropin)
			}
			reg, err := ReadRegistry(fsys)
			require.NoError(t, err)
			require.Equal(t, tc.version, reg.Version)
			require.Equal(t, tc.configPath, reg.ConfigPath)
			if tc.problem == "" {
				require.Empty(t, problem(reg))
			} else {
				require.Contains(t, problem(reg), tc.problem)
			}
		})
	}
}

func TestReadRegistryErrors(t *testing.T) {
	_, err := ReadRegistry(mapFS{})
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = ReadRegistry(mapFS{"/etc/containerd/config.toml": "version = "})
	require.ErrorContains(t, err, "does not parse")
	_, err = ReadRegistry(mapFS{"/etc/containerd/config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = 3\n"})
	require.ErrorContains(t, err, "config_path is int64")

	// Relative imports resolve against the importing file; cycles end.
	reg, err := ReadRegistry(mapFS{
		"/etc/containerd/config.toml": "version = 2\nimports = [\"a.toml\"]\n",
		"/etc/containerd/a.toml":      "version = 2\nimports = [\"/etc/containerd/config.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d/\"\n",
	})
	require.NoError(t, err)
	require.Equal(t, []string{"/etc/containerd/config.toml", "/etc/containerd/a.toml"}, reg.Files)
	require.Empty(t, problem(reg), "a trailing slash is the same directory")
}

// containerd 1.x replaces a plugin section with each import's; 2.x merges.
func TestReadRegistryImportReplacesSectionOn1x(t *testing.T) {
	main := "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"
	pause := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n"
	reg, err := ReadRegistry(mapFS{"/etc/containerd/config.toml": main, "/etc/containerd/conf.d/pause.toml": pause})
	require.NoError(t, err)
	require.Empty(t, problem(reg), "2.x reads it")
	require.Equal(t, "/etc/containerd/conf.d/pause.toml", reg.LastSection)
	require.Equal(t, "/etc/containerd/conf.d/pause.toml", reg.EditTarget())
	require.Contains(t, warning(reg), "containerd 1.x reads no hosts.toml with this config")
	require.Contains(t, warning(reg), "/etc/containerd/conf.d/pause.toml, the last file with [plugins.\"io.containerd.grpc.v1.cri\"]")

	// A drop-in without the CRI section changes nothing on either.
	reg, err = ReadRegistry(mapFS{"/etc/containerd/config.toml": main, "/etc/containerd/conf.d/debug.toml": "version = 2\n[debug]\n  level = \"debug\"\n"})
	require.NoError(t, err)
	require.Empty(t, warning(reg))
	require.Equal(t, "/etc/containerd/config.toml", reg.EditTarget())

	// Version 3 is 2.x only: no warning.
	reg, err = ReadRegistry(mapFS{
		"/etc/containerd/config.toml":       "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n",
		"/etc/containerd/conf.d/pause.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = 'registry.k8s.io/pause:3.10'\n",
	})
	require.NoError(t, err)
	require.Empty(t, warning(reg))
}

func TestProblemUnsetOnVersion3(t *testing.T) {
	reg, err := ReadRegistry(mapFS{"/etc/containerd/config.toml": "version = 3\n"})
	require.NoError(t, err)
	require.Contains(t, problem(reg), `config_path is unset, so it defaults to "/etc/containerd/certs.d:/etc/docker/certs.d"`)
}

// problem and warning judge reg as Reading does for an unknown version on
// the default layout.
func problem(reg Registry) string { return reg.Reading(Version{}, Default).Problem }
func warning(reg Registry) string { return reg.Reading(Version{}, Default).Warning }

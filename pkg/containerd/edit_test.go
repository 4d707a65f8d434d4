package containerd

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// edited reads back the registry of a single-file config.
func edited(t *testing.T, data []byte) Registry {
	t.Helper()
	reg, err := ReadRegistry(mapFS{"/etc/containerd/config.toml": string(data)})
	require.NoError(t, err)
	return reg
}

// changedLines returns the lines of b that are not in a, in order.
func changedLines(a, b string) []string {
	old := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		old[l]++
	}
	var out []string
	for _, l := range strings.Split(b, "\n") {
		if old[l] > 0 {
			old[l]--
			continue
		}
		out = append(out, l)
	}
	return out
}

func TestSetConfigPathFixtures(t *testing.T) {
	tests := []struct {
		file  string
		added []string // lines the edit adds, exactly
	}{
		{file: "debian12-default.toml", added: []string{ // appended after a blank line
			`[plugins."io.containerd.grpc.v1.cri".registry] ` + markSet,
			`  config_path = "/etc/containerd/certs.d" ` + markSet,
			"",
		}},
		{file: "containerd-1.6-config-default.toml", added: []string{
			`      #nodetrust-original# config_path = ""`,
			`      config_path = "/etc/containerd/certs.d" ` + markSet,
		}},
		{file: "containerd-2-config-default-style.toml", added: []string{
			`      #nodetrust-original# config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'`,
			`      config_path = "/etc/containerd/certs.d" ` + markSet,
		}},
		{file: "k3s-style.toml", added: []string{
			`  #nodetrust-original# config_path = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"`,
			`  config_path = "/etc/containerd/certs.d" ` + markSet,
		}},
		{file: "dropin-main.toml", added: []string{
			`  #nodetrust-original# config_path = ""`,
			`  config_path = "/etc/containerd/certs.d" ` + markSet,
		}},
		{file: "containerd-1.7-certsd.toml"}, // already right: unchanged
		{file: "containerd-2-certsd.toml"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			base := fixture(t, tc.file)
			out, err := SetConfigPath([]byte(base), CertsDir)
			require.NoError(t, err)
			require.Equal(t, tc.added, changedLines(base, string(out)))
			var removed []string
			if len(tc.added) == 2 { // a replaced line: the original is commented out
				removed = []string{strings.Replace(tc.added[0], markOriginal, "", 1)}
			}
			require.Equal(t, removed, changedLines(string(out), base))
			require.Empty(t, edited(t, out).Reading(Version{}, Default).Problem)

			again, err := SetConfigPath(out, CertsDir)
			require.NoError(t, err)
			require.Equal(t, string(out), string(again), "a second edit changes nothing")

			restored, err := ConfigMerger{}.Unmerge(out, NewConfig(""))
			require.NoError(t, err)
			require.Equal(t, base, string(restored), "Unmerge restores the file byte for byte")
		})
	}
}

func TestSetConfigPathLayouts(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{
			name: "registry header without config_path: the line goes below the header",
			in:   "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.auths]\n",
			want: "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\" " + markSet + "\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.auths]\n",
		},
		{
			name: "version 1 (no version key) uses the short plugin name",
			in:   "[plugins.cri.registry]\n  config_path = \"\" # empty\n",
			want: "[plugins.cri.registry]\n  #nodetrust-original# config_path = \"\" # empty\n  config_path = \"/etc/containerd/certs.d\" " + markSet + "\n",
		},
		{
			name: "a dotted key keeps its form",
			in:   "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nregistry.config_path = \"/x\"\n",
			want: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n#nodetrust-original# registry.config_path = \"/x\"\nregistry.config_path = \"/etc/containerd/certs.d\" " + markSet + "\n",
		},
		{
			name: "no final newline",
			in:   "version = 3",
			want: "version = 3\n\n[plugins.\"io.containerd.cri.v1.images\".registry] " + markSet + "\n  config_path = \"/etc/containerd/certs.d\" " + markSet + "\n",
		},
		{
			name: "an empty file",
			in:   "",
			want: "\n[plugins.\"cri\".registry] " + markSet + "\n  config_path = \"/etc/containerd/certs.d\" " + markSet + "\n",
		},
		{
			name: "CRLF line ends stay",
			in:   "version = 2\r\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\r\n  config_path = \"\"\r\n",
			want: "version = 2\r\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\r\n  #nodetrust-original# config_path = \"\"\r\n  config_path = \"/etc/containerd/certs.d\" " + markSet + "\r\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := SetConfigPath([]byte(tc.in), CertsDir)
			require.NoError(t, err)
			require.Equal(t, tc.want, string(out))
			restored, err := ConfigMerger{}.Unmerge(out, nil)
			require.NoError(t, err)
			want := tc.in
			if want != "" && !strings.HasSuffix(want, "\n") {
				want += "\n" // the newline ending the last line stays
			}
			require.Equal(t, want, string(restored))
		})
	}
}

func TestSetConfigPathRefuses(t *testing.T) {
	tests := []struct {
		name, in, err string
	}{
		{name: "mirrors", in: fixtureName("gke-style.toml"), err: "registry.mirrors is set, and containerd refuses to start its CRI plugin with both mirrors and config_path"},
		{name: "configs.tls", in: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.example:5000\".tls]\n  ca_file = \"/ca.crt\"\n",
			err: `registry.configs."r.example:5000".tls is set`},
		{name: "inline registry table", in: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nregistry = { config_path = \"\" }\n",
			err: "plugins.io.containerd.grpc.v1.cri.registry is an inline table"},
		{name: "multi-line string", in: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"\"\"\n/x\"\"\"\n",
			err: "spans several lines"},
		{name: "not a string", in: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = 1\n",
			err: "config_path is a Integer, not a string"},
		{name: "does not parse", in: "version = \n", err: "does not parse"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if strings.HasPrefix(in, "fixture:") {
				in = fixture(t, strings.TrimPrefix(in, "fixture:"))
			}
			_, err := SetConfigPath([]byte(in), CertsDir)
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func fixtureName(name string) string { return "fixture:" + name }

func TestConfigMerger(t *testing.T) {
	base := []byte("version = 2\n")
	out, err := ConfigMerger{}.Merge(base, NewConfig(""))
	require.NoError(t, err)
	require.Equal(t, CertsDir, edited(t, out).ConfigPath)

	_, err = ConfigMerger{}.Merge(base, []byte("version = 2\n"))
	require.ErrorContains(t, err, "sets no config_path")

	// NewConfig is itself a config containerd reads hosts.toml with.
	require.Empty(t, edited(t, NewConfig("")).Reading(Version{}, Default).Problem)

	// An operator who rewrote the line (marks gone) keeps the file as is.
	own := []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/mine\"\n")
	restored, err := ConfigMerger{}.Unmerge(own, NewConfig(""))
	require.NoError(t, err)
	require.Equal(t, own, restored)
}

func TestReadRegistryConflict(t *testing.T) {
	reg, err := ReadRegistry(mapFS{"/etc/containerd/config.toml": fixture(t, "gke-style.toml")})
	require.NoError(t, err)
	require.Contains(t, reg.Conflict, "/etc/containerd/config.toml: registry.mirrors is set")
	require.Contains(t, reg.Reading(Version{}, Default).Problem, "cannot be set as it is")

	reg, err = ReadRegistry(mapFS{
		"/etc/containerd/config.toml":          fixture(t, "dropin-main.toml"),
		"/etc/containerd/conf.d/registry.toml": fixture(t, "dropin-certsd.toml"),
	})
	require.NoError(t, err)
	require.Equal(t, "/etc/containerd/conf.d/registry.toml", reg.EditTarget(), "the drop-in's config_path wins")
	require.Empty(t, reg.Conflict)
}

func TestCheckEditCatchesOtherChanges(t *testing.T) {
	base := []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause:3.9\"\n")
	good := append(append([]byte(nil), base...), "  registry.config_path = \"/etc/containerd/certs.d\"\n"...)
	require.NoError(t, checkEdit(base, good, "io.containerd.grpc.v1.cri", CertsDir))
	bad := []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause:3.10\"\n  registry.config_path = \"/etc/containerd/certs.d\"\n")
	require.ErrorContains(t, checkEdit(base, bad, "io.containerd.grpc.v1.cri", CertsDir), "would change other settings")
	require.ErrorContains(t, checkEdit(base, []byte("[x"), "io.containerd.grpc.v1.cri", CertsDir), "would make it unparsable")
}

// FuzzSetConfigPath: whatever the file, an edit that succeeds yields a file
// containerd reads hosts.toml with, and Unmerge gives the input back.
func FuzzSetConfigPath(f *testing.F) {
	for _, name := range []string{"debian12-default.toml", "containerd-1.6-config-default.toml", "k3s-style.toml", "dropin-main.toml", "gke-style.toml"} {
		data, err := os.ReadFile(filepath.Join("../../hostfiles/containerd", name))
		require.NoError(f, err)
		f.Add(string(data))
	}
	f.Add("[plugins.cri.registry]\nconfig_path = \"\"\n")
	f.Add("version = 3\n[plugins.'io.containerd.cri.v1.images']\nregistry.config_path = '/x'\n")
	f.Fuzz(func(t *testing.T, in string) {
		out, err := SetConfigPath([]byte(in), CertsDir)
		if err != nil {
			return
		}
		reg := edited(t, out)
		require.Equal(t, CertsDir, path.Clean(reg.ConfigPath))
		restored, err := ConfigMerger{}.Unmerge(out, nil)
		require.NoError(t, err)
		if string(out) != in && strings.HasSuffix(in, "\n") && !strings.Contains(in, markSet) {
			require.Equal(t, in, string(restored))
		}
	})
}

// Keys below an array of tables belong to its element, not to the top
// level: a config_path written there is not the CRI's, and setting the
// CRI's leaves it alone. (Before 0f2b1f8, locate read such keys as
// top-level ones and refused the edit as changing other settings.)
func TestSetConfigPathIgnoresKeysBelowAnArrayOfTables(t *testing.T) {
	in := "version = 2\n\n[[extra]]\n  name = \"a\"\n  plugins.\"io.containerd.grpc.v1.cri\".registry.config_path = \"/x\"\n\n" +
		"[plugins.\"io.containerd.grpc.v1.cri\".registry]\n"
	require.Empty(t, edited(t, []byte(in)).ConfigPath, "the array's key is not the CRI's config_path")
	out, err := SetConfigPath([]byte(in), CertsDir)
	require.NoError(t, err)
	require.Equal(t, CertsDir, edited(t, out).ConfigPath)
	require.Contains(t, string(out), "registry.config_path = \"/x\"\n", "the array's key is kept as it was")
}

package containerd

import (
	"io/fs"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"containerd://1.7.23-k3s2": {1, 7, true},
		"1.6.20~ds1":               {1, 6, true},
		"v2.2.4":                   {2, 2, true},
		"2.1":                      {2, 1, true},
		"":                         {},
	} {
		got, err := ParseVersion(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"2", "x.y", "containerd://"} {
		_, err := ParseVersion(bad)
		require.ErrorContains(t, err, "want MAJOR.MINOR", bad)
	}
}

// TestReadingByVersion judges each config as containerd 1.6 to 2.3 would
// (internal/cri/server/images: registryHosts, pullImageWithTransferService;
// plugins/cri/images: the 2.2 default; CheckLocalImagePullConfigs).
func TestReadingByVersion(t *testing.T) {
	v2 := func(extra string) string {
		return "version = 2\n" + extra
	}
	v3 := func(extra string) string {
		return "version = 3\n" + extra
	}
	const (
		list2 = "[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n"
		one2  = "[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n"
		list3 = "[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n"
		eks   = "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = true\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n" + list2
		// Without a runtimes table, 2.x's migration drops the setting.
		noRuntimes = "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndiscard_unpacked_layers = true\n" + list2
		local3     = "[plugins.\"io.containerd.cri.v1.images\"]\nuse_local_image_pull = true\n"
		snap3      = "[plugins.\"io.containerd.cri.v1.images\"]\ndisable_snapshot_annotations = false\n"
		mcd2       = "[plugins.\"io.containerd.grpc.v1.cri\"]\nmax_concurrent_downloads = 10\n" + list2
	)
	const ok, unset, transfer = "", "reads no hosts.toml: config_path is unset", "pulls through its transfer service"
	tests := []struct {
		name, config string
		want         map[string]string // version → problem ("" none)
		dir          string
	}{
		{"single dir", v2(one2), map[string]string{"1.6": ok, "1.7": ok, "2.0": ok, "2.1": ok, "2.2": ok, "2.3": ok}, "/etc/containerd/certs.d"},
		{"unset v2", v2(""), map[string]string{"1.6": unset, "1.7": unset, "2.0": unset, "2.1": unset, "2.2": transfer, "2.3": transfer}, "/etc/containerd/certs.d"},
		{"unset v3 local pull", v3(local3), map[string]string{"2.0": unset, "2.1": unset, "2.2": ok, "2.3": ok}, "/etc/containerd/certs.d"},
		{"list v2", v2(list2), map[string]string{"1.6": ok, "1.7": ok, "2.0": ok, "2.1": transfer, "2.2": transfer, "2.3": transfer}, "/etc/containerd/certs.d"},
		{"EKS: list with discard_unpacked_layers", v2(eks), map[string]string{"1.7": ok, "2.0": ok, "2.1": ok, "2.2": ok, "2.3": ok}, "/etc/containerd/certs.d"},
		{"list v2, discard_unpacked_layers but no runtimes table", v2(noRuntimes), map[string]string{"1.7": ok, "2.0": ok, "2.1": transfer, "2.2": transfer}, "/etc/containerd/certs.d"},
		{"list v3", v3(list3), map[string]string{"2.0": ok, "2.1": transfer, "2.2": transfer}, "/etc/containerd/certs.d"},
		{"list v3 with snapshot annotations on", v3(snap3 + list3), map[string]string{"2.1": ok, "2.2": ok}, "/etc/containerd/certs.d"},
		{"list v2 with max_concurrent_downloads", v2(mcd2), map[string]string{"2.1": ok, "2.2": ok}, "/etc/containerd/certs.d"},
		{"other dir", v2("[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/opt/certs.d/\"\n"), map[string]string{"1.6": ok, "2.2": ok}, "/opt/certs.d"},
		{"relative dir", v2("[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"certs.d\"\n"), map[string]string{"1.7": "does not start with an absolute directory"}, "/etc/containerd/certs.d"},
	}
	for _, tc := range tests {
		reg, err := ReadRegistry(mapFS{"/etc/containerd/config.toml": tc.config})
		require.NoError(t, err, tc.name)
		for v, want := range tc.want {
			ver, err := ParseVersion(v)
			require.NoError(t, err)
			got := reg.Reading(ver, Default)
			if want == "" {
				require.Empty(t, got.Problem, "%s on %s", tc.name, v)
			} else {
				require.Contains(t, got.Problem, want, "%s on %s", tc.name, v)
			}
			require.Equal(t, tc.dir, got.Dir, "%s on %s", tc.name, v)
			require.Empty(t, got.Note)
		}
	}
}

func TestReadingUnknownVersion(t *testing.T) {
	reg, err := ReadRegistry(mapFS{"/etc/containerd/config.toml": "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n"})
	require.NoError(t, err)
	r := reg.Reading(Version{}, Default)
	require.Empty(t, r.Problem, "a version 2 config is judged as 1.x, which splits the list")
	require.Contains(t, r.Note, "judged as 1.x from the version 2 config format")

	reg, err = ReadRegistry(mapFS{"/etc/containerd/config.toml": "version = 3\n"})
	require.NoError(t, err)
	r = reg.Reading(Version{}, Default)
	require.Contains(t, r.Problem, "transfer service")
	require.True(t, r.Fixable)
	require.Contains(t, r.Note, "judged as 2.2 or later")
}

func TestReadingTemplatedLayout(t *testing.T) {
	reg, err := ReadConfig(mapFS{K3s.Config: "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + K3s.HostsDir + "'\n"}, K3s.Config)
	require.NoError(t, err)
	r := reg.Reading(Version{2, 0, true}, K3s)
	require.Empty(t, r.Problem)
	require.Equal(t, K3s.HostsDir, r.Dir)

	reg, err = ReadConfig(mapFS{K3s.Config: "version = 3\n"}, K3s.Config)
	require.NoError(t, err)
	r = reg.Reading(Version{2, 1, true}, K3s)
	require.Contains(t, r.Problem, "in "+K3s.Template+" and restart k3s")
	require.False(t, r.Fixable, "k3s rewrites its config at every start")
}

// layoutFS adds symlinks to mapFS.
type layoutFS struct {
	mapFS
	links map[string]string
}

func (l layoutFS) ReadLink(name string) (string, error) {
	if t, ok := l.links["/"+name]; ok {
		return t, nil
	}
	return "", errNotLink
}

func (l layoutFS) Lstat(name string) (fs.FileInfo, error) { return fs.Stat(l.mapFS, name) }

var errNotLink = &pathError{"not a symlink"}

type pathError struct{ s string }

func (e *pathError) Error() string { return e.s }

func TestDiscoverLayout(t *testing.T) {
	mk8s := "/var/snap/microk8s/8124/args/containerd.toml"
	tests := []struct {
		name     string
		fsys     layoutFS
		override string
		hasEtc   bool
		want     Layout
		present  bool
	}{
		{name: "nothing", present: false},
		{name: "etc dir only", hasEtc: true, want: Default, present: true},
		{name: "k3s beats /etc/containerd", fsys: layoutFS{mapFS: mapFS{K3s.Config: "", "/etc/containerd/config.toml": ""}}, hasEtc: true, want: K3s, present: true},
		{name: "rke2", fsys: layoutFS{mapFS: mapFS{RKE2.Config: ""}}, want: RKE2, present: true},
		{name: "microk8s through current", fsys: layoutFS{mapFS: mapFS{MicroK8s.Config: "", mk8s: ""}, links: map[string]string{"/var/snap/microk8s/current": "8124"}},
			want: Layout{Name: "microk8s", Config: mk8s, Template: "/var/snap/microk8s/8124/args/containerd-template.toml", HostsDir: "/var/snap/microk8s/8124/args/certs.d"}, present: true},
		{name: "override", override: "/opt/cd/config.toml", want: Layout{Name: "custom", Config: "/opt/cd/config.toml", HostsDir: CertsDir}, present: true},
	}
	for _, tc := range tests {
		if tc.fsys.mapFS == nil {
			tc.fsys.mapFS = mapFS{}
		}
		got, present, err := DiscoverLayout(tc.fsys, tc.override, tc.hasEtc)
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.present, present, tc.name)
		if tc.present {
			require.Equal(t, tc.want, got, tc.name)
		}
	}
	_, _, err := DiscoverLayout(layoutFS{mapFS: mapFS{}}, "rel/config.toml", false)
	require.ErrorContains(t, err, "want an absolute path")
	_, _, err = DiscoverLayout(layoutFS{mapFS: mapFS{MicroK8s.Config: ""}, links: map[string]string{"/var/snap/microk8s/current": "/etc"}}, "", false)
	require.ErrorContains(t, err, "outside /var/snap/microk8s")
}

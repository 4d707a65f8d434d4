package chart

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// restrictedCaps are the capabilities examples/deploy/restricted keeps;
// TestRestrictedCapabilities proves they suffice and each is needed.
var restrictedCaps = []corev1.Capability{"CHOWN", "FOWNER"}

// TestRestrictedOverlay: the overlay renders (kustomize's library) to a
// DaemonSet that is not privileged, drops every capability but
// restrictedCaps, mounts only containerd's config and nodetrust's state
// directory, and changes nothing else of deploy/'s DaemonSet.
func TestRestrictedOverlay(t *testing.T) {
	base, err := Kustomize(filepath.Join(RepoRoot(), "deploy"))
	require.NoError(t, err)
	over, err := Kustomize(filepath.Join(RepoRoot(), "examples", "deploy", "restricted"))
	require.NoError(t, err)
	key := "DaemonSet/" + AgentNamespace + "/nodetrust"
	decode := func(o Object) *appsv1.DaemonSet {
		codecs := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
		obj, _, err := codecs.UniversalDeserializer().Decode([]byte(o.YAML()), nil, nil)
		require.NoError(t, err)
		return obj.(*appsv1.DaemonSet)
	}
	want, got := decode(find(base, key)), decode(find(over, key))

	ctr := got.Spec.Template.Spec.Containers[0]
	sc := ctr.SecurityContext
	require.False(t, *sc.Privileged)
	require.False(t, *sc.AllowPrivilegeEscalation)
	require.True(t, *sc.ReadOnlyRootFilesystem)
	require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, sc.SeccompProfile.Type)
	require.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
	require.Equal(t, restrictedCaps, sc.Capabilities.Add)

	paths := map[string]string{}
	for _, v := range got.Spec.Template.Spec.Volumes {
		require.NotNil(t, v.HostPath, v.Name)
		paths[v.HostPath.Path] = string(*v.HostPath.Type)
	}
	require.Equal(t, map[string]string{"/etc/containerd": "Directory", "/var/lib/nodetrust": "DirectoryOrCreate"}, paths)
	var mounts []string
	for _, m := range ctr.VolumeMounts {
		mounts = append(mounts, m.MountPath)
		require.Nil(t, m.MountPropagation)
	}
	require.Equal(t, []string{"/host/etc/containerd", "/host/var/lib/nodetrust"}, mounts)

	// Everything else is deploy/'s.
	ctr.SecurityContext, ctr.VolumeMounts = nil, nil
	got.Spec.Template.Spec.Containers[0] = ctr
	got.Spec.Template.Spec.Volumes = nil
	wc := want.Spec.Template.Spec.Containers[0]
	wc.SecurityContext, wc.VolumeMounts = nil, nil
	want.Spec.Template.Spec.Containers[0] = wc
	want.Spec.Template.Spec.Volumes = nil
	require.Equal(t, want, got)
	require.Equal(t, len(base), len(over), "the overlay adds and removes no object")
}

// TestRestrictedCapabilities runs `nodetrust apply` as uid 0 with only the
// given capabilities (setpriv: bounding, inheritable and ambient sets) on a
// host root with containerd's directory: with none at all it writes a
// root-owned layout; an operator's hosts.toml owned by uid 1000 needs both
// CHOWN and FOWNER (nodetrust writes over it and keeps its owner), and
// either alone fails.
func TestRestrictedCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (to drop root's capabilities)")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) missing")
	}
	bin := harness.Binary(t)
	ca := harness.NewCA("restricted-ca")
	const reg = "registry.example:5000"
	src := t.TempDir()
	y, err := yaml.Marshal(harness.Secret(AgentNamespace, "restricted-ca", ca.PEM, reg))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(src, "secret.yaml"), append([]byte("apiVersion: v1\nkind: Secret\n"), y...), 0o644))

	all := make([]string, len(restrictedCaps))
	for i, c := range restrictedCaps {
		all[i] = strings.ToLower(string(c))
	}
	for name, tc := range map[string]struct {
		caps         []string
		foreignHosts bool
		ok           bool
	}{
		"no capability, root-owned":      {caps: nil, ok: true},
		"no capability, operator's file": {caps: nil, foreignHosts: true},
		"chown only, operator's file":    {caps: []string{"chown"}, foreignHosts: true},
		"fowner only, operator's file":   {caps: []string{"fowner"}, foreignHosts: true},
		"the overlay's, operator's file": {caps: all, foreignHosts: true, ok: true},
		"the overlay's, root-owned":      {caps: all, ok: true},
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "etc", "containerd", "certs.d", reg)
			require.NoError(t, os.MkdirAll(dir, 0o755))
			hosts := filepath.Join(dir, "hosts.toml")
			if tc.foreignHosts {
				require.NoError(t, os.WriteFile(hosts, []byte("server = \"https://"+reg+"\"\n"), 0o644))
				require.NoError(t, os.Chown(hosts, 1000, 1000))
			}
			set := "-all"
			for _, c := range tc.caps {
				set += ",+" + c
			}
			cmd := exec.Command(setpriv, "--inh-caps="+set, "--ambient-caps="+set, "--bounding-set="+set, "--no-new-privs",
				bin, "apply", "-f", src, "--host-root", root)
			out, err := cmd.CombinedOutput()
			if !tc.ok {
				require.Error(t, err, "%s", out)
				require.Contains(t, string(out), "operation not permitted")
				return
			}
			require.NoError(t, err, "%s", out)
			require.Contains(t, string(out), "0 failed")
			require.NoError(t, harness.Trust(root, reg, ca.Leaf(reg))["containerd"])
			if tc.foreignHosts {
				fi, err := os.Stat(hosts)
				require.NoError(t, err)
				st := fi.Sys().(*syscall.Stat_t)
				require.Equal(t, [2]uint32{1000, 1000}, [2]uint32{st.Uid, st.Gid}, "the operator's file keeps its owner")
			}
		})
	}
}

package reconcile_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/source"
	"github.com/nodetrust/nodetrust/pkg/truststore"
)

type host struct {
	t        testing.TB
	dir      string
	root     *hostfs.Root
	refresh  []string
	failNext bool
	manage   bool   // --manage-containerd-config
	version  string // --containerd-version
}

func newHost(t testing.TB, dirs ...string) *host {
	h := &host{t: t, dir: t.TempDir()}
	hostfstest.MkdirAll(t, h.dir, dirs...)
	root, err := hostfs.Open(h.dir)
	require.NoError(t, err)
	t.Cleanup(func() { root.Close() })
	h.root = root
	return h
}

func (h *host) sync(set source.Set, nodeLabels labels.Set) reconcile.Report {
	h.t.Helper()
	rep, err := reconcile.Sync(context.Background(), h.root, set, reconcile.Options{
		NodeLabels:             nodeLabels,
		ManageContainerdConfig: h.manage,
		ContainerdVersion:      h.version,
		Refresh: func(_ context.Context, st truststore.Store, root string) error {
			h.refresh = append(h.refresh, st.Family+"@"+root)
			if h.failNext {
				h.failNext = false
				return errors.New("update-ca-certificates failed")
			}
			return nil
		},
	})
	require.NoError(h.t, err)
	return rep
}

func mkSource(t testing.TB, name string, ann map[string]string) source.Source {
	t.Helper()
	ca := certstest.NewCA(t, name)
	s, err := source.FromSecret(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: ann},
		Data:       map[string][]byte{"ca.crt": ca.CertPEM()},
	}, time.Now())
	require.NoError(t, err)
	return s
}

func regs(r string) map[string]string { return map[string]string{source.AnnotationRegistries: r} }

func TestSyncRejectedSourceKeepsLastApplied(t *testing.T) {
	h := newHost(t, "etc/docker")
	a, b := mkSource(t, "a", regs("r")), mkSource(t, "b", regs("r"))
	rep := h.sync(source.Set{Sources: []source.Source{a, b}}, nil)
	require.True(t, rep.OK())
	applied := hostfstest.Tree(t, h.dir, "var")

	// b turns bad: it keeps its files, a still updates.
	a2 := mkSource(t, "a", regs("r"))
	rep = h.sync(source.Set{Sources: []source.Source{a2}, Rejected: []*source.Rejection{{ID: b.ID, Reason: "bad"}}}, nil)
	require.False(t, rep.OK())
	require.Equal(t, []source.ID{b.ID}, rep.Kept)
	require.Equal(t, []string{"etc/docker/certs.d/r/nodetrust_secret_ns_a.crt"}, rep.Written)
	tree := hostfstest.Tree(t, h.dir, "var")
	require.Equal(t, applied["etc/docker/certs.d/r/nodetrust_secret_ns_b.crt"], tree["etc/docker/certs.d/r/nodetrust_secret_ns_b.crt"])

	// still rejected on the next sync: still kept, nothing written
	rep = h.sync(source.Set{Sources: []source.Source{a2}, Rejected: []*source.Rejection{{ID: b.ID, Reason: "bad"}}}, nil)
	require.Empty(t, rep.Written)
	require.Empty(t, rep.Removed)

	// deleted: removed
	rep = h.sync(source.Set{Sources: []source.Source{a2}}, nil)
	require.Equal(t, []string{"etc/docker/certs.d/r/nodetrust_secret_ns_b.crt"}, rep.Removed)
}

func TestSyncIncompleteInputRemovesNothing(t *testing.T) {
	h := newHost(t, "etc/containerd")
	a, b := mkSource(t, "a", regs("r")), mkSource(t, "b", regs("r"))
	h.sync(source.Set{Sources: []source.Source{a, b}}, nil)
	before := hostfstest.Tree(t, h.dir, "var")

	rep := h.sync(source.Set{Sources: []source.Source{a}, Errors: []error{errors.New("list failed")}}, nil)
	require.False(t, rep.OK())
	require.Empty(t, rep.Removed)
	require.Equal(t, []source.ID{b.ID}, rep.Kept)
	require.Equal(t, before, hostfstest.Tree(t, h.dir, "var"), "hosts.toml still lists b's CA")
}

func TestSyncHostTrust(t *testing.T) {
	h := newHost(t, "usr/local/share/ca-certificates", "usr/lib", "etc")
	hostfstest.WriteFile(t, h.dir, "usr/lib/os-release", "ID=debian\n")
	require.NoError(t, os.Symlink("../usr/lib/os-release", filepath.Join(h.dir, "etc/os-release")))
	s := mkSource(t, "corp", map[string]string{source.AnnotationHostTrust: "true"})

	rep := h.sync(source.Set{Sources: []source.Source{s}}, nil)
	require.True(t, rep.OK())
	require.Equal(t, []string{"debian@" + h.dir}, h.refresh)
	require.Len(t, rep.Written, 1)
	require.True(t, strings.HasPrefix(rep.Written[0], "usr/local/share/ca-certificates/nodetrust_secret_ns_corp_"))

	h.sync(source.Set{Sources: []source.Source{s}}, nil)
	require.Len(t, h.refresh, 1, "no refresh without a change")

	h.failNext = true
	rep = h.sync(source.Set{}, nil)
	require.False(t, rep.OK())
	require.ErrorContains(t, rep.RefreshErr, "update-ca-certificates failed")
	rep = h.sync(source.Set{}, nil)
	require.True(t, rep.OK(), "a failed refresh is retried")
	require.Len(t, h.refresh, 3)
}

func TestSyncHostTrustUnsupported(t *testing.T) {
	h := newHost(t, "etc/docker")
	hostfstest.WriteFile(t, h.dir, "etc/os-release", "ID=bottlerocket\n")
	s := mkSource(t, "corp", map[string]string{source.AnnotationHostTrust: "true", source.AnnotationRegistries: "r"})
	rep := h.sync(source.Set{Sources: []source.Source{s}}, nil)
	require.True(t, rep.OK(), "unsupported host trust is a warning")
	require.Len(t, rep.Warnings, 1)
	require.Contains(t, rep.Warnings[0].Message, "host trust is unsupported on bottlerocket")
	require.Equal(t, []string{"etc/docker/certs.d/r/nodetrust_secret_ns_corp.crt"}, rep.Written, "registries still apply")
	require.Empty(t, h.refresh)
}

func TestSyncNodeSelector(t *testing.T) {
	h := newHost(t, "etc/docker")
	gpu := mkSource(t, "gpu", map[string]string{source.AnnotationRegistries: "r", source.AnnotationNodeSelector: "pool=gpu"})
	rep := h.sync(source.Set{Sources: []source.Source{gpu}}, labels.Set{"pool": "cpu"})
	require.Empty(t, rep.Applied)
	require.Equal(t, 1, rep.NotSelected)
	require.Empty(t, rep.Written)
	rep = h.sync(source.Set{Sources: []source.Source{gpu}}, labels.Set{"pool": "gpu"})
	require.Len(t, rep.Written, 1)
	rep = h.sync(source.Set{Sources: []source.Source{gpu}}, labels.Set{"pool": "cpu"})
	require.Len(t, rep.Removed, 1, "stops applying when the node's labels stop matching")
}

func TestSyncUnchangedIsQuiet(t *testing.T) {
	h := newHost(t, "etc/containerd", "etc/docker", "etc/containers")
	set := source.Set{Sources: []source.Source{mkSource(t, "a", regs("r:1,s")), mkSource(t, "b", regs("s"))}}
	rep := h.sync(set, nil)
	require.Len(t, rep.Written, 2*3+2+1*3)
	before := hostfstest.ModTimes(t, h.dir)
	rep = h.sync(set, nil)
	require.False(t, rep.Changed())
	require.Equal(t, before, hostfstest.ModTimes(t, h.dir))
}

func TestSyncChecksContainerdConfig(t *testing.T) {
	set := source.Set{Sources: []source.Source{mkSource(t, "a", regs("r"))}}
	tests := map[string]struct {
		config        string
		problem, warn string
	}{
		"no config.toml":  {"", "", "cannot check containerd's config_path"},
		"unset":           {"version = 2\n", `config_path is unset under [plugins."io.containerd.grpc.v1.cri".registry]`, ""},
		"certs.d":         {"version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d'\n", "", ""},
		"two directories": {"version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n", "takes config_path as one directory", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHost(t, "etc/containerd")
			if tc.config != "" {
				hostfstest.WriteFile(t, h.dir, "etc/containerd/config.toml", tc.config)
			}
			rep := h.sync(set, nil)
			require.True(t, rep.OK(), "files still apply")
			if tc.problem == "" {
				require.Empty(t, rep.NodeProblems)
			} else {
				require.Len(t, rep.NodeProblems, 1)
				require.Contains(t, rep.NodeProblems[0], tc.problem)
			}
			if tc.warn == "" {
				require.Empty(t, rep.NodeWarnings)
			} else {
				require.Contains(t, rep.NodeWarnings[0], tc.warn)
			}
		})
	}

	h := newHost(t)
	hostfstest.WriteFile(t, h.dir, "etc/containerd/config.toml", "version = 2\n")
	hostTrustOnly := source.Set{Sources: []source.Source{mkSource(t, "b", map[string]string{source.AnnotationHostTrust: "true"})}}
	require.Empty(t, h.sync(hostTrustOnly, nil).NodeProblems, "not checked without containerd hosts files to read")
}

package hostfs_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

// lossyMerger is lineMerger with a lossy Unmerge, as a TOML re-encode is:
// it drops comment lines. Restoring through it instead of from the
// recorded original shows.
type lossyMerger struct{ lineMerger }

func (lossyMerger) Unmerge(cur, ours []byte) ([]byte, error) {
	var kept []string
	for _, l := range strings.SplitAfter(strings.ReplaceAll(string(cur), string(ours), ""), "\n") {
		if !strings.HasPrefix(l, "#") {
			kept = append(kept, l)
		}
	}
	return []byte(strings.Join(kept, "")), nil
}

// applyCapturing applies files with lossyMerger and returns the record as
// it was on disk when the refresh hook ran: after every write and removal,
// before the final record, the moment a kill leaves.
func (f *fixture) applyCapturing(files ...hostfs.File) (hostfs.Result, []byte) {
	f.t.Helper()
	st, err := f.root.LoadState()
	require.NoError(f.t, err)
	var intent []byte
	res, err := f.root.Apply(st, files, nil, hostfs.Options{
		Mergers: map[string]hostfs.Merger{"lines": lossyMerger{}},
		Refresh: func() error {
			var err error
			intent, err = os.ReadFile(filepath.Join(f.dir, hostfs.StatePath))
			return err
		},
	})
	require.NoError(f.t, err)
	return res, intent
}

// TestApplySurvivesKills replays the states a kill leaves around a merge,
// an update of a merged file and a restore: the next runs converge and the
// original comes back byte for byte, never a re-encoded copy.
func TestApplySurvivesKills(t *testing.T) {
	const p = "etc/docker/hosts"
	const original = "# the operator's comment\nmirror = \"m\"\n"
	merged := func(ours string) hostfs.File {
		return hostfs.File{Path: p, Base: "etc/docker", Data: []byte(ours), Merger: "lines", Late: true, Refresh: true}
	}
	tests := map[string]struct {
		before []hostfs.File // applied normally first
		killed []hostfs.File // the apply that is killed
		disk   string        // the file as the kill left it
	}{
		"merge, killed before the rename":     {killed: []hostfs.File{merged("ours\n")}, disk: original},
		"merge, killed after the rename":      {killed: []hostfs.File{merged("ours\n")}, disk: original + "ours\n"},
		"update, killed before the rename":    {before: []hostfs.File{merged("v1\n")}, killed: []hostfs.File{merged("v2\n")}, disk: original + "v1\n"},
		"update, killed after the rename":     {before: []hostfs.File{merged("v1\n")}, killed: []hostfs.File{merged("v2\n")}, disk: original + "v2\n"},
		"restore, killed after the rename":    {before: []hostfs.File{merged("v1\n")}, disk: original},
		"restore, killed before the rename":   {before: []hostfs.File{merged("v1\n")}, disk: original + "v1\n"},
		"restore after update, killed after":  {before: []hostfs.File{merged("v1\n"), merged("v2\n")}, disk: original},
		"restore after update, killed before": {before: []hostfs.File{merged("v1\n"), merged("v2\n")}, disk: original + "v2\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, "etc/docker")
			hostfstest.WriteFile(t, f.dir, p, original)
			for _, b := range tc.before {
				res, _ := f.applyCapturing(b)
				require.Empty(t, res.Failed)
			}
			_, intent := f.applyCapturing(tc.killed...)
			require.NotNil(t, intent, "the refresh hook ran")
			hostfstest.WriteFile(t, f.dir, hostfs.StatePath, string(intent))
			hostfstest.WriteFile(t, f.dir, p, tc.disk)

			res, _ := f.applyCapturing(tc.killed...) // the rerun converges
			require.Empty(t, res.Failed)
			want := original
			for _, k := range tc.killed {
				want += string(k.Data)
			}
			require.Equal(t, want, f.tree()[p])
			res, _ = f.applyCapturing()
			require.Empty(t, res.Failed)
			require.Equal(t, original, f.tree()[p], "the original, byte for byte")
			st, err := f.root.LoadState()
			require.NoError(t, err)
			require.Empty(t, st.Files)
		})
	}
}

func TestApplyOwnsGeneratedFileWithoutRecord(t *testing.T) {
	const p = "etc/docker/hosts"
	gen := hostfs.File{Path: p, Base: "etc/docker", Data: []byte(genMark + "a\n"), Merger: "lines", Late: true}
	f := newFixture(t, "etc/docker")
	f.apply(gen)
	require.NoError(t, os.Remove(filepath.Join(f.dir, hostfs.StatePath))) // the record is lost
	gen.Data = []byte(genMark + "b\n")
	res := f.apply(gen)
	require.Empty(t, res.Failed)
	require.Equal(t, genMark+"b\n", f.tree()[p], "replaced, not merged into")
	f.apply()
	require.NotContains(t, f.tree(), p, "nodetrust's own file, not an original to restore")
}

func TestApplyNamesOnlyWrittenFiles(t *testing.T) {
	const dir = "etc/docker/certs.d/r"
	long := dir + "/" + strings.Repeat("x", 260) + ".crt" // ENAMETOOLONG
	a, b := dir+"/a.crt", dir+"/b.crt"
	hosts := func(needs ...string) hostfs.File {
		return hostfs.File{Path: dir + "/hosts", Base: "etc/docker", Data: []byte(genMark + strings.Join(needs, "\n") + "\n"),
			Merger: "lines", Late: true, Needs: needs}
	}
	f := newFixture(t, "etc/docker")
	res := f.apply(file(a, "A"), hosts(a))
	require.Empty(t, res.Failed)

	res = f.apply(file(a, "A"), file(long, "L"), file(b, "B"), hosts(a, long, b))
	require.Len(t, res.Failed, 1)
	require.ErrorContains(t, res.Failed[0], "file name too long")
	require.Equal(t, genMark+a+"\n"+b+"\n", f.tree()[dir+"/hosts"], "names only the files in place")

	res = f.apply(file(long, "L"), hosts(long))
	require.Len(t, res.Failed, 1)
	require.NotContains(t, f.tree(), dir+"/hosts", "names nothing: not written")
	require.Equal(t, map[string]string{"etc": hostfstest.Dir, "etc/docker": hostfstest.Dir}, f.tree())
}

func TestApplySweepsTempFiles(t *testing.T) {
	f := newFixture(t, "etc/docker")
	f.apply(file("etc/docker/certs.d/r/a.crt", "A"))
	hostfstest.WriteFile(t, f.dir, "etc/docker/certs.d/r/.nodetrust-KILLED000000.tmp", "x")
	hostfstest.WriteFile(t, f.dir, "etc/docker/certs.d/.nodetrust-KILLED000001.tmp", "x")
	hostfstest.WriteFile(t, f.dir, "var/lib/nodetrust/.nodetrust-KILLED000002.tmp", "x")
	hostfstest.WriteFile(t, f.dir, "etc/docker/.nodetrust-notours.tmp", "theirs: not a managed directory")
	hostfstest.WriteFile(t, f.dir, "etc/docker/certs.d/r/.other.tmp", "theirs")
	require.Empty(t, f.apply(file("etc/docker/certs.d/r/a.crt", "A")).Swept, "a Root sweeps once: its own runs leave no temporary files")
	f.reopen() // the next run
	res := f.apply()
	require.Equal(t, []string{
		"etc/docker/certs.d/.nodetrust-KILLED000001.tmp",
		"etc/docker/certs.d/r/.nodetrust-KILLED000000.tmp",
		"var/lib/nodetrust/.nodetrust-KILLED000002.tmp",
	}, res.Swept)
	require.Equal(t, map[string]string{
		"etc": dir, "etc/docker": dir, "etc/docker/certs.d": dir, "etc/docker/certs.d/r": dir,
		"etc/docker/.nodetrust-notours.tmp": "theirs: not a managed directory",
		"etc/docker/certs.d/r/.other.tmp":   "theirs",
	}, f.tree())
	entries, err := os.ReadDir(filepath.Join(f.dir, "var/lib/nodetrust"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the record, which keeps the directories holding their files")
}

func TestApplyKeepsOwnerAndMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	const p = "etc/docker/hosts"
	f := newFixture(t, "etc/docker")
	hostfstest.WriteFile(t, f.dir, p, "original\n")
	full := filepath.Join(f.dir, p)
	require.NoError(t, os.Chown(full, 1234, 5678))
	require.NoError(t, os.Chmod(full, 0o640))
	check := func(what string) {
		var st syscall.Stat_t
		require.NoError(t, syscall.Stat(full, &st))
		require.Equal(t, [3]uint32{1234, 5678, 0o640}, [3]uint32{st.Uid, st.Gid, st.Mode & 0o7777}, what)
	}
	f.apply(hostfs.File{Path: p, Base: "etc/docker", Data: []byte("ours\n"), Merger: "lines"})
	require.Equal(t, "original\nours\n", f.tree()[p])
	check("merged")
	f.apply()
	require.Equal(t, "original\n", f.tree()[p])
	check("restored")
}

func TestApplyModesIgnoreUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })
	f := newFixture(t, "etc/docker")
	f.apply(file("etc/docker/certs.d/r/a.crt", "A"))
	for rel, want := range map[string]os.FileMode{
		"etc/docker/certs.d":         os.ModeDir | 0o755,
		"etc/docker/certs.d/r":       os.ModeDir | 0o755,
		"etc/docker/certs.d/r/a.crt": 0o644,
		"var/lib/nodetrust":          os.ModeDir | 0o755,
		hostfs.StatePath:             0o600,
	} {
		info, err := os.Stat(filepath.Join(f.dir, rel))
		require.NoError(t, err)
		require.Equal(t, want, info.Mode(), rel)
	}
}

func TestLoadStateRejectsNonObjects(t *testing.T) {
	for _, data := range []string{"null", "[]", "\"x\"", "1", " null\n"} {
		f := newFixture(t)
		hostfstest.WriteFile(t, f.dir, hostfs.StatePath, data)
		_, err := f.root.LoadState()
		require.ErrorContains(t, err, "is corrupt", data)
	}
}

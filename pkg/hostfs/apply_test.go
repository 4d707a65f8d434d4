package hostfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

const dir = hostfstest.Dir

// lineMerger merges by appending ours and unmerges by dropping its lines.
type lineMerger struct{}

func (lineMerger) Merge(base, ours []byte) ([]byte, error) {
	if strings.Contains(string(base), "bad") {
		return nil, errors.New("cannot merge")
	}
	return append(append([]byte{}, base...), ours...), nil
}

func (lineMerger) Unmerge(cur, ours []byte) ([]byte, error) {
	return []byte(strings.ReplaceAll(string(cur), string(ours), "")), nil
}

// Generated recognises files starting with genMark.
func (lineMerger) Generated(data []byte) bool { return strings.HasPrefix(string(data), genMark) }

// Render names the present files one a line, under genMark.
func (lineMerger) Render(_ string, _ []byte, present []string) []byte {
	return []byte(genMark + strings.Join(present, "\n") + "\n")
}

const genMark = "#generated\n"

type fixture struct {
	t        *testing.T
	dir      string
	root     *hostfs.Root
	refresh  int
	failNext bool
}

// walkMode runs fixtures without openat2, as on Linux < 5.6.
var walkMode bool

func newFixture(t *testing.T, dirs ...string) *fixture {
	f := &fixture{t: t, dir: t.TempDir()}
	hostfstest.MkdirAll(t, f.dir, dirs...)
	root, err := hostfs.Open(f.dir)
	require.NoError(t, err)
	if walkMode {
		hostfs.DisableOpenat2(root)
	}
	t.Cleanup(func() { root.Close() })
	f.root = root
	return f
}

// reopen opens the root again, as the next run (a new process) does.
func (f *fixture) reopen() {
	root, err := hostfs.Open(f.dir)
	require.NoError(f.t, err)
	if walkMode {
		hostfs.DisableOpenat2(root)
	}
	f.t.Cleanup(func() { root.Close() })
	f.root = root
}

func (f *fixture) apply(files ...hostfs.File) hostfs.Result {
	f.t.Helper()
	st, err := f.root.LoadState()
	require.NoError(f.t, err)
	res, err := f.root.Apply(st, files, nil, hostfs.Options{
		Mergers: map[string]hostfs.Merger{"lines": lineMerger{}},
		Refresh: func() error {
			f.refresh++
			if f.failNext {
				f.failNext = false
				return errors.New("refresh failed")
			}
			return nil
		},
	})
	require.NoError(f.t, err)
	return res
}

// tree is the host tree without the ownership record.
func (f *fixture) tree() map[string]string {
	return hostfstest.Tree(f.t, f.dir, "var")
}

func file(p, data string) hostfs.File {
	return hostfs.File{Path: p, Base: "etc/docker", Data: []byte(data)}
}

func TestApplyCreatesUpdatesAndRemoves(t *testing.T) {
	f := newFixture(t, "etc/docker")
	res := f.apply(file("etc/docker/certs.d/r:5000/a.crt", "A"), file("etc/docker/certs.d/r:5000/b.crt", "B"))
	require.Empty(t, res.Failed)
	require.Equal(t, []string{"etc/docker/certs.d/r:5000/a.crt", "etc/docker/certs.d/r:5000/b.crt"}, res.Written)
	require.Equal(t, map[string]string{
		"etc":                             dir,
		"etc/docker":                      dir,
		"etc/docker/certs.d":              dir,
		"etc/docker/certs.d/r:5000":       dir,
		"etc/docker/certs.d/r:5000/a.crt": "A",
		"etc/docker/certs.d/r:5000/b.crt": "B",
	}, f.tree())
	info, err := os.Stat(filepath.Join(f.dir, "etc/docker/certs.d/r:5000/a.crt"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), info.Mode().Perm())

	res = f.apply(file("etc/docker/certs.d/r:5000/a.crt", "A2"))
	require.Equal(t, []string{"etc/docker/certs.d/r:5000/a.crt"}, res.Written)
	require.Equal(t, []string{"etc/docker/certs.d/r:5000/b.crt"}, res.Removed)

	res = f.apply()
	require.Equal(t, []string{"etc/docker/certs.d/r:5000/a.crt"}, res.Removed)
	require.Equal(t, map[string]string{"etc": dir, "etc/docker": dir}, f.tree(), "created directories are removed, the base stays")
}

func TestApplyUnchangedWritesNothing(t *testing.T) {
	f := newFixture(t, "etc/docker")
	files := []hostfs.File{file("etc/docker/certs.d/r/a.crt", "A"), {Path: "etc/docker/certs.d/r/h", Base: "etc/docker", Data: []byte("H"), Late: true}}
	f.apply(files...)
	before := hostfstest.ModTimes(t, f.dir)
	entries, err := os.ReadDir(filepath.Join(f.dir, "var/lib/nodetrust"))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary files left behind")

	res := f.apply(files...)
	require.Empty(t, res.Written)
	require.Empty(t, res.Removed)
	require.Equal(t, before, hostfstest.ModTimes(t, f.dir), "not even the record is rewritten")
}

func TestApplyOrdersLateFiles(t *testing.T) {
	f := newFixture(t, "etc/docker")
	hosts := hostfs.File{Path: "etc/docker/a/hosts", Base: "etc/docker", Data: []byte("refs"), Late: true}
	res := f.apply(hosts, file("etc/docker/a/z.crt", "Z"))
	require.Equal(t, []string{"etc/docker/a/z.crt", "etc/docker/a/hosts"}, res.Written, "referenced files first")
	res = f.apply()
	require.Equal(t, []string{"etc/docker/a/hosts", "etc/docker/a/z.crt"}, res.Removed, "referencing file removed first")
}

func TestApplyRestoresDrift(t *testing.T) {
	f := newFixture(t, "etc/docker")
	a := file("etc/docker/certs.d/r/a.crt", "A")
	f.apply(a)
	p := filepath.Join(f.dir, a.Path)
	require.NoError(t, os.WriteFile(p, []byte("tampered"), 0o644))
	require.Equal(t, []string{a.Path}, f.apply(a).Written)
	require.NoError(t, os.Remove(p))
	require.Equal(t, []string{a.Path}, f.apply(a).Written)
	require.Equal(t, "A", f.tree()[a.Path])
}

func TestApplyNeverTouchesForeignFiles(t *testing.T) {
	f := newFixture(t, "etc/docker/certs.d/r")
	hostfstest.WriteFile(t, f.dir, "etc/docker/certs.d/r/a.crt", "theirs")
	hostfstest.WriteFile(t, f.dir, "etc/docker/certs.d/r/other.crt", "other")
	res := f.apply(file("etc/docker/certs.d/r/a.crt", "ours"), file("etc/docker/certs.d/r/b.crt", "B"))
	require.Len(t, res.Failed, 1)
	require.ErrorContains(t, res.Failed[0], "etc/docker/certs.d/r/a.crt: exists and was not written by nodetrust; left alone")
	require.Equal(t, []string{"etc/docker/certs.d/r/b.crt"}, res.Written, "the other target still applies")

	f.apply()
	require.Equal(t, map[string]string{
		"etc": dir, "etc/docker": dir, "etc/docker/certs.d": dir, "etc/docker/certs.d/r": dir,
		"etc/docker/certs.d/r/a.crt": "theirs", "etc/docker/certs.d/r/other.crt": "other",
	}, f.tree(), "only nodetrust's file is removed; the pre-existing directory stays")
}

func TestApplyKeepsCreatedDirWithForeignFiles(t *testing.T) {
	f := newFixture(t, "etc/docker")
	f.apply(file("etc/docker/certs.d/r/a.crt", "A"))
	hostfstest.WriteFile(t, f.dir, "etc/docker/certs.d/r/theirs.crt", "T")
	f.apply()
	require.Equal(t, "T", f.tree()["etc/docker/certs.d/r/theirs.crt"])
	require.NotContains(t, f.tree(), "etc/docker/certs.d/r/a.crt")

	require.NoError(t, os.Remove(filepath.Join(f.dir, "etc/docker/certs.d/r/theirs.crt")))
	f.apply()
	require.Equal(t, map[string]string{"etc": dir, "etc/docker": dir}, f.tree(), "emptied directories nodetrust created go on a later run")
}

func TestApplyRefusesSymlinks(t *testing.T) {
	outside := t.TempDir()
	tests := map[string]func(f *fixture){
		"directory symlink out of the root": func(f *fixture) {
			hostfstest.MkdirAll(t, f.dir, "etc/docker/certs.d")
			require.NoError(t, os.Symlink(outside, filepath.Join(f.dir, "etc/docker/certs.d/r")))
		},
		"directory symlink inside the root": func(f *fixture) {
			hostfstest.MkdirAll(t, f.dir, "etc/docker/certs.d", "etc/cron.d")
			require.NoError(t, os.Symlink("../../cron.d", filepath.Join(f.dir, "etc/docker/certs.d/r")))
		},
		"file symlink": func(f *fixture) {
			hostfstest.MkdirAll(t, f.dir, "etc/docker/certs.d/r")
			require.NoError(t, os.Symlink(filepath.Join(outside, "x"), filepath.Join(f.dir, "etc/docker/certs.d/r/a.crt")))
		},
		"base symlink": func(f *fixture) {
			require.NoError(t, os.Remove(filepath.Join(f.dir, "etc/docker")))
			require.NoError(t, os.Symlink(outside, filepath.Join(f.dir, "etc/docker")))
		},
	}
	for name, setup := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, "etc/docker")
			setup(f)
			before := f.tree()
			res := f.apply(file("etc/docker/certs.d/r/a.crt", "A"), hostfs.File{Path: "etc/other/b.crt", Base: "etc", Data: []byte("B")})
			require.Len(t, res.Failed, 1)
			require.ErrorContains(t, res.Failed[0], "symlink")
			require.Equal(t, []string{"etc/other/b.crt"}, res.Written, "the other target still applies")
			after := f.tree()
			delete(after, "etc/other")
			delete(after, "etc/other/b.crt")
			require.Equal(t, before, after)
			require.Empty(t, hostfstest.Tree(t, outside))
		})
	}
}

func TestApplyMissingBaseFails(t *testing.T) {
	f := newFixture(t)
	res := f.apply(file("etc/docker/certs.d/r/a.crt", "A"))
	require.Len(t, res.Failed, 1)
	require.ErrorContains(t, res.Failed[0], "directory etc/docker does not exist")
	require.Empty(t, f.tree())
	st, err := f.root.LoadState()
	require.NoError(t, err)
	require.Empty(t, st.Files, "a failed create is not owned")
	require.Empty(t, st.Dirs)
}

func TestApplyRejectsUncleanPaths(t *testing.T) {
	f := newFixture(t, "etc/docker")
	for _, p := range []string{"../x", "/etc/x", "etc/../x", ""} {
		res := f.apply(hostfs.File{Path: p, Data: []byte("x")})
		require.Len(t, res.Failed, 1, p)
		require.ErrorContains(t, res.Failed[0], "not a clean path")
	}
}

func TestApplyMergesAndRestores(t *testing.T) {
	const p = "etc/docker/hosts"
	merged := hostfs.File{Path: p, Base: "etc/docker", Data: []byte("ours\n"), Merger: "lines", Late: true}

	t.Run("restored byte for byte", func(t *testing.T) {
		f := newFixture(t, "etc/docker")
		hostfstest.WriteFile(t, f.dir, p, "original\n")
		require.NoError(t, os.Chmod(filepath.Join(f.dir, p), 0o600))
		f.apply(merged)
		require.Equal(t, "original\nours\n", f.tree()[p])
		info, err := os.Stat(filepath.Join(f.dir, p))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "mode of the original kept")

		require.Empty(t, f.apply(merged).Written, "unchanged merge writes nothing")
		f.apply()
		require.Equal(t, "original\n", f.tree()[p])
		st, err := f.root.LoadState()
		require.NoError(t, err)
		require.Empty(t, st.Files)
	})
	t.Run("operator edits kept", func(t *testing.T) {
		f := newFixture(t, "etc/docker")
		hostfstest.WriteFile(t, f.dir, p, "original\n")
		f.apply(merged)
		hostfstest.WriteFile(t, f.dir, p, "original\nours\nedited\n")
		f.apply(merged)
		require.Equal(t, "original\nedited\nours\n", f.tree()[p], "re-merged into the edited file")
		f.apply()
		require.Equal(t, "original\nedited\n", f.tree()[p])
	})
	t.Run("merge failure leaves the file alone", func(t *testing.T) {
		f := newFixture(t, "etc/docker")
		hostfstest.WriteFile(t, f.dir, p, "bad\n")
		res := f.apply(merged)
		require.Len(t, res.Failed, 1)
		require.ErrorContains(t, res.Failed[0], "cannot merge")
		require.Equal(t, "bad\n", f.tree()[p])
	})
	t.Run("a merged file that stops taking ours gets ours taken out", func(t *testing.T) {
		f := newFixture(t, "etc/docker")
		hostfstest.WriteFile(t, f.dir, p, "original\n")
		f.apply(merged)
		hostfstest.WriteFile(t, f.dir, p, "original\nours\nbad\n")
		res := f.apply(merged)
		require.Len(t, res.Failed, 1)
		require.ErrorContains(t, res.Failed[0], "cannot merge")
		require.Equal(t, "original\nbad\n", f.tree()[p], "the operator's file, without ours")
		st, err := f.root.LoadState()
		require.NoError(t, err)
		require.NotContains(t, st.Files, p, "no longer ours")
		res = f.apply(merged)
		require.Len(t, res.Failed, 1, "still reported")
		require.Equal(t, "original\nbad\n", f.tree()[p], "and left alone")
	})
}

func TestApplyRefresh(t *testing.T) {
	f := newFixture(t, "etc/pki")
	anchor := hostfs.File{Path: "etc/pki/a.crt", Base: "etc/pki", Data: []byte("A"), Refresh: true}
	other := file("etc/pki/b.crt", "B")
	other.Base = "etc/pki"

	f.apply(other)
	require.Equal(t, 0, f.refresh, "no refresh for files that do not need it")
	f.failNext = true
	res := f.apply(other, anchor)
	require.Equal(t, 1, f.refresh)
	require.ErrorContains(t, res.RefreshErr, "refresh failed")
	res = f.apply(other, anchor)
	require.Equal(t, 2, f.refresh, "a failed refresh is retried though nothing changed")
	require.NoError(t, res.RefreshErr)
	f.apply(other, anchor)
	require.Equal(t, 2, f.refresh, "and not again once it succeeded")
	f.apply(other)
	require.Equal(t, 3, f.refresh, "removing an anchor refreshes")

	st, err := f.root.LoadState()
	require.NoError(t, err)
	require.True(t, st.Pending.TrustStore, "a changed trust store awaits a runtime restart")
	require.NoError(t, f.root.ClearRestarts())
	require.False(t, f.apply(other).Pending.TrustStore, "until the next change")
}

func TestApplyConvergesFromIntent(t *testing.T) {
	// A crash after the intent was recorded and the file written, but before
	// the final record: the next run still owns the file and removes it.
	f := newFixture(t, "etc/docker")
	hostfstest.WriteFile(t, f.dir, "etc/docker/certs.d/r/a.crt", "A")
	hostfstest.WriteFile(t, f.dir, hostfs.StatePath,
		`{"version":1,"files":{"etc/docker/certs.d/r/a.crt":{}},"dirs":["etc/docker/certs.d","etc/docker/certs.d/r"]}`)

	res := f.apply()
	require.Empty(t, res.Failed)
	require.Equal(t, []string{"etc/docker/certs.d/r/a.crt"}, res.Removed)
	require.Equal(t, map[string]string{"etc": dir, "etc/docker": dir}, f.tree())
}

func TestApplyIntentRecordedBeforeWrites(t *testing.T) {
	// The refresh hook runs after the writes and before the final record, so
	// the record it sees is the intent: it must already claim the new file,
	// its new directory and the pending refresh.
	f := newFixture(t, "etc/pki")
	anchor := hostfs.File{Path: "etc/pki/n/a.crt", Base: "etc/pki", Data: []byte("A"), Refresh: true}
	var seen hostfs.State
	st, err := f.root.LoadState()
	require.NoError(t, err)
	_, err = f.root.Apply(st, []hostfs.File{anchor}, nil, hostfs.Options{Refresh: func() error {
		var err error
		seen, err = f.root.LoadState()
		return err
	}})
	require.NoError(t, err)
	require.Contains(t, seen.Files, anchor.Path)
	require.Empty(t, seen.Files[anchor.Path].SHA256, "intent: content not yet confirmed")
	require.Equal(t, []string{"etc/pki/n"}, seen.Dirs)
	require.True(t, seen.RefreshPending)

	final, err := f.root.LoadState()
	require.NoError(t, err)
	require.NotEmpty(t, final.Files[anchor.Path].SHA256)
	require.False(t, final.RefreshPending)
}

func TestLoadStateCorrupt(t *testing.T) {
	f := newFixture(t)
	hostfstest.WriteFile(t, f.dir, hostfs.StatePath, "{not json")
	_, err := f.root.LoadState()
	require.ErrorContains(t, err, "ownership record var/lib/nodetrust/state.json is corrupt")
}

func TestReadFileInRoot(t *testing.T) {
	f := newFixture(t, "usr/lib", "etc")
	hostfstest.WriteFile(t, f.dir, "usr/lib/os-release", "ID=inside\n")
	outside := t.TempDir()
	hostfstest.WriteFile(t, outside, "secret", "outside\n")

	links := map[string]string{
		"etc/os-release":   "../usr/lib/os-release", // Debian, Ubuntu, Fedora
		"etc/abs":          "/usr/lib/os-release",   // absolute: inside the root, not the caller's /
		"etc/climb":        "../../../../usr/lib/os-release",
		"etc/escape":       filepath.Join(outside, "secret"),
		"etc/loop":         "loop",
		"etc/dirlink":      "/usr/lib",
		"etc/chain":        "abs",
		"etc/parent-climb": "../..",
	}
	for name, target := range links {
		require.NoError(t, os.Symlink(target, filepath.Join(f.dir, name)))
	}
	for rel, want := range map[string]string{
		"etc/os-release":         "ID=inside\n",
		"etc/abs":                "ID=inside\n",
		"etc/climb":              "ID=inside\n",
		"etc/chain":              "ID=inside\n",
		"etc/dirlink/os-release": "ID=inside\n",
	} {
		data, err := f.root.ReadFileInRoot(rel)
		require.NoError(t, err, rel)
		require.Equal(t, want, string(data), rel)
	}
	_, err := f.root.ReadFileInRoot("etc/escape")
	require.Error(t, err, "an absolute target outside is looked up inside the root, where it does not exist")
	_, err = f.root.ReadFileInRoot("etc/loop")
	require.ErrorContains(t, err, "too many levels")
	_, err = f.root.ReadFileInRoot("etc/parent-climb")
	require.Error(t, err, "resolves to the root directory, not a file")

	_, err = f.root.ReadFile("etc/os-release")
	require.ErrorContains(t, err, "symlink", "plain reads stay strict")
}

// TestWithoutOpenat2 repeats the path-safety tests with the component walk
// that replaces openat2 on old kernels.
func TestWithoutOpenat2(t *testing.T) {
	walkMode = true
	t.Cleanup(func() { walkMode = false })
	for name, test := range map[string]func(*testing.T){
		"refuses symlinks":     TestApplyRefusesSymlinks,
		"read in root":         TestReadFileInRoot,
		"create update remove": TestApplyCreatesUpdatesAndRemoves,
		"foreign files":        TestApplyNeverTouchesForeignFiles,
		"unclean paths":        TestApplyRejectsUncleanPaths,
	} {
		t.Run(name, test)
	}
}

func TestApplyRestartTags(t *testing.T) {
	f := newFixture(t, "etc/containerd")
	p := "etc/containerd/config.toml"
	hostfstest.WriteFile(t, f.dir, p, "version = 2\n")
	conf := func(data string) hostfs.File {
		return hostfs.File{Path: p, Base: "etc/containerd", Data: []byte(data), Merger: "lines", Restart: "containerd.service"}
	}
	plain := file("etc/containerd/other", "x")

	res := f.apply(plain)
	require.Empty(t, res.Pending.Units, "files without a tag restart nothing")
	res = f.apply(plain, conf("ours\n"))
	require.Equal(t, []string{"containerd.service"}, res.Pending.Units, "merging into the config awaits a restart")
	require.Equal(t, []string{"containerd.service"}, f.apply(plain, conf("ours\n")).Pending.Units, "until cleared")

	require.NoError(t, f.root.ClearRestarts())
	res = f.apply(plain, conf("ours\n"))
	require.Empty(t, res.Pending.Units, "an unchanged file awaits nothing")
	require.Empty(t, res.Written)
	require.Equal(t, []string{"containerd.service"}, f.apply(plain, conf("new\n")).Pending.Units, "a changed one does")

	res = f.apply(plain)
	require.Equal(t, []string{p}, res.Removed)
	require.Equal(t, "version = 2\n", f.tree()[p], "the original is back")
	require.Empty(t, res.Pending.Units, "what runs matches the original again: no restart for the restore")

	f.apply(plain, conf("ours\n"))
	require.NoError(t, f.root.ClearRestarts())
	res = f.apply(plain)
	require.Equal(t, "version = 2\n", f.tree()[p])
	require.Empty(t, res.Pending.Units, "a restore after the restart restarts nothing either")
}

func TestApplyCreateAsMerge(t *testing.T) {
	const p = "etc/docker/config"
	created := hostfs.File{Path: p, Base: "etc/docker", Data: []byte("ours\n"), Merger: "lines", CreateAsMerge: true}

	t.Run("created, then removed", func(t *testing.T) {
		f := newFixture(t, "etc/docker")
		require.Equal(t, []string{p}, f.apply(created).Written)
		require.Equal(t, "ours\n", f.tree()[p])
		require.Empty(t, f.apply(created).Written, "unchanged: nothing written")
		require.Equal(t, []string{p}, f.apply().Removed)
		require.NotContains(t, f.tree(), p, "nodetrust's own file is gone")
	})
	t.Run("someone else's file in its place is merged into and kept", func(t *testing.T) {
		f := newFixture(t, "etc/docker")
		f.apply(created)
		hostfstest.WriteFile(t, f.dir, p, "theirs\n") // e.g. a package installs its own
		f.apply(created)
		require.Equal(t, "theirs\nours\n", f.tree()[p], "merged, not overwritten")
		f.apply()
		require.Equal(t, "theirs\n", f.tree()[p], "kept without nodetrust's entries")
	})
	t.Run("without the flag a created file is plain", func(t *testing.T) {
		f := newFixture(t, "etc/docker")
		plain := created
		plain.CreateAsMerge = false
		f.apply(plain)
		hostfstest.WriteFile(t, f.dir, p, "theirs\n")
		f.apply(plain)
		require.Equal(t, "ours\n", f.tree()[p], "drift repaired, as for every owned file")
	})
}

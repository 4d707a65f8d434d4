// Package hostfstest snapshots a host root for whole-tree assertions, so a
// missing file and an extra file both fail a test.
package hostfstest

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Dir marks a directory in a Tree.
const Dir = "<dir>"

// Tree maps every path below root (slash-separated, relative) to its file
// content, Dir for a directory, or "-> target" for a symlink. Paths in skip
// are left out, with everything below them.
func Tree(t testing.TB, root string, skip ...string) map[string]string {
	t.Helper()
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if skipped[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			out[rel] = "-> " + target
			return err
		case d.IsDir():
			out[rel] = Dir
		default:
			data, err := os.ReadFile(p)
			out[rel] = string(data)
			return err
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

// ModTimes maps every regular file below root to its modification time, to
// prove that a run wrote nothing.
func ModTimes(t testing.TB, root string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = info.ModTime().UnixNano()
		return nil
	})
	require.NoError(t, err)
	return out
}

// MkdirAll creates directories below root.
func MkdirAll(t testing.TB, root string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
}

// WriteFile writes a file below root, creating its directory.
func WriteFile(t testing.TB, root, rel, data string) {
	t.Helper()
	p := filepath.Join(root, rel)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, []byte(data), 0o644))
}

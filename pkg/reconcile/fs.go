package reconcile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
)

// ConfigFS returns the host root as an fs.FS for reading configuration as
// the node's own processes would: ReadFile resolves symlinks inside the
// root (hostfs.Root.ReadFileInRoot), so no link reads the agent's own
// files; directories are listed and globbed as they are below root.Dir();
// ReadLink reads a link whose parent is reached without symlinks.
func ConfigFS(root *hostfs.Root) fs.FS { return configFS{root: root, FS: os.DirFS(root.Dir())} }

type configFS struct {
	root *hostfs.Root
	fs.FS
}

func (c configFS) ReadFile(name string) ([]byte, error) { return c.root.ReadFileInRoot(name) }

// Glob lists matches below the root; reading them stays inside the root.
func (c configFS) Glob(pattern string) ([]string, error) { return globBelow(c.root.Dir(), pattern) }

func (c configFS) ReadLink(name string) (string, error) { return c.root.Readlink(name) }

func (c configFS) Lstat(name string) (fs.FileInfo, error) {
	return os.Lstat(filepath.Join(c.root.Dir(), name))
}

// treeFS is the host root as hostfs writes it: ReadFile refuses a symlink
// anywhere in the path, and Stat counts a directory only when it is
// reached without symlinks.
type treeFS struct {
	root *hostfs.Root
	fs.FS
}

func (t treeFS) ReadFile(name string) ([]byte, error) { return t.root.ReadFile(name) }

// errSymlink is the Stat error of a directory reached through a symlink.
var errSymlink = errors.New("reached through a symlink")

func (t treeFS) Stat(name string) (fs.FileInfo, error) {
	fi, err := os.Lstat(filepath.Join(t.root.Dir(), name))
	if err == nil && fi.IsDir() && !t.root.IsDir(name) {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: errSymlink}
	}
	return fi, err
}

// containerdRoot is the host root as package containerd reads it.
func containerdRoot(root *hostfs.Root) containerd.Root {
	return containerd.Root{Config: ConfigFS(root), Tree: treeFS{root: root, FS: os.DirFS(root.Dir())}}
}

func globBelow(dir, pattern string) ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, filepath.FromSlash(pattern)))
	for i, m := range matches {
		rel, _ := filepath.Rel(dir, m)
		matches[i] = filepath.ToSlash(rel)
	}
	return matches, err
}

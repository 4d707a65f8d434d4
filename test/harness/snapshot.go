package harness

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Entry is one path of a tree walk: everything any suite's snapshot compares.
type Entry struct {
	Mode     fs.FileMode
	Size     int64
	ModTime  time.Time
	Ino      uint64
	UID, GID uint32
	Content  string // a regular file's content, a symlink's target
}

// Walk records every path under root, relative and slash-separated (root
// itself is "."), without following symlinks. A walk that fails returns
// WalkDir's error (fs.ErrNotExist for a missing root).
func Walk(root string) (map[string]Entry, error) {
	out := map[string]Entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := Entry{Mode: info.Mode(), Size: info.Size(), ModTime: info.ModTime()}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			e.Ino, e.UID, e.GID = st.Ino, st.Uid, st.Gid
		}
		switch {
		case info.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Content = string(data)
		case info.Mode()&fs.ModeSymlink != 0:
			if e.Content, err = os.Readlink(p); err != nil {
				return err
			}
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	return out, err
}

// FileInfo is what Snapshot records per path.
type FileInfo struct {
	Mode    fs.FileMode
	Size    int64
	ModTime time.Time
	Ino     uint64
}

// Snapshot records every path under root (mtime, size, mode, inode), less
// the host root's lock.
func Snapshot(root string) (map[string]FileInfo, error) {
	tree, err := Walk(root)
	out := map[string]FileInfo{}
	for rel, e := range tree {
		if rel == lockFile {
			continue // names its holder: it changes with each process that takes it
		}
		out[rel] = FileInfo{Mode: e.Mode, Size: e.Size, ModTime: e.ModTime, Ino: e.Ino}
	}
	// The lock's directory, while it holds nothing else, exists only while
	// some nodetrust holds the lock.
	alone := true
	for k := range out {
		if strings.HasPrefix(k, lockDir+"/") {
			alone = false
		}
	}
	if alone {
		delete(out, lockDir)
	}
	return out, err
}

// DiffSnapshots lists every difference between two snapshots.
func DiffSnapshots(a, b map[string]FileInfo) []string {
	var diffs []string
	for _, k := range sortedKeys(a) {
		bv, ok := b[k]
		if !ok {
			diffs = append(diffs, "removed "+k)
			continue
		}
		av := a[k]
		if av.Mode != bv.Mode || av.Size != bv.Size || !av.ModTime.Equal(bv.ModTime) || av.Ino != bv.Ino {
			diffs = append(diffs, fmt.Sprintf("changed %s: %+v -> %+v", k, av, bv))
		}
	}
	for _, k := range sortedKeys(b) {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, "added "+k)
		}
	}
	return diffs
}

// WaitSettled polls snapshots of root until nothing changed for quiet (the
// agent finishes a sync after the files a test looks at: the ownership
// record is written last). It returns the settled snapshot.
func WaitSettled(root string, quiet, timeout time.Duration) (map[string]FileInfo, error) {
	deadline := time.Now().Add(timeout)
	prev, err := Snapshot(root)
	if err != nil {
		return nil, err
	}
	since := time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		cur, err := Snapshot(root)
		if err != nil {
			return nil, err
		}
		if len(DiffSnapshots(prev, cur)) > 0 {
			prev, since = cur, time.Now()
			continue
		}
		if time.Since(since) >= quiet {
			return cur, nil
		}
	}
	return nil, fmt.Errorf("%s kept changing for %v", root, timeout)
}

// The host root's lock (SPEC §5), relative to the root.
const (
	lockDir  = "var/lib/nodetrust"
	lockFile = lockDir + "/lock"
)

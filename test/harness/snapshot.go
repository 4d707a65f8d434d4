package harness

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// FileInfo is what a snapshot records per path.
type FileInfo struct {
	Mode    fs.FileMode
	Size    int64
	ModTime time.Time
	Ino     uint64
}

// Snapshot records every path under root (mtime, size, mode, inode).
func Snapshot(root string) (map[string]FileInfo, error) {
	out := map[string]FileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == lockFile {
			return nil // names its holder: it changes with each process that takes it
		}
		fi := FileInfo{Mode: info.Mode(), Size: info.Size(), ModTime: info.ModTime()}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			fi.Ino = st.Ino
		}
		out[rel] = fi
		return nil
	})
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

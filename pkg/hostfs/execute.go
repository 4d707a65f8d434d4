package hostfs

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"
)

// sweep removes temporary files left by killed runs in every directory
// nodetrust manages: recorded directories, those holding recorded files,
// and the record's own.
//
// Only the first Apply of a Root sweeps: with one writer per host root (the
// lock), temporary files come only from a run killed before this one, and an
// agent's later syncs would read every managed directory for nothing.
func (a *applier) sweep() {
	if a.root.swept {
		return
	}
	a.root.swept = true
	dirs := map[string]bool{path.Dir(StatePath): true}
	for p := range a.old.Files {
		dirs[path.Dir(p)] = true
	}
	for _, d := range a.old.Dirs {
		dirs[d] = true
	}
	for d := range dirs {
		a.res.Swept = append(a.res.Swept, a.root.sweep(d)...)
	}
	sort.Strings(a.res.Swept)
}

// saveIntent records, before the planned writes, the ownership of every
// path about to be written, with the content it is about to get as
// Pending, and every directory about to be made, so a kill at any point
// leaves a record the next run converges from: the file holds the content
// last confirmed, the pending one, or (for a merge) the original.
func (a *applier) saveIntent() error {
	intent := cloneState(a.next)
	intent.Applied = a.old.Applied
	changed := false
	for _, w := range a.writes {
		o := w.owned
		o.SHA256 = intent.Files[w.path].SHA256 // "" for a create
		o.Pending = hash(w.data)
		intent.Files[w.path] = o
		changed = true
		for _, d := range a.missingDirs(w.path, w.baseDir) {
			intent.Dirs = addItem(intent.Dirs, d)
		}
	}
	if a.refreshNeeded && !intent.RefreshPending {
		intent.RefreshPending = true
		changed = changed || !a.refreshRecorded
		a.refreshRecorded = true
	}
	if !changed {
		return nil
	}
	return a.root.saveState(intent)
}

// batchSize bounds the directories a write batch holds open.
const batchSize = 256

// write executes the planned writes, in batches, and clears them.
func (a *applier) write() {
	defer func() { a.writes = nil }()
	var batch []staged
	var ops []writeOp
	flush := func() {
		for i, err := range commit(batch) {
			a.written(ops[i], err)
		}
		batch, ops = batch[:0], ops[:0]
	}
	for _, w := range a.writes {
		s, err := a.stage(w)
		if err != nil {
			a.written(w, err)
			continue
		}
		batch, ops = append(batch, s), append(ops, w)
		if len(batch) == batchSize {
			flush()
		}
	}
	flush()
}

// remove executes the planned removals and restores, then removes the
// directories nodetrust created that nothing needs any more.
func (a *applier) remove() {
	for _, rm := range a.removes {
		var err error
		switch rm.undo {
		case unlink:
			err = a.root.remove(rm.path, false)
		case restoreBase:
			err = a.root.atomicWrite(rm.path, rm.base, rm.at)
		case baseInPlace: // nothing to write
		}
		if err != nil {
			a.fail(rm.path, err)
			continue
		}
		delete(a.next.Files, rm.path)
		a.res.Removed = append(a.res.Removed, rm.path)
		if rm.owned.Restart != "" {
			a.next.Units = removeItem(a.next.Units, rm.owned.Restart)
		}
	}
	a.removeEmptyDirs()
}

// written records the outcome of one write.
func (a *applier) written(w writeOp, err error) {
	if err != nil {
		a.fail(w.path, err)
		if !w.recorded {
			delete(a.next.Files, w.path)
		}
		return
	}
	a.next.Files[w.path] = w.owned
	a.res.Written = append(a.res.Written, w.path)
	if w.absent && w.recorded {
		a.res.Recreated = append(a.res.Recreated, w.path)
	}
	if w.owned.Restart != "" {
		a.next.Units = addItem(a.next.Units, w.owned.Restart)
		a.restartChanged = true
	}
}

// stage creates missing directories and writes w's temporary file.
func (a *applier) stage(w writeOp) (staged, error) {
	if w.baseDir != "" && !a.isDir(w.baseDir) {
		if _, err := a.root.stat(w.baseDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return staged{}, err
		}
		return staged{}, fmt.Errorf("directory %s does not exist", w.baseDir)
	}
	for _, d := range a.missingDirs(w.path, w.baseDir) {
		if err := a.root.mkdir(d); err != nil {
			return staged{}, err
		}
		a.dirs[d] = true
		a.next.Dirs = addItem(a.next.Dirs, d)
	}
	s, err := a.root.stage(w.path, w.data, w.at)
	s.noReplace = w.absent
	return s, err
}

// isDir reports, with a cache for one apply, whether d is a directory
// reached without symlinks.
func (a *applier) isDir(d string) bool {
	if !a.dirs[d] && a.root.IsDir(d) {
		a.dirs[d] = true
	}
	return a.dirs[d]
}

// missingDirs lists the directories between base and p's parent that do not
// exist yet, outermost first.
func (a *applier) missingDirs(p, base string) []string {
	var out []string
	for d := path.Dir(p); d != "." && d != base && (base == "" || strings.HasPrefix(d, base+"/")); d = path.Dir(d) {
		if a.isDir(d) {
			break
		}
		out = append([]string{d}, out...)
	}
	return out
}

// removeEmptyDirs removes recorded directories that no desired file needs
// and that are empty, deepest first. A directory holding someone else's
// files stays, and stays recorded.
func (a *applier) removeEmptyDirs() {
	needed := map[string]bool{}
	for p := range a.next.Files {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			needed[d] = true
		}
	}
	dirs := append([]string(nil), a.next.Dirs...)
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		if needed[d] {
			continue
		}
		if a.root.remove(d, true) == nil {
			a.next.Dirs = removeItem(a.next.Dirs, d)
		}
	}
}

// refresh runs the refresh hook after a change to a Refresh file, or when
// an earlier run's refresh is still pending, and records what awaits a
// restart after it.
func (a *applier) refresh() {
	pending := a.refreshNeeded || a.old.RefreshPending
	if a.opts.Refresh != nil && pending {
		a.res.Refreshed = true
		a.res.RefreshErr = a.opts.Refresh()
	}
	a.next.RefreshPending = pending && (a.opts.Refresh == nil || a.res.RefreshErr != nil)
	if a.res.Refreshed && a.res.RefreshErr == nil {
		a.next.TrustStore = true
		a.restartChanged = true
	}
}

// finish dates what awaits a restart and fills in the rest of the result.
func (a *applier) finish() {
	if a.restartChanged { // after the writes and the refresh: a process started before them may predate them
		a.next.Since = time.Now().UTC()
	}
	if !a.next.Pending.Any() {
		a.next.Since = time.Time{}
	}
	a.res.Pending = a.next.Pending
	a.res.Owned = make([]string, 0, len(a.next.Files))
	for p := range a.next.Files {
		a.res.Owned = append(a.res.Owned, p)
	}
}

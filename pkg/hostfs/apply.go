package hostfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// File is one desired file.
type File struct {
	// Path is slash-separated and relative to the host root.
	Path string
	// Base is a directory that must already exist (a runtime's config dir,
	// a trust anchor dir); missing directories between it and Path are
	// created and owned.
	Base string
	Data []byte
	// Merger, when set, names the Options.Mergers entry that merges Data
	// into a file at Path that nodetrust did not write, instead of refusing
	// to touch it.
	Merger string
	// Refresh marks files whose change requires a trust store refresh.
	Refresh bool
	// Late files reference other files: they are written after, and
	// removed before, all others.
	Late bool
	// CreateAsMerge, with Merger: a file nodetrust creates is recorded as
	// merged into no file. A file someone puts in its place later is then
	// merged into instead of overwritten, and kept, without nodetrust's
	// entries, when nodetrust removes its own.
	CreateAsMerge bool
	// Restart names what must restart to load a change to this file (a
	// systemd unit). Writing the file adds it to State.Pending.Units; restoring
	// the original takes it out again, as what runs then matches the disk.
	Restart string
	// Needs, on a Late file, lists the files (paths) its Data names. After
	// the other files are written, a Late file names only those in place:
	// when some are not (their create failed), its Data is rendered again
	// from those that are by its Merger, which must then be a Renderer, or
	// the file keeps its previous content and fails. With none in place, it
	// is not desired at all.
	Needs []string
}

// Merger merges nodetrust's content into a file someone else wrote.
type Merger interface {
	// Merge returns base with ours added.
	Merge(base, ours []byte) ([]byte, error)
	// Unmerge returns current with everything ours added removed.
	Unmerge(current, ours []byte) ([]byte, error)
	// Generated reports whether data is a file nodetrust generated (it
	// carries nodetrust's marker). Such a file is nodetrust's own even
	// when the ownership record is lost: it is replaced, never taken for
	// someone's original to merge into and restore.
	Generated(data []byte) bool
}

// Renderer renders a Late file's content again from the subset of its
// File.Needs that are in place (see File.Needs).
type Renderer interface {
	// Render returns ours, the Data of the File at file, naming only the
	// files in present.
	Render(file string, ours []byte, present []string) []byte
}

// Creator is a Merger that decides what to write where no file exists; a
// nil result writes nothing (additions that only ever go into someone
// else's file). Without it, File.Data is written.
type Creator interface {
	// Create returns what to write for ours where no file exists, or nil
	// to write nothing.
	Create(ours []byte) ([]byte, error)
}

// Options are the hooks of an Apply.
type Options struct {
	// Mergers by name, for File.Merger and for unmerging recorded merges.
	Mergers map[string]Merger
	// Refresh, when set, runs after any change to a Refresh file, and again
	// on later applies until it succeeds.
	Refresh func() error
}

// Result says what an Apply did.
type Result struct {
	Written []string
	Removed []string
	// Recreated are the files of Written that nodetrust owned and found
	// deleted: someone else removed them since the last apply.
	Recreated []string
	// Failed holds one error per target that could not be written or
	// removed; everything else was still applied.
	Failed []error
	// Refreshed is true when the refresh hook ran; RefreshErr is its error.
	Refreshed  bool
	RefreshErr error
	// Owned lists every file nodetrust owns after the apply.
	Owned []string
	// Pending is what awaits a restart after the apply.
	Pending Pending
	// Swept lists the temporary files of killed runs that were removed.
	Swept []string
}

// Apply makes the files nodetrust owns under the root match desired, and
// records applied in the ownership record. Only a failure to save the
// record (ErrNotRecorded, with the Result of what was done) is returned as
// an error; failures of single targets are in Result.Failed. Hold the
// root's Lock from before LoadState until Apply returns.
//
// st is the record as returned by LoadState.
func (r *Root) Apply(st State, desired []File, applied json.RawMessage, opts Options) (Result, error) {
	a := &applier{root: r, opts: opts, old: st, dirs: map[string]bool{}, next: cloneState(st)}
	a.next.Applied = applied
	a.sweep()
	// Files other files name first, then, knowing which of them are in
	// place, the files that name them, then removals.
	early, late, want := a.sorted(desired)
	for _, f := range early {
		a.planFile(f)
	}
	if err := a.saveIntent(); err != nil {
		return a.res, err
	}
	a.write()
	for _, f := range late {
		if f, ok := a.resolveNeeds(f); ok {
			a.planFile(f)
		} else {
			delete(want, f.Path)
		}
	}
	a.planRemovals(want)
	if err := a.saveIntent(); err != nil {
		return a.res, err
	}
	a.write()
	a.remove()
	a.refresh()
	a.finish()
	return a.res, r.saveState(a.next)
}

// applier is one Apply: the record before it (old) and as it becomes
// (next), the planned operations and the result.
type applier struct {
	root          *Root
	opts          Options
	old, next     State
	dirs          map[string]bool // directories verified free of symlinks
	writes        []writeOp
	removes       []removeOp
	refreshNeeded bool
	// refreshRecorded: an intent saved so far has RefreshPending.
	refreshRecorded bool
	// restartChanged: a write or refresh this apply made awaits a restart.
	restartChanged bool
	res            Result
}

func (a *applier) fail(p string, err error) {
	a.res.Failed = append(a.res.Failed, fmt.Errorf("%s: %w", p, err))
}

// sorted splits desired into plain and Late files, each sorted by path,
// and returns the set of desired paths. A path desired twice fails.
func (a *applier) sorted(desired []File) (early, late []File, want map[string]bool) {
	want = make(map[string]bool, len(desired))
	sorted := append([]File(nil), desired...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		if want[f.Path] {
			a.fail(f.Path, errors.New("desired twice"))
			continue
		}
		want[f.Path] = true
		if f.Late {
			late = append(late, f)
		} else {
			early = append(early, f)
		}
	}
	return early, late, want
}

// resolveNeeds returns f naming only the files of f.Needs that are in
// place, and false when none is.
func (a *applier) resolveNeeds(f File) (File, bool) {
	if len(f.Needs) == 0 {
		return f, true
	}
	var present, missing []string
	for _, p := range f.Needs {
		if a.inPlace(p) {
			present = append(present, p)
		} else {
			missing = append(missing, p)
		}
	}
	switch {
	case len(missing) == 0:
		return f, true
	case len(present) == 0:
		return f, false
	}
	r, ok := a.opts.Mergers[f.Merger].(Renderer)
	if !ok {
		f.Data = nil // planFile fails it: the previous content stays
		return f, true
	}
	f.Data = r.Render(f.Path, f.Data, present)
	return f, true
}

// inPlace reports whether p is a file nodetrust owns and that is on disk.
func (a *applier) inPlace(p string) bool {
	if _, ok := a.next.Files[p]; !ok {
		return false
	}
	t, err := a.root.stat(p)
	return err == nil && t == unix.S_IFREG
}

package hostfs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// StatePath is where the ownership record lives, relative to the host root.
const StatePath = "var/lib/nodetrust/state.json"

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

// Owned is the record of one file nodetrust wrote or merged into.
type Owned struct {
	// SHA256 of the content last written; empty while a create is intended
	// but not yet confirmed.
	SHA256  string      `json:"sha256,omitempty"`
	Merge   *MergeState `json:"merge,omitempty"`
	Refresh bool        `json:"refresh,omitempty"`
	Late    bool        `json:"late,omitempty"`
	Restart string      `json:"restart,omitempty"`
	// Pending is the SHA-256 of content about to replace the file, in the
	// intent recorded before the write: a file holding it is nodetrust's
	// own output, written by a run that was killed before it confirmed it.
	Pending string `json:"pending,omitempty"`
}

// MergeState keeps what a merged file is restored from.
type MergeState struct {
	// Base is the content without nodetrust's entries: the original file
	// byte for byte, or the operator's edited file with nodetrust's entries
	// removed.
	Base []byte `json:"base"`
	// Ours is nodetrust's own content that was merged into Base.
	Ours []byte `json:"ours"`
	// Merger names the Options.Mergers entry that did the merge.
	Merger string `json:"merger"`
	// Created: there was no file; Base is empty and restoring removes it.
	Created bool `json:"created,omitempty"`
}

// ErrNotRecorded wraps the error of an Apply that could not save the
// ownership record (a full disk): its Result still says what it did.
var ErrNotRecorded = errors.New("ownership record not saved")

// Options are the hooks of an Apply.
type Options struct {
	// Mergers by name, for File.Merger and for unmerging recorded merges.
	Mergers map[string]Merger
	// Refresh, when set, runs after any change to a Refresh file, and again
	// on later applies until it succeeds.
	Refresh func() error
}

// State is the ownership record.
type State struct {
	Version        int              `json:"version"`
	Files          map[string]Owned `json:"files,omitempty"`
	Dirs           []string         `json:"dirs,omitempty"`
	RefreshPending bool             `json:"refreshPending,omitempty"`
	// Pending is what awaits a restart; it survives agent restarts.
	Pending
	// Applied is the caller's description of what was applied, kept opaque.
	Applied json.RawMessage `json:"applied,omitempty"`
}

// Pending is what awaits a restart: changes that processes started before
// them have not loaded. ClearRestarts clears it once they were restarted.
type Pending struct {
	// TrustStore: a refresh changed the OS trust store, which the container
	// runtimes load once per process.
	TrustStore bool `json:"restartPending,omitempty"`
	// Units lists, sorted, the File.Restart names of files written since
	// the last ClearRestarts.
	Units []string `json:"restart,omitempty"`
	// Since is when the last change awaiting a restart was made: a unit
	// whose process started later has loaded it already.
	Since time.Time `json:"restartSince,omitzero"`
}

// Any reports whether anything awaits a restart.
func (p Pending) Any() bool { return p.TrustStore || len(p.Units) > 0 }

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

// LoadState reads the ownership record; a missing record is an empty one.
func (r *Root) LoadState() (State, error) {
	data, err := r.ReadFile(StatePath)
	if errors.Is(err, fs.ErrNotExist) {
		return State{Version: 1, Files: map[string]Owned{}}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("read ownership record: %w", err)
	}
	var st State
	err = json.Unmarshal(data, &st)
	if trimmed := bytes.TrimSpace(data); err == nil && (len(trimmed) == 0 || trimmed[0] != '{') {
		err = errors.New("not a JSON object")
	}
	if err != nil {
		return State{}, fmt.Errorf("ownership record %s is corrupt (move it away to start over; files it listed are then left alone): %w", StatePath, err)
	}
	if st.Files == nil {
		st.Files = map[string]Owned{}
	}
	return st, nil
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
	pending := a.refreshNeeded || st.RefreshPending
	if opts.Refresh != nil && pending {
		a.res.Refreshed = true
		a.res.RefreshErr = opts.Refresh()
	}
	a.next.RefreshPending = pending && (opts.Refresh == nil || a.res.RefreshErr != nil)
	if a.res.Refreshed && a.res.RefreshErr == nil {
		a.next.TrustStore = true
		a.restartChanged = true
	}
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
	return a.res, r.saveState(a.next)
}

// op is one planned change.
type op struct {
	path   string
	data   []byte // content to write; nil with remove
	remove bool
	at     attrs  // of the file replaced, if any
	base   string // with writes: the directory that must exist
	owned  Owned  // the record entry after success; before, with removals
	create bool   // path was not owned before
	same   bool   // with a restore: the file holds it already
	absent bool   // with writes: no file was there when planned
}

type applier struct {
	root          *Root
	opts          Options
	old, next     State
	dirs          map[string]bool // directories verified free of symlinks
	writes        []op
	removes       []op
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

// ours reports whether cur is what nodetrust last wrote at a path owned as
// o, or what a killed run was about to write there.
func ours(o Owned, cur []byte) bool {
	h := hash(cur)
	return h == o.SHA256 || (o.Pending != "" && h == o.Pending)
}

// generated reports whether the merger named merger recognises cur as a
// file nodetrust generated.
func (a *applier) generated(merger string, cur []byte) bool {
	m, ok := a.opts.Mergers[merger]
	return ok && cur != nil && m.Generated(cur)
}

// planRemovals plans the removal of every recorded file not in want,
// files that name others first.
func (a *applier) planRemovals(want map[string]bool) {
	var gone []string
	for p := range a.old.Files {
		if !want[p] {
			gone = append(gone, p)
		}
	}
	sort.Slice(gone, func(i, j int) bool {
		li, lj := a.old.Files[gone[i]].Late, a.old.Files[gone[j]].Late
		if li != lj {
			return li
		}
		return gone[i] < gone[j]
	})
	for _, p := range gone {
		a.planRemoval(p, a.old.Files[p])
	}
}

func (a *applier) planFile(f File) {
	if f.Data == nil && len(f.Needs) > 0 {
		a.fail(f.Path, errors.New("not rewritten: some of the files it names could not be written"))
		return
	}
	cur, at, err := a.root.readIfExists(f.Path)
	if err != nil {
		a.fail(f.Path, err)
		return
	}
	owned, isOwned := a.old.Files[f.Path]
	next := Owned{Refresh: f.Refresh, Late: f.Late, Restart: f.Restart}
	content := f.Data
	switch {
	case isOwned && owned.Merge != nil && owned.Merge.Created && cur != nil && (ours(owned, cur) || a.generated(f.Merger, cur)):
		next.Merge = &MergeState{Ours: f.Data, Merger: f.Merger, Created: true}
		if content, err = a.create(f); err != nil || content == nil {
			a.fail(f.Path, fmt.Errorf("create: %w (nothing to write)", err))
			return
		}
	case isOwned && owned.Merge != nil && cur != nil:
		base := owned.Merge.Base
		// Neither nodetrust's output nor the original it merged into: edited
		// by the operator after the merge.
		if !ours(owned, cur) && !bytes.Equal(cur, base) {
			if base, err = a.unmerge(owned.Merge, cur); err != nil {
				a.fail(f.Path, err)
				return
			}
		}
		if content, err = a.merge(f, base); err != nil {
			// The file no longer takes our entries (say, the operator added a
			// setting they conflict with): take ours out rather than leave
			// them beside it, and stop owning it.
			a.fail(f.Path, err)
			a.removes = append(a.removes, op{path: f.Path, data: base, at: at, owned: owned})
			return
		}
		next.Merge = &MergeState{Base: base, Ours: f.Data, Merger: f.Merger}
	case isOwned || cur == nil || a.generated(f.Merger, cur):
		// Ours (or a merged file someone deleted, which is ours from now on,
		// or a file nodetrust generated, whose record was lost), or nothing
		// there yet.
		if f.CreateAsMerge && f.Merger != "" {
			next.Merge = &MergeState{Ours: f.Data, Merger: f.Merger, Created: true}
			if content, err = a.create(f); err != nil {
				a.fail(f.Path, err)
				return
			}
			if content == nil { // only ever merged into an existing file
				switch {
				case isOwned && cur != nil:
					a.planRemoval(f.Path, owned)
				case isOwned: // the file it was merged into is gone: so is ours
					delete(a.next.Files, f.Path)
				}
				return
			}
		}
	case f.Merger != "":
		if content, err = a.merge(f, cur); err != nil {
			a.fail(f.Path, err)
			return
		}
		next.Merge = &MergeState{Base: cur, Ours: f.Data, Merger: f.Merger}
	default:
		a.fail(f.Path, errors.New("exists and was not written by nodetrust; left alone"))
		return
	}
	next.SHA256 = hash(content)
	if cur != nil && bytes.Equal(cur, content) {
		a.next.Files[f.Path] = next
		return
	}
	a.refreshNeeded = a.refreshNeeded || f.Refresh
	a.writes = append(a.writes, op{path: f.Path, data: content, at: at, base: f.Base, owned: next, create: !isOwned, absent: cur == nil})
}

// Creator is a Merger that decides what to write where no file exists; a
// nil result writes nothing (additions that only ever go into someone
// else's file). Without it, File.Data is written.
type Creator interface {
	Create(ours []byte) ([]byte, error)
}

func (a *applier) create(f File) ([]byte, error) {
	c, ok := a.opts.Mergers[f.Merger].(Creator)
	if !ok {
		return f.Data, nil
	}
	return c.Create(f.Data)
}

func (a *applier) merge(f File, base []byte) ([]byte, error) {
	m, ok := a.opts.Mergers[f.Merger]
	if !ok {
		return nil, fmt.Errorf("no merger %q", f.Merger)
	}
	out, err := m.Merge(base, f.Data)
	if err != nil {
		return nil, fmt.Errorf("merge into the existing file: %w", err)
	}
	return out, nil
}

// unmerge removes nodetrust's entries from a merged file the operator edited.
func (a *applier) unmerge(ms *MergeState, cur []byte) ([]byte, error) {
	m, ok := a.opts.Mergers[ms.Merger]
	if !ok {
		return nil, fmt.Errorf("no merger %q to remove nodetrust's entries from the edited file; left as is", ms.Merger)
	}
	out, err := m.Unmerge(cur, ms.Ours)
	if err != nil {
		return nil, fmt.Errorf("remove nodetrust's entries from the edited file: %w", err)
	}
	return out, nil
}

func (a *applier) planRemoval(p string, owned Owned) {
	cur, at, err := a.root.readIfExists(p)
	if err != nil {
		a.fail(p, err)
		return
	}
	if cur == nil {
		delete(a.next.Files, p)
		return
	}
	a.refreshNeeded = a.refreshNeeded || owned.Refresh
	unchanged := ours(owned, cur)
	if owned.Merge == nil || (owned.Merge.Created && (unchanged || a.generated(owned.Merge.Merger, cur))) {
		a.removes = append(a.removes, op{path: p, remove: true, owned: owned})
		return
	}
	restore := owned.Merge.Base
	if !unchanged && !bytes.Equal(cur, restore) {
		if restore, err = a.unmerge(owned.Merge, cur); err != nil {
			a.fail(p, err)
			return
		}
	}
	// Already restored (by a run killed before it recorded so): nothing to write.
	a.removes = append(a.removes, op{path: p, data: restore, at: at, owned: owned, same: bytes.Equal(cur, restore)})
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
		for _, d := range a.missingDirs(w.path, w.base) {
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
	var ops []op
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
		switch {
		case rm.remove:
			err = a.root.remove(rm.path, false)
		case !rm.same:
			err = a.root.atomicWrite(rm.path, rm.data, rm.at)
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
func (a *applier) written(w op, err error) {
	if err != nil {
		a.fail(w.path, err)
		if w.create {
			delete(a.next.Files, w.path)
		}
		return
	}
	a.next.Files[w.path] = w.owned
	a.res.Written = append(a.res.Written, w.path)
	if w.absent && !w.create {
		a.res.Recreated = append(a.res.Recreated, w.path)
	}
	if w.owned.Restart != "" {
		a.next.Units = addItem(a.next.Units, w.owned.Restart)
		a.restartChanged = true
	}
}

// stage creates missing directories and writes w's temporary file.
func (a *applier) stage(w op) (staged, error) {
	if w.base != "" && !a.isDir(w.base) {
		if _, err := a.root.stat(w.base); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return staged{}, err
		}
		return staged{}, fmt.Errorf("directory %s does not exist", w.base)
	}
	for _, d := range a.missingDirs(w.path, w.base) {
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

// ClearRestarts records that everything awaiting a restart (State.Pending)
// was restarted.
func (r *Root) ClearRestarts() error {
	st, err := r.LoadState()
	if err != nil {
		return err
	}
	st.Pending = Pending{}
	return r.saveState(st)
}

// saveState writes the record when its bytes differ from what is on disk.
func (r *Root) saveState(st State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	cur, err := r.ReadFile(StatePath)
	if err == nil && bytes.Equal(cur, data) {
		return nil
	}
	if st.empty() { // nothing owned, nothing to remember: leave the host as it was
		if err == nil {
			if err := r.remove(StatePath, false); err != nil {
				return fmt.Errorf("%w: remove %s: %w", ErrNotRecorded, StatePath, err)
			}
			_ = r.remove(path.Dir(StatePath), true) // ours; stays if someone put files there
		}
		return nil
	}
	for _, d := range []string{"var", "var/lib", "var/lib/nodetrust"} {
		if err := r.mkdir(d); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %w", ErrNotRecorded, err)
		}
	}
	if err := r.atomicWrite(StatePath, data, attrs{mode: 0o600}); err != nil {
		return fmt.Errorf("%w: %w", ErrNotRecorded, err)
	}
	return nil
}

// empty reports whether the record holds nothing worth keeping.
func (st State) empty() bool {
	applied := strings.TrimSpace(string(st.Applied))
	return len(st.Files) == 0 && len(st.Dirs) == 0 && !st.RefreshPending && !st.Pending.Any() &&
		(applied == "" || applied == "null" || applied == "[]")
}

func cloneState(st State) State {
	out := st
	out.Files = make(map[string]Owned, len(st.Files))
	for k, v := range st.Files {
		out.Files[k] = v
	}
	out.Dirs = append([]string(nil), st.Dirs...)
	out.Units = append([]string(nil), st.Units...)
	return out
}

// addItem inserts d into the sorted set dirs.
func addItem(dirs []string, d string) []string {
	i := sort.SearchStrings(dirs, d)
	if i < len(dirs) && dirs[i] == d {
		return dirs
	}
	return append(dirs[:i], append([]string{d}, dirs[i:]...)...)
}

// removeItem deletes d from the sorted set dirs.
func removeItem(dirs []string, d string) []string {
	i := sort.SearchStrings(dirs, d)
	if i < len(dirs) && dirs[i] == d {
		return append(dirs[:i], dirs[i+1:]...)
	}
	return dirs
}

func hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

package hostfs

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
)

// writeOp is one planned write of a desired file.
type writeOp struct {
	path string
	data []byte // the content to write
	at   attrs  // of the file replaced; zero when there is none
	// baseDir is File.Base, the directory that must already exist.
	baseDir string
	owned   Owned // the record entry once the write succeeded
	// recorded: the path was in the record before this apply; a failed
	// write of an unrecorded one leaves it unrecorded.
	recorded bool
	// absent: no file was there when planned. The write creates one and
	// does not replace one another writer created since.
	absent bool
}

// removeOp is one planned removal: nodetrust stops owning path and takes
// its content out of the file.
type removeOp struct {
	path  string
	owned Owned // the record entry the removal drops
	undo  undo
	base  []byte // with restoreBase: the content written back
	at    attrs  // with restoreBase: of the file written over
}

// undo is how a removal takes nodetrust's content out of a file.
type undo int

const (
	// unlink: the file is nodetrust's own; it goes.
	unlink undo = iota
	// restoreBase: the file is someone's that nodetrust merged into; it
	// gets its base back.
	restoreBase
	// baseInPlace: the file already holds its base (restored by a run
	// killed before it recorded so); nothing to write.
	baseInPlace
)

// planFile plans what the desired file f needs, by what the file there is
// to nodetrust: a write, only a record entry when it holds the content
// already, or a failure.
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
	var content []byte
	var ms *MergeState
	ok := false
	switch own := a.ownershipOf(f.Path, f.Merger, cur); own {
	case absent, deleted, ownFile, lostRecord:
		content, ms, ok = a.planOwn(f, own)
	case createdMerge:
		content, ms, ok = a.planCreated(f)
	case mergedIntact, mergedEdited:
		content, ms, ok = a.planRemerge(f, cur, at, own)
	case foreignMergeable:
		content, ms, ok = a.planMergeInto(f, cur)
	case foreign:
		a.fail(f.Path, errors.New("exists and was not written by nodetrust; left alone"))
	}
	if ok {
		a.planWrite(f, cur, at, content, ms)
	}
}

// planWrite plans writing content, merged as ms says, to f.Path, which holds
// cur; content it holds already is only recorded.
func (a *applier) planWrite(f File, cur []byte, at attrs, content []byte, ms *MergeState) {
	next := Owned{SHA256: hash(content), Merge: ms, Refresh: f.Refresh, Late: f.Late, Restart: f.Restart}
	if cur != nil && bytes.Equal(cur, content) {
		a.next.Files[f.Path] = next
		return
	}
	a.refreshNeeded = a.refreshNeeded || f.Refresh
	_, recorded := a.old.Files[f.Path]
	a.writes = append(a.writes, writeOp{
		path: f.Path, data: content, at: at, baseDir: f.Base, owned: next, recorded: recorded, absent: cur == nil,
	})
}

// planOwn plans a file that is, or becomes, nodetrust's own (absent,
// deleted, ownFile, lostRecord): File.Data, or with File.CreateAsMerge what
// the Creator makes of it. A Creator that makes nothing (additions that
// only ever go into someone's file) leaves nothing of nodetrust's there.
func (a *applier) planOwn(f File, own ownership) ([]byte, *MergeState, bool) {
	if !f.CreateAsMerge || f.Merger == "" {
		return f.Data, nil, true
	}
	content, err := a.create(f)
	if err != nil {
		a.fail(f.Path, err)
		return nil, nil, false
	}
	if content == nil { // only ever merged into an existing file
		switch own {
		case ownFile:
			a.planRemoval(f.Path)
		case deleted: // the file it was merged into is gone: so is ours
			delete(a.next.Files, f.Path)
		}
		return nil, nil, false
	}
	return content, &MergeState{Ours: f.Data, Merger: f.Merger, Created: true}, true
}

// planCreated plans a createdMerge file: made again by the Creator, which
// must make something, as the file is there.
func (a *applier) planCreated(f File) ([]byte, *MergeState, bool) {
	content, err := a.create(f)
	if err != nil || content == nil {
		a.fail(f.Path, fmt.Errorf("create: %w (nothing to write)", err))
		return nil, nil, false
	}
	return content, &MergeState{Ours: f.Data, Merger: f.Merger, Created: true}, true
}

// planRemerge plans a file nodetrust merged into (mergedIntact,
// mergedEdited), holding cur: merged again from its base, which for an
// edited file is the edit without nodetrust's entries.
func (a *applier) planRemerge(f File, cur []byte, at attrs, own ownership) ([]byte, *MergeState, bool) {
	owned := a.old.Files[f.Path]
	base, err := a.baseOf(f.Path, cur, own)
	if err != nil {
		a.fail(f.Path, err)
		return nil, nil, false
	}
	content, err := a.merge(f, base)
	if err != nil {
		// The file no longer takes our entries (say, the operator added a
		// setting they conflict with): take ours out rather than leave
		// them beside it, and stop owning it.
		a.fail(f.Path, err)
		a.removes = append(a.removes, removeOp{path: f.Path, owned: owned, undo: restoreBase, base: base, at: at})
		return nil, nil, false
	}
	return content, &MergeState{Base: base, Ours: f.Data, Merger: f.Merger}, true
}

// planMergeInto plans merging into someone's file holding cur
// (foreignMergeable), kept byte for byte as the base.
func (a *applier) planMergeInto(f File, cur []byte) ([]byte, *MergeState, bool) {
	content, err := a.merge(f, cur)
	if err != nil {
		a.fail(f.Path, err)
		return nil, nil, false
	}
	return content, &MergeState{Base: cur, Ours: f.Data, Merger: f.Merger}, true
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
		a.planRemoval(p)
	}
}

// planRemoval plans taking nodetrust's content out of the recorded file p,
// by what the file is to nodetrust now.
func (a *applier) planRemoval(p string) {
	cur, at, err := a.root.readIfExists(p)
	if err != nil {
		a.fail(p, err)
		return
	}
	owned := a.old.Files[p]
	merger := ""
	if owned.Merge != nil {
		merger = owned.Merge.Merger
	}
	switch own := a.ownershipOf(p, merger, cur); own {
	case deleted:
		delete(a.next.Files, p)
	case ownFile, createdMerge:
		a.refreshNeeded = a.refreshNeeded || owned.Refresh
		a.removes = append(a.removes, removeOp{path: p, owned: owned, undo: unlink})
	case mergedIntact, mergedEdited:
		a.refreshNeeded = a.refreshNeeded || owned.Refresh
		a.planRestore(p, cur, at, own)
	}
}

// planRestore plans giving a file nodetrust merged into, holding cur, its
// base back: for an edited file, the edit without nodetrust's entries.
func (a *applier) planRestore(p string, cur []byte, at attrs, own ownership) {
	base, err := a.baseOf(p, cur, own)
	if err != nil {
		a.fail(p, err)
		return
	}
	rm := removeOp{path: p, owned: a.old.Files[p], undo: restoreBase, base: base, at: at}
	if bytes.Equal(cur, base) {
		rm.undo = baseInPlace
	}
	a.removes = append(a.removes, rm)
}

// baseOf is the content without nodetrust's entries of the file p that
// nodetrust merged into, holding cur: the recorded base, or for an edited
// file the edit with nodetrust's entries taken out.
func (a *applier) baseOf(p string, cur []byte, own ownership) ([]byte, error) {
	ms := a.old.Files[p].Merge
	if own == mergedEdited {
		return a.unmerge(ms, cur)
	}
	return ms.Base, nil
}

// create is what nodetrust writes for f where it owns the file outright:
// the Creator's output, or File.Data without one.
func (a *applier) create(f File) ([]byte, error) {
	c, ok := a.opts.Mergers[f.Merger].(Creator)
	if !ok {
		return f.Data, nil
	}
	return c.Create(f.Data)
}

// merge returns base with f's content merged in by f's Merger.
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

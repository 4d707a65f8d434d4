package hostfs

import "bytes"

// ownership is what the file at a path is to nodetrust, from the ownership
// record and what the file holds now. The planner dispatches on it (planFile
// for a desired path, planRemoval for one no longer desired); ownershipOf
// computes it.
type ownership int

const (
	// absent: nothing is recorded and no file is there. Nodetrust creates
	// the file (through a Creator, when File.CreateAsMerge says so), never
	// replacing one another writer puts there meanwhile.
	absent ownership = iota
	// deleted: nodetrust owns the path but someone removed the file. A
	// desired file is written again and reported as Recreated (a merged
	// file is nodetrust's own from then on, since there is nothing left to
	// merge into); a removal only drops the record.
	deleted
	// ownFile: a file nodetrust wrote whole (recorded, not a merge). It is
	// replaced whatever it holds now, since only nodetrust writes it, and
	// unlinked when no longer desired.
	ownFile
	// lostRecord: nothing is recorded, but the file's Merger recognises it
	// as one nodetrust generated (its marker): nodetrust's own output whose
	// record was lost, replaced as an ownFile is, never taken for someone's
	// original to merge into and restore later.
	lostRecord
	// createdMerge: recorded as merged into no file (File.CreateAsMerge)
	// and still holding what nodetrust wrote, or a file its Merger
	// recognises as generated. Written again through the Creator; unlinked
	// when no longer desired, since there was no original.
	createdMerge
	// mergedIntact: someone's file nodetrust merged into, holding what
	// nodetrust last wrote (or was about to) or the recorded base. Merged
	// again from the base; restored to the base when no longer desired.
	mergedIntact
	// mergedEdited: someone's file nodetrust merged into that was edited
	// since (also a createdMerge file someone replaced). Nodetrust's
	// entries are taken out of it first (Merger.Unmerge), so the edit
	// becomes the base it merges into or restores: the operator's change
	// is kept either way.
	mergedEdited
	// foreignMergeable: someone's file, not recorded, for a File with a
	// Merger. Nodetrust merges into it and records it byte for byte as the
	// base to restore.
	foreignMergeable
	// foreign: someone's file, not recorded, with no Merger. Nodetrust
	// never writes or deletes what it did not write: left alone, and the
	// target fails.
	foreign
)

// ownershipOf says what the file at p, holding cur (nil when missing), is
// to nodetrust. merger names the Merger that recognises generated files
// (File.Merger for a desired file, the recorded one for a removal).
func (a *applier) ownershipOf(p, merger string, cur []byte) ownership {
	o, recorded := a.old.Files[p]
	if !recorded {
		switch {
		case cur == nil:
			return absent
		case a.generated(merger, cur):
			return lostRecord
		case merger != "":
			return foreignMergeable
		}
		return foreign
	}
	switch {
	case cur == nil:
		return deleted
	case o.Merge == nil:
		return ownFile
	case o.Merge.Created && (ours(o, cur) || a.generated(merger, cur)):
		return createdMerge
	case ours(o, cur) || bytes.Equal(cur, o.Merge.Base):
		return mergedIntact
	}
	return mergedEdited
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

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
)

// StatePath is where the ownership record lives, relative to the host root.
const StatePath = "var/lib/nodetrust/state.json"

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

// ErrNotRecorded wraps the error of an Apply that could not save the
// ownership record (a full disk): its Result still says what it did.
var ErrNotRecorded = errors.New("ownership record not saved")

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

// cloneState copies st deeply enough that changing the copy's files, dirs
// or units leaves st as it was.
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

// hash is the hex SHA-256 of b, as the record keeps content.
func hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

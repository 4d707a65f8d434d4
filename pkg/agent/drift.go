package agent

import (
	"log/slog"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/fsnotify/fsnotify"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
)

// driftWatch watches the directories holding files nodetrust owns and
// requests a sync when one of those files, or such a directory, changes.
// Changes to files nodetrust does not own are ignored.
type driftWatch struct {
	w       *fsnotify.Watcher
	root    string
	trigger func()
	log     *slog.Logger

	mu      sync.Mutex
	owned   map[string]bool // relative paths of owned files
	watched map[string]bool // relative paths of watched directories
	done    chan struct{}
}

func newDriftWatch(root *hostfs.Root, trigger func(), log *slog.Logger) (*driftWatch, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	d := &driftWatch{w: w, root: root.Dir(), trigger: trigger, log: log, owned: map[string]bool{}, watched: map[string]bool{}, done: make(chan struct{})}
	go d.loop()
	return d, nil
}

func (d *driftWatch) close() {
	d.w.Close()
	<-d.done
}

// update watches the parent directories of the owned files and stops
// watching the others. A change between a sync's write and the new watch
// would be missed, so adding a watch requests one more sync (which writes
// nothing when nothing drifted).
func (d *driftWatch) update(owned []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.owned = make(map[string]bool, len(owned))
	want := map[string]bool{}
	added := false
	for _, p := range owned {
		d.owned[p] = true
		want[path.Dir(p)] = true
	}
	for dir := range d.watched {
		if !want[dir] {
			_ = d.w.Remove(filepath.Join(d.root, dir))
			delete(d.watched, dir)
		}
	}
	for dir := range want {
		if d.watched[dir] {
			continue
		}
		// A directory that vanished is re-created by the next sync and
		// watched after it.
		if err := d.w.Add(filepath.Join(d.root, dir)); err == nil {
			d.watched[dir] = true
			added = true
		}
	}
	if added {
		d.trigger()
	}
}

func (d *driftWatch) loop() {
	defer close(d.done)
	for {
		select {
		case ev, ok := <-d.w.Events:
			if !ok {
				return
			}
			if d.relevant(ev.Name) {
				d.log.Debug("drift", "path", ev.Name, "op", ev.Op.String())
				d.trigger()
			}
		case err, ok := <-d.w.Errors:
			if !ok {
				return
			}
			d.log.Warn("file watch", "err", err) // e.g. overflow: the resync catches up
			d.trigger()
		}
	}
}

func (d *driftWatch) relevant(name string) bool {
	rel, err := filepath.Rel(d.root, name)
	if err != nil || strings.HasPrefix(path.Base(rel), ".nodetrust-") {
		return false
	}
	rel = filepath.ToSlash(rel)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.owned[rel] {
		return true
	}
	if d.watched[rel] { // a watched directory itself was removed or renamed
		delete(d.watched, rel)
		return true
	}
	return false
}

package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/source"
)

// DefaultSettle is how long a manifest directory must stay quiet after a
// change before it is read again.
const DefaultSettle = 250 * time.Millisecond

// Dir reads sources from a directory of manifests and watches it, for nodes
// outside Kubernetes or an air-gapped bootstrap. A mounted ConfigMap works:
// its atomic "..data" swaps are directory events too.
//
// It reads only a complete set: a change is reported once the directory
// has been quiet for Settle, and Collect waits for a file written less than
// Settle ago. A file that cannot be read, that does not settle or changes
// while it is read, or that is empty while it held sources at the last
// read (cp truncates, then writes) makes the set incomplete, so nothing is
// removed on its account. To remove a file's sources, delete the file.
type Dir struct {
	path       string
	nodeLabels labels.Set
	// Settle is the quiet time before a change is reported (DefaultSettle
	// when zero).
	Settle time.Duration

	mu   sync.Mutex
	ctx  context.Context // of Wait: ends a read when the agent stops
	held map[string]bool // files that held sources at the last read
}

// NewDir reads sources from path; nodeLabels (nil: ignore node selectors)
// stand in for the Node's labels.
func NewDir(path string, nodeLabels labels.Set) *Dir {
	return &Dir{path: path, nodeLabels: nodeLabels}
}

// Wait starts watching the directory. A burst of events is reported once,
// when the directory has been quiet for Settle.
func (d *Dir) Wait(ctx context.Context, notify func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	if err := w.Add(d.path); err != nil {
		w.Close()
		return fmt.Errorf("watch %s: %w", d.path, err)
	}
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
	settle := d.settle()
	go func() {
		defer w.Close()
		quiet := time.NewTimer(settle)
		quiet.Stop()
		defer quiet.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				quiet.Reset(settle)
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				quiet.Reset(settle) // e.g. an overflow: read everything again
			case <-quiet.C:
				notify()
			}
		}
	}()
	return nil
}

func (d *Dir) settle() time.Duration {
	if d.Settle <= 0 {
		return DefaultSettle
	}
	return d.Settle
}

// settleReads bounds how many times Collect waits for a file written less
// than Settle ago before it returns the set as incomplete.
const settleReads = 4

// Collect reads the directory; an unreadable one is incomplete input, so
// nothing is removed on its account. A file written less than Settle ago
// is waited for (a few times at most), so a sync that happens to run in
// the middle of a write reads the result, not a prefix.
func (d *Dir) Collect() (source.Set, labels.Set) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ctx := d.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	for attempt := 1; ; attempt++ {
		set, held, wait := d.read(ctx)
		if wait <= 0 || attempt == settleReads {
			if held != nil {
				d.held = held
			}
			return set, d.nodeLabels
		}
		select {
		case <-ctx.Done():
			return set, d.nodeLabels
		case <-time.After(wait):
		}
	}
}

// read reads the directory once. held is nil when it could not be listed;
// wait > 0 says how long until the freshest file is settled.
func (d *Dir) read(ctx context.Context) (set source.Set, held map[string]bool, wait time.Duration) {
	set, err := source.ReadPath(ctx, d.path, time.Now())
	if err != nil {
		set.Errors = append(set.Errors, err)
		return set, nil, 0
	}
	now := time.Now() // after the read: a file written during it is fresh
	held = make(map[string]bool, len(set.Files))
	for _, f := range slices.Sorted(maps.Keys(set.Files)) {
		r := set.Files[f]
		switch age := now.Sub(r.ModTime); {
		case r.Unreadable:
			held[f] = d.held[f]
		case age >= 0 && age < d.settle():
			// A read in the middle of one long write(2) can see a
			// consistent prefix: wait until the file is quiet.
			held[f] = d.held[f]
			wait = max(wait, d.settle()-age)
			set.Errors = append(set.Errors, fmt.Errorf("%s: written %s ago, maybe still being written: read again once it has been quiet for %s", f, age.Round(time.Millisecond), d.settle()))
		case r.Bytes == 0 && d.held[f]:
			held[f] = true
			set.Errors = append(set.Errors, fmt.Errorf("%s: empty, but it held sources when last read: taken as being rewritten, so nothing is removed (delete the file to remove its sources)", f))
		default:
			held[f] = r.Objects > 0
		}
	}
	return set, held, wait
}

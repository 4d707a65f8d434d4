package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/source"
)

// Dir reads sources from a directory of manifests and watches it, for nodes
// outside Kubernetes or an air-gapped bootstrap. A mounted ConfigMap works:
// its atomic "..data" swaps are directory events too.
type Dir struct {
	path       string
	nodeLabels labels.Set
}

// NewDir reads sources from path; nodeLabels (nil: ignore node selectors)
// stand in for the Node's labels.
func NewDir(path string, nodeLabels labels.Set) *Dir {
	return &Dir{path: path, nodeLabels: nodeLabels}
}

// Wait starts watching the directory.
func (d *Dir) Wait(ctx context.Context, notify func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	if err := w.Add(d.path); err != nil {
		w.Close()
		return fmt.Errorf("watch %s: %w", d.path, err)
	}
	go func() {
		defer w.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				notify()
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
				notify()
			}
		}
	}()
	return nil
}

// Collect reads the directory; an unreadable one is incomplete input, so
// nothing is removed on its account.
func (d *Dir) Collect() (source.Set, labels.Set) {
	set, err := source.ReadPath(context.Background(), d.path, time.Now())
	if err != nil {
		set.Errors = append(set.Errors, err)
	}
	return set, d.nodeLabels
}

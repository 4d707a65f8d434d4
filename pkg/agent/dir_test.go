package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/agent"
	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// dirSource writes a one-source manifest (under a page, so one write(2)
// puts it in place) and returns its content and the source's ID.
func dirSource(t *testing.T, dir, name string) (string, []byte, source.ID) {
	ca := certstest.NewCA(t, name)
	doc := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: ns, labels: {nodetrust.io/ca: \"true\"}, annotations: {nodetrust.io/registries: r.example}}\ndata: {ca.crt: %q}\n",
		name, string(ca.CertPEM()))
	p := filepath.Join(dir, name+".yaml")
	require.NoError(t, os.WriteFile(p, []byte(doc), 0o644))
	require.Less(t, len(doc), os.Getpagesize())
	return p, []byte(doc), source.ID{Kind: source.KindConfigMap, Namespace: "ns", Name: name}
}

func holds(set source.Set, id source.ID) bool {
	for _, s := range set.Sources {
		if s.ID == id {
			return true
		}
	}
	return false
}

// TestDirRewriteInPlaceNeverReadsAsRemoval rewrites a manifest in place the
// way cp does (truncate, then write) many times while collecting from the
// directory: no collected set may be complete and missing the source, and
// the burst of events is reported once, after it settles.
func TestDirRewriteInPlaceNeverReadsAsRemoval(t *testing.T) {
	dir := t.TempDir()
	path, doc, id := dirSource(t, dir, "ca")
	d := agent.NewDir(dir, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var notified atomic.Int64
	require.NoError(t, d.Wait(ctx, func() { notified.Add(1) }))
	set, _ := d.Collect()
	require.True(t, set.Complete() && holds(set, id), "%v", set.Errors)

	const rewrites = 300
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range rewrites {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				panic(err)
			}
			runtime.Gosched() // cp: open, fstat, read the source, then write
			if _, err := f.Write(doc); err != nil {
				panic(err)
			}
			f.Close()
		}
	}()
	writing := make(chan struct{})
	go func() { wg.Wait(); close(writing) }()

	var collects, incomplete, removed int
	kinds := map[string]int{}
	for done := false; !done; {
		select {
		case <-writing:
			done = true
		default:
		}
		set, _ := d.Collect()
		collects++
		switch {
		case !set.Complete():
			incomplete++
			kinds[strings.SplitN(set.Errors[0].Error(), ": ", 2)[1]]++
		case !holds(set, id):
			removed++
		}
	}
	duringLoop := notified.Load()
	t.Log(kinds)
	t.Logf("%d rewrites, %d collects: %d incomplete, %d complete without the source; %d notifications while writing", rewrites, collects, incomplete, removed, duringLoop)
	require.Zero(t, removed, "a collected set was complete and missing the source")
	require.Positive(t, incomplete, "the loop never caught the file mid-rewrite; the test proves nothing")
	require.Less(t, duringLoop, int64(rewrites/10), "events are reported once they settle, not one by one")

	require.Eventually(t, func() bool { return notified.Load() > duringLoop }, 5*time.Second, 10*time.Millisecond, "the settled change is reported")
	set, _ = d.Collect()
	require.True(t, set.Complete() && holds(set, id), "%v", set.Errors)
}

// TestDirEmptiedFile: a file that held sources and is now empty is
// unreadable until it gets content again or is deleted; deleting it is
// how its sources are removed.
func TestDirEmptiedFile(t *testing.T) {
	dir := t.TempDir()
	path, doc, id := dirSource(t, dir, "ca")
	d := agent.NewDir(dir, nil)
	set, _ := d.Collect()
	require.True(t, set.Complete() && holds(set, id))

	require.NoError(t, os.WriteFile(path, nil, 0o644))
	for range 2 {
		set, _ = d.Collect()
		require.False(t, set.Complete())
		require.EqualError(t, set.Errors[0], path+": empty, but it held sources when last read: taken as being rewritten, so nothing is removed (delete the file to remove its sources)")
	}

	require.NoError(t, os.WriteFile(path, doc, 0o644))
	set, _ = d.Collect()
	require.True(t, set.Complete() && holds(set, id))

	require.NoError(t, os.WriteFile(path, []byte("# no sources any more\n"), 0o644))
	set, _ = d.Collect()
	require.True(t, set.Complete())
	require.Empty(t, set.Sources, "a file with content but no source is read as it is")
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	set, _ = d.Collect()
	require.True(t, set.Complete(), "it held no source: empty is just empty")

	require.NoError(t, os.WriteFile(path, doc, 0o644))
	d.Collect()
	require.NoError(t, os.Remove(path))
	set, _ = d.Collect()
	require.True(t, set.Complete())
	require.Empty(t, set.Sources, "deleted: its sources are gone")
}

package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
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
	writeSettled(t, p, []byte(doc))
	require.Less(t, len(doc), os.Getpagesize())
	return p, []byte(doc), source.ID{Kind: source.KindConfigMap, Namespace: "ns", Name: name}
}

// writeSettled writes a file dated a day ago, long enough for Dir to
// take it as settled.
func writeSettled(t *testing.T, p string, data []byte) {
	require.NoError(t, os.WriteFile(p, data, 0o644))
	past := time.Now().Add(-24 * time.Hour)
	require.NoError(t, os.Chtimes(p, past, past))
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
// the burst of events is reported once, after it settles. With a settle
// time too short to matter, the empty-file rule alone must hold the line.
func TestDirRewriteInPlaceNeverReadsAsRemoval(t *testing.T) {
	for name, settle := range map[string]time.Duration{"default settle": agent.DefaultSettle, "no settle time": time.Nanosecond} {
		t.Run(name, func(t *testing.T) { rewriteLoop(t, settle) })
	}
}

func rewriteLoop(t *testing.T, settle time.Duration) {
	dir := t.TempDir()
	path, doc, id := dirSource(t, dir, "ca")
	d := agent.NewDir(dir, nil)
	d.Settle = settle
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var notified atomic.Int64
	require.NoError(t, d.Wait(ctx, func() { notified.Add(1) }))
	set, _ := d.Collect()
	require.True(t, set.Complete() && holds(set, id), "%v", set.Errors)

	const rewrites = 300
	writing := make(chan struct{})
	var atEnd int64 // notifications until the last write
	go func() {
		defer close(writing)
		defer func() { atEnd = notified.Load() }()
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

	var collects, removed int
	incomplete := map[string]int{} // by the first word of the reason
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
			incomplete[strings.Fields(strings.TrimPrefix(set.Errors[0].Error(), path+": "))[0]]++
		case !holds(set, id):
			removed++
		}
	}
	t.Logf("%d rewrites, %d collects: incomplete %v, %d complete without the source; %d notifications while writing", rewrites, collects, incomplete, removed, atEnd)
	require.Zero(t, removed, "a collected set was complete and missing the source")
	if settle < time.Millisecond { // else Collect waits for the writes to settle
		require.NotEmpty(t, incomplete, "the loop never caught the file mid-rewrite; the test proves nothing")
	}
	if settle == agent.DefaultSettle {
		require.Less(t, atEnd, int64(rewrites/10), "events are reported once they settle, not one by one")
		require.Eventually(t, func() bool { return notified.Load() > atEnd }, 5*time.Second, 10*time.Millisecond, "the settled change is reported")
	}
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

	writeSettled(t, path, nil)
	for range 2 {
		set, _ = d.Collect()
		require.False(t, set.Complete())
		require.EqualError(t, set.Errors[0], path+": empty, but it held sources when last read: taken as being rewritten, so nothing is removed (delete the file to remove its sources)")
	}

	writeSettled(t, path, doc)
	set, _ = d.Collect()
	require.True(t, set.Complete() && holds(set, id))

	writeSettled(t, path, []byte("# no sources any more\n"))
	set, _ = d.Collect()
	require.True(t, set.Complete())
	require.Empty(t, set.Sources, "a file with content but no source is read as it is")
	writeSettled(t, path, nil)
	set, _ = d.Collect()
	require.True(t, set.Complete(), "it held no source: empty is just empty")

	writeSettled(t, path, doc)
	d.Collect()
	require.NoError(t, os.Remove(path))
	set, _ = d.Collect()
	require.True(t, set.Complete())
	require.Empty(t, set.Sources, "deleted: its sources are gone")
}

// TestDirFreshFileWaits: a file written less than Settle ago may be in the
// middle of a write, so Collect waits until it is quiet; one that never
// settles makes the set incomplete.
func TestDirFreshFileWaits(t *testing.T) {
	dir := t.TempDir()
	path, doc, id := dirSource(t, dir, "ca")
	d := agent.NewDir(dir, nil)
	d.Settle = 100 * time.Millisecond
	require.NoError(t, os.WriteFile(path, doc, 0o644))
	info, err := os.Stat(path)
	require.NoError(t, err)
	set, _ := d.Collect()
	require.True(t, set.Complete() && holds(set, id), "%v", set.Errors)
	require.GreaterOrEqual(t, time.Since(info.ModTime()), d.Settle, "it waited for the file to settle")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	require.NoError(t, os.WriteFile(path, doc, 0o644))
	go func() {
		for ctx.Err() == nil {
			now := time.Now()
			_ = os.Chtimes(path, now, now)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	set, _ = d.Collect()
	require.False(t, set.Complete())
	// Depending on when the touch lands, the file is too young when looked
	// at, or changes while it is read: both are a write in progress.
	msg := set.Errors[0].Error()
	if !strings.Contains(msg, path+": changed while it was read (a write in progress)") {
		require.Contains(t, msg, path+": written ")
		require.Contains(t, msg, "ago, maybe still being written: read again once it has been quiet for 100ms")
	}
}

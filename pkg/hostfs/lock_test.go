package hostfs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
)

func TestLockOneWriterPerRoot(t *testing.T) {
	f := newFixture(t, "etc/docker")
	ctx := context.Background()
	first, err := f.root.Lock(ctx, true, nil)
	require.NoError(t, err)
	// The holder comes from /proc/locks: this test binary.
	holder := fmt.Sprintf("pid %d (%s)", os.Getpid(), filepath.Base(os.Args[0]))
	data, err := os.ReadFile(filepath.Join(f.dir, hostfs.LockPath))
	require.NoError(t, err)
	require.Empty(t, data, "the lock file is never written: a run with nothing to do writes nothing")

	_, err = f.root.Lock(ctx, false, nil)
	var locked *hostfs.LockedError
	require.ErrorAs(t, err, &locked, "--no-wait")
	require.Equal(t, holder, locked.Holder)
	require.ErrorContains(t, err, filepath.Join(f.dir, "var/lib/nodetrust")+" is locked by "+holder)

	waited := make(chan string, 1)
	got := make(chan *hostfs.Lock)
	go func() {
		l, err := f.root.Lock(ctx, true, func(h string) { waited <- h })
		if err != nil {
			panic(err)
		}
		got <- l
	}()
	require.Equal(t, holder, <-waited)
	select {
	case <-got:
		t.Fatal("two holders at once")
	case <-time.After(200 * time.Millisecond):
	}
	require.NoError(t, first.Unlock())
	second := <-got

	expired, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = f.root.Lock(expired, true, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded, "a wait ends with its context")
	require.NoError(t, second.Unlock())
	require.Equal(t, map[string]string{"etc": dir, "etc/docker": dir}, hostfstest.Tree(t, f.dir), "nothing owned: no lock file, no var/lib/nodetrust, no var it created")
}

func TestLockKeptBesideRecord(t *testing.T) {
	f := newFixture(t, "etc/docker", "var/lib") // as on every host
	l, err := f.root.Lock(context.Background(), true, nil)
	require.NoError(t, err)
	f.apply(file("etc/docker/certs.d/r/a.crt", "A"))
	require.NoError(t, l.Unlock())
	entries, err := os.ReadDir(filepath.Join(f.dir, "var/lib/nodetrust"))
	require.NoError(t, err)
	require.Len(t, entries, 2, "lock and state.json")

	l, err = f.root.Lock(context.Background(), true, nil)
	require.NoError(t, err)
	f.apply()
	require.NoError(t, l.Unlock())
	require.Equal(t, map[string]string{"etc": dir, "etc/docker": dir, "var": dir, "var/lib": dir}, hostfstest.Tree(t, f.dir), "uninstalled: nothing of nodetrust left")
}

func TestLockRefusesSymlink(t *testing.T) {
	f := newFixture(t, "var/lib")
	outside := t.TempDir()
	require.NoError(t, os.Symlink(outside, filepath.Join(f.dir, "var/lib/nodetrust")))
	_, err := f.root.Lock(context.Background(), true, nil)
	require.ErrorContains(t, err, "var/lib/nodetrust")
	require.Empty(t, hostfstest.Tree(t, outside))
}

// TestLockExclusiveUnderChurn: holders that each remove the lock file and
// its directories on unlock (a clean host) never let two in at once.
func TestLockExclusiveUnderChurn(t *testing.T) {
	f := newFixture(t, "var/lib")
	var inside, entered atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				l, err := f.root.Lock(context.Background(), true, nil)
				if err != nil {
					errs <- err
					return
				}
				if inside.Add(1) != 1 {
					errs <- errors.New("two holders at once")
				}
				entered.Add(1)
				time.Sleep(100 * time.Microsecond)
				inside.Add(-1)
				if err := l.Unlock(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int32(200), entered.Load())
	require.Equal(t, map[string]string{"var": dir, "var/lib": dir}, hostfstest.Tree(t, f.dir), "the last holder left nothing")
}

package systemd

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/systemd"
	"github.com/nodetrust/nodetrust/test/harness"
)

// Units written into the Debian root before it boots.
const (
	// containerdUnit stands in for containerd: a long-running main process.
	containerdUnit = `[Unit]
Description=Stand-in for containerd (nodetrust systemd test)

[Service]
Type=simple
ExecStart=/bin/sh -c 'exec sleep infinity'

[Install]
WantedBy=multi-user.target
`
	// brokenUnit runs normally until breakFile exists; from then on every
	// start fails in ExecStartPre, like a runtime whose new config is bad.
	brokenUnit = `[Unit]
Description=Runtime whose restart fails (nodetrust systemd test)

[Service]
Type=simple
ExecStartPre=/bin/sh -c 'test ! -e /etc/nodetrust-break'
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
`
	breakFile = "etc/nodetrust-break"
	// slowUnit takes slowStart to start; not enabled, so it is inactive
	// until the test restarts it.
	slowUnit = `[Unit]
Description=Runtime that starts slowly (nodetrust systemd test)

[Service]
Type=simple
ExecStartPre=/bin/sleep 2
ExecStart=/bin/sleep infinity
`
	slowStart = 2 * time.Second
	// flappyUnit may start twice per hour; enabled, so the boot is its first
	// start. (Every unit has such a limit: by default 5 starts in 10 s.)
	flappyUnit = `[Unit]
Description=Runtime restarted too often (nodetrust systemd test)
StartLimitIntervalSec=1h
StartLimitBurst=2

[Service]
Type=simple
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
`
)

// TestRealSystemd boots systemd in a Debian root with systemd-nspawn and
// drives pkg/systemd against it from the host, over the container's system
// bus.
func TestRealSystemd(t *testing.T) {
	harness.SkipUnlessReal(t)
	harness.SkipUnlessRoot(t, "tar --same-owner, systemd-nspawn")
	_, err := exec.LookPath("systemd-nspawn")
	require.NoError(t, err, "systemd-nspawn missing: run test/scripts/deps.sh (systemd-container)")

	root := harness.DebianRoot(t)
	writeFile(t, root, "etc/systemd/system/containerd.service", containerdUnit)
	writeFile(t, root, "etc/systemd/system/broken.service", brokenUnit)
	writeFile(t, root, "etc/systemd/system/slow.service", slowUnit)
	writeFile(t, root, "etc/systemd/system/flappy.service", flappyUnit)
	enable(t, root, "containerd.service")
	enable(t, root, "broken.service")
	enable(t, root, "flappy.service")

	c := boot(t, root)
	r := &systemd.Restarter{Conn: c.conn}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	state := func(unit string) (active, sub string) {
		t.Helper()
		st, err := c.conn.ListUnitsByNamesContext(ctx, []string{unit})
		require.NoError(t, err)
		require.Len(t, st, 1)
		return st[0].ActiveState, st[0].SubState
	}
	mainPID := func(unit string) uint32 {
		t.Helper()
		p, err := c.conn.GetServicePropertyContext(ctx, unit, "MainPID")
		require.NoError(t, err)
		return p.Value.Value().(uint32)
	}

	t.Run("Present", func(t *testing.T) {
		start := time.Now()
		got, err := r.Present(ctx, []string{"containerd.service", "docker.service", "crio.service", "broken.service"})
		require.NoError(t, err)
		require.Equal(t, []string{"containerd.service", "broken.service"}, got)
		t.Logf("Present in %s", time.Since(start).Round(time.Microsecond))
	})

	t.Run("Restart containerd.service", func(t *testing.T) {
		// Boot plus 3 restarts stays within systemd's default start limit
		// (5 starts in 10 s); a 5th restart would get job result "failed".
		var took []time.Duration
		for i := range 3 {
			old := mainPID("containerd.service")
			require.NotZero(t, old)
			require.Equal(t, "sleep infinity", c.cmdline(old))

			start := time.Now()
			res, err := r.Restart(ctx, "containerd.service")
			call := time.Since(start)
			require.NoError(t, err)
			require.Equal(t, "containerd.service", res.Unit)
			require.Equal(t, old, res.OldPID)
			require.NotZero(t, res.NewPID)
			require.NotEqual(t, res.OldPID, res.NewPID, "a restart gives the unit a new main process")
			require.Equal(t, res.NewPID, mainPID("containerd.service"))
			// Type=simple: the job is done once systemd forked, so the new
			// main process may still be systemd's child ("(sh)") or the
			// shell about to exec sleep.
			first := c.cmdline(res.NewPID)
			require.Eventually(t, func() bool { return c.cmdline(res.NewPID) == "sleep infinity" },
				2*time.Second, 5*time.Millisecond, "new MainPID becomes the new sleep")
			require.Empty(t, c.cmdline(res.OldPID), "old main process is gone")
			active, sub := state("containerd.service")
			require.Equal(t, []string{"active", "running"}, []string{active, sub})
			t.Logf("restart %d: MainPID %d -> %d (%q right after), job+active %s, whole call %s",
				i+1, res.OldPID, res.NewPID, first, res.Duration.Round(time.Microsecond), call.Round(time.Microsecond))
			took = append(took, call)
		}
		slices.Sort(took)
		t.Logf("Restart(containerd.service) x%d: min %s, median %s, max %s", len(took),
			took[0].Round(time.Microsecond), took[len(took)/2].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond))
	})

	t.Run("Restart broken.service fails", func(t *testing.T) {
		old := mainPID("broken.service")
		require.NotZero(t, old, "broken.service runs until it is broken")
		writeFile(t, root, breakFile, "")
		defer os.Remove(filepath.Join(root, breakFile))

		start := time.Now()
		_, err := r.Restart(ctx, "broken.service")
		t.Logf("Restart(broken.service): %v (after %s)", err, time.Since(start).Round(time.Microsecond))
		require.EqualError(t, err, `restart broken.service: job result "failed", service result "exit-code"`)
		var jobErr *systemd.JobError
		require.ErrorAs(t, err, &jobErr)
		require.Equal(t, "failed", jobErr.Result)
		require.Equal(t, "exit-code", jobErr.ServiceResult)
		active, sub := state("broken.service")
		require.Equal(t, []string{"failed", "failed"}, []string{active, sub})
		require.Zero(t, mainPID("broken.service"))
		require.Empty(t, c.cmdline(old), "old main process was stopped")
	})

	t.Run("start limit", func(t *testing.T) {
		res, err := r.Restart(ctx, "flappy.service")
		require.NoError(t, err, "second start within the limit")
		_, err = r.Restart(ctx, "flappy.service")
		t.Logf("Restart(flappy.service) again: %v", err)
		require.EqualError(t, err, `restart flappy.service: job result "failed", service result "start-limit-hit"`)
		active, sub := state("flappy.service")
		require.Equal(t, []string{"failed", "failed"}, []string{active, sub})
		require.Empty(t, c.cmdline(res.NewPID), "the restart stopped the unit before the start was refused")
	})

	t.Run("Restart with an expired ctx", func(t *testing.T) {
		before := mainPID("containerd.service")
		expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		_, err := r.Restart(expired, "containerd.service")
		require.EqualError(t, err, "restart containerd.service: context deadline exceeded")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		time.Sleep(200 * time.Millisecond)
		require.Equal(t, before, mainPID("containerd.service"), "nothing was restarted")
	})

	t.Run("ctx ends before the job", func(t *testing.T) {
		active, _ := state("slow.service")
		require.Equal(t, "inactive", active)
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := r.Restart(short, "slow.service")
		took := time.Since(start)
		t.Logf("Restart(slow.service) with a 300 ms ctx: %v (after %s)", err, took.Round(time.Microsecond))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorContains(t, err, "restart slow.service: no job result yet")
		require.Less(t, took, slowStart)

		// The job is systemd's: it goes on and the unit comes up anyway.
		require.Eventually(t, func() bool {
			active, _ := state("slow.service")
			return active == "active"
		}, 10*time.Second, 50*time.Millisecond)
		t.Logf("slow.service active %s after the restart was queued", time.Since(start).Round(time.Millisecond))

		// A restart with enough time succeeds and takes the start's time.
		start = time.Now()
		res, err := r.Restart(ctx, "slow.service")
		require.NoError(t, err)
		require.GreaterOrEqual(t, res.Duration, slowStart)
		t.Logf("Restart(slow.service): MainPID %d -> %d in %s", res.OldPID, res.NewPID, time.Since(start).Round(time.Millisecond))
	})

	t.Run("Restart of a missing unit", func(t *testing.T) {
		require.Zero(t, mainPID("crio.service"), "systemd reports MainPID 0 for a missing unit")
		_, err := r.Restart(ctx, "crio.service")
		t.Logf("Restart(crio.service): %v", err)
		require.EqualError(t, err, "restart crio.service: Unit crio.service not found.")
		var jobErr *systemd.JobError
		require.False(t, errors.As(err, &jobErr))
	})
}

package systemd_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/systemd"
	"github.com/nodetrust/nodetrust/pkg/systemd/systemdtest"
)

const unit = "containerd.service"

func TestRestart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		unit    systemdtest.Unit
		timeout time.Duration // of the Restart ctx; 0: 5 s
		wantErr string        // "" means success
		wantIs  error
		job     string // result a *JobError must carry
		service string // and its service result
	}{
		{name: "done", unit: systemdtest.Unit{MainPID: 100}},
		{name: "done after a slow job", unit: systemdtest.Unit{MainPID: 100, Delay: 30 * time.Millisecond}},
		{name: "activating, then active", unit: systemdtest.Unit{MainPID: 100, After: []string{"activating", "activating", "active"}}},
		{
			name: "failed", unit: systemdtest.Unit{MainPID: 100, Result: "failed", ServiceResult: "exit-code"},
			wantErr: `restart containerd.service: job result "failed", service result "exit-code"`, job: "failed", service: "exit-code",
		},
		{
			name: "start limit hit", unit: systemdtest.Unit{MainPID: 100, Result: "failed", ServiceResult: "start-limit-hit"},
			wantErr: `restart containerd.service: job result "failed", service result "start-limit-hit"`, job: "failed", service: "start-limit-hit",
		},
		{
			name: "timeout", unit: systemdtest.Unit{MainPID: 100, Result: "timeout", ServiceResult: "timeout"},
			wantErr: `restart containerd.service: job result "timeout", service result "timeout"`, job: "timeout", service: "timeout",
		},
		{
			name: "canceled", unit: systemdtest.Unit{MainPID: 100, Result: "canceled"},
			wantErr: `restart containerd.service: job result "canceled", service result "success"`, job: "canceled", service: "success",
		},
		{
			name: "dependency", unit: systemdtest.Unit{MainPID: 100, Result: "dependency"},
			wantErr: `restart containerd.service: job result "dependency", service result "success"`, job: "dependency", service: "success",
		},
		{
			name: "skipped", unit: systemdtest.Unit{MainPID: 100, Result: "skipped"},
			wantErr: `restart containerd.service: job result "skipped", service result "success"`, job: "skipped", service: "success",
		},
		{
			name: "ctx ends while waiting for the job", unit: systemdtest.Unit{MainPID: 100, Hang: true}, timeout: 50 * time.Millisecond,
			wantErr: "restart containerd.service: no job result yet, the job may still be running: context deadline exceeded", wantIs: context.DeadlineExceeded,
		},
		{
			name: "failed right after done", unit: systemdtest.Unit{MainPID: 100, After: []string{"activating", "failed"}},
			wantErr: "restart containerd.service: unit is failed (failed) after the restart job",
		},
		{
			name: "inactive after done", unit: systemdtest.Unit{MainPID: 100, After: []string{"inactive"}},
			wantErr: "restart containerd.service: unit is inactive (dead) after the restart job",
		},
		{
			name: "never active", unit: systemdtest.Unit{MainPID: 100, After: []string{"activating"}},
			wantErr: "restart containerd.service: unit still activating (start) after the restart job: context deadline exceeded", wantIs: context.DeadlineExceeded,
		},
		{
			name: "RestartUnit call fails", unit: systemdtest.Unit{MainPID: 100, Err: errors.New("Access denied")},
			wantErr: "restart containerd.service: Access denied",
		},
		{
			name: "unit not loaded", unit: systemdtest.Unit{LoadState: "not-found"},
			wantErr: "restart containerd.service: Unit containerd.service not found.",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := systemdtest.New(map[string]systemdtest.Unit{unit: tc.unit})
			r := &systemd.Restarter{Conn: fake, ActiveTimeout: 100 * time.Millisecond, PollInterval: 5 * time.Millisecond}
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()

			res, err := r.Restart(ctx, unit)
			require.Equal(t, []string{unit}, fake.Restarts())
			require.Contains(t, fake.Calls(), "RestartUnit containerd.service replace")
			if tc.wantErr != "" {
				require.EqualError(t, err, tc.wantErr)
				if tc.wantIs != nil {
					require.ErrorIs(t, err, tc.wantIs)
				}
				var jobErr *systemd.JobError
				require.Equal(t, tc.job != "", errors.As(err, &jobErr))
				if tc.job != "" {
					require.Equal(t, &systemd.JobError{Unit: unit, Result: tc.job, ServiceResult: tc.service}, jobErr)
				}
				return
			}
			require.NoError(t, err)
			require.Equal(t, unit, res.Unit)
			require.Equal(t, uint32(100), res.OldPID)
			require.Greater(t, res.NewPID, res.OldPID)
			require.Greater(t, res.Duration, time.Duration(0))
			require.GreaterOrEqual(t, res.Duration, tc.unit.Delay)
		})
	}
}

func TestJobErrorWithoutServiceResult(t *testing.T) {
	err := &systemd.JobError{Unit: unit, Result: "failed"}
	require.EqualError(t, err, `restart containerd.service: job result "failed"`)
}

func TestRestartExpiredContext(t *testing.T) {
	fake := systemdtest.New(map[string]systemdtest.Unit{unit: {MainPID: 100}})
	r := &systemd.Restarter{Conn: fake}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()

	_, err := r.Restart(ctx, unit)
	require.EqualError(t, err, "restart containerd.service: context deadline exceeded")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, fake.Calls(), "nothing is sent to systemd")
}

func TestPresent(t *testing.T) {
	units := []string{"containerd.service", "docker.service", "crio.service"}
	for _, tc := range []struct {
		name  string
		known map[string]systemdtest.Unit
		want  []string
	}{
		{name: "none", known: nil, want: nil},
		{name: "containerd only", known: map[string]systemdtest.Unit{"containerd.service": {}}, want: []string{"containerd.service"}},
		{
			name:  "all, in the order asked",
			known: map[string]systemdtest.Unit{"crio.service": {}, "docker.service": {ActiveState: "inactive"}, "containerd.service": {}},
			want:  units,
		},
		{
			name:  "masked and broken units are not present",
			known: map[string]systemdtest.Unit{"containerd.service": {LoadState: "masked"}, "docker.service": {LoadState: "bad-setting"}, "crio.service": {}},
			want:  []string{"crio.service"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := systemdtest.New(tc.known)
			r := &systemd.Restarter{Conn: fake}
			got, err := r.Present(context.Background(), units)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, []string{"ListUnitsByNames containerd.service docker.service crio.service"}, fake.Calls())
			require.Empty(t, fake.Restarts())
		})
	}
}

func TestPresentError(t *testing.T) {
	r := &systemd.Restarter{Conn: systemdtest.New(nil)}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := r.Present(ctx, []string{"containerd.service"})
	require.EqualError(t, err, "list units containerd.service: context canceled")

	got, err := r.Present(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestFakeClose(t *testing.T) {
	fake := systemdtest.New(nil)
	var conn systemd.Conn = fake
	conn.Close()
	require.True(t, fake.Closed())
	require.Equal(t, []string{"Close"}, fake.Calls())
}

func TestDial(t *testing.T) {
	dir := t.TempDir()

	t.Run("no socket", func(t *testing.T) {
		addr := "unix:path=" + filepath.Join(dir, "missing")
		_, err := systemd.Dial(context.Background(), addr)
		require.ErrorContains(t, err, "connect to system bus "+addr+": ")
	})

	t.Run("bus never answers", func(t *testing.T) {
		// A listener that accepts but never speaks: Dial must give up when
		// ctx ends instead of hanging in the authentication handshake.
		sock := filepath.Join(dir, "silent")
		l, err := net.Listen("unix", sock)
		require.NoError(t, err)
		defer l.Close()
		go func() {
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				conns = append(conns, c)
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = systemd.Dial(ctx, "unix:path="+sock)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), 5*time.Second)
	})

	t.Run("ctx already done", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := systemd.Dial(ctx, "unix:path="+filepath.Join(dir, "missing"))
		require.ErrorIs(t, err, context.Canceled)
	})
}

func TestStartedAt(t *testing.T) {
	at := time.Date(2026, 11, 22, 13, 0, 0, 123456000, time.UTC)
	fake := systemdtest.New(map[string]systemdtest.Unit{
		"containerd.service": {MainPID: 10, StartedAt: at},
		"never.service":      {},
	})
	r := &systemd.Restarter{Conn: fake}
	got, err := r.StartedAt(context.Background(), "containerd.service")
	require.NoError(t, err)
	require.True(t, got.Equal(at), "got %v", got)

	got, err = r.StartedAt(context.Background(), "never.service")
	require.NoError(t, err)
	require.True(t, got.IsZero(), "a unit that never started")

	before := time.Now()
	_, err = r.Restart(context.Background(), "containerd.service")
	require.NoError(t, err)
	got, err = r.StartedAt(context.Background(), "containerd.service")
	require.NoError(t, err)
	require.False(t, got.Before(before.Truncate(time.Microsecond)), "a restart moves it")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = r.StartedAt(ctx, "containerd.service")
	require.ErrorContains(t, err, "containerd.service: read ExecMainStartTimestamp")
}

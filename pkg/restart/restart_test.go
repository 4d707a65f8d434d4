package restart_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/restart"
	"github.com/nodetrust/nodetrust/pkg/systemd"
	"github.com/nodetrust/nodetrust/pkg/systemd/systemdtest"
)

// record counts ClearRestarts calls.
type record struct {
	cleared int
	err     error
}

func (r *record) ClearRestarts() error {
	if r.err != nil {
		return r.err
	}
	r.cleared++
	return nil
}

// slots is a restart semaphore that is free, full or failing.
type slots struct {
	full     bool
	err      error
	released []string
}

func (s *slots) TryAcquire(context.Context) (string, bool, error) {
	return "slot-0", !s.full && s.err == nil, s.err
}

func (s *slots) Release(_ context.Context, slot string) error {
	s.released = append(s.released, slot)
	return nil
}

const retry = 7 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// trustStore is a trust store change on a node with a runtime.
var trustStore = restart.Due{Pending: hostfs.Pending{TrustStore: true}, Runtimes: true, Reason: "why"}

// policy returns a policy restarting containerd.service through conn.
func policy(opts *restart.Options, conn *systemdtest.Conn, rec *record) *restart.Policy {
	if opts != nil {
		opts.Units = []string{"containerd.service"}
		opts.Systemd = func(context.Context) (systemd.Conn, error) { return conn, nil }
	}
	return restart.New(opts, rec, retry, quiet)
}

func TestHandle(t *testing.T) {
	loaded := map[string]systemdtest.Unit{"containerd.service": {MainPID: 100}}
	change := time.Now().Add(-time.Hour)
	tests := map[string]struct {
		opts      *restart.Options
		units     map[string]systemdtest.Unit
		due       restart.Due
		recordErr error
		want      restart.Outcome
		restarts  []string
		cleared   int
	}{
		"no runtime: nothing to restart": {opts: &restart.Options{}, units: loaded,
			due: restart.Due{Pending: trustStore.Pending}, want: restart.Outcome{State: restart.Done}, cleared: 1},
		"no options: off, not rechecked": {units: loaded, due: trustStore,
			want: restart.Outcome{State: restart.Waiting, Message: "restart pending: why (restarts are off)"}},
		"never: off, rechecked": {opts: &restart.Options{Never: true}, units: loaded, due: trustStore,
			want: restart.Outcome{State: restart.Waiting, Message: "restart pending: why (restarts are off)", Retry: restart.NeverRecheck}},
		"restarted": {opts: &restart.Options{}, units: loaded, due: trustStore,
			want: restart.Outcome{State: restart.Done, Restarted: 1}, restarts: []string{"containerd.service"}, cleared: 1},
		"config change restarts its unit too": {opts: &restart.Options{}, due: restart.Due{Pending: hostfs.Pending{TrustStore: true, Units: []string{"other.service"}}, Runtimes: true},
			units: map[string]systemdtest.Unit{"containerd.service": {MainPID: 100}, "other.service": {MainPID: 200}},
			want:  restart.Outcome{State: restart.Done, Restarted: 2}, restarts: []string{"containerd.service", "other.service"}, cleared: 1},
		"unit not loaded: nothing to restart": {opts: &restart.Options{}, due: trustStore,
			want: restart.Outcome{State: restart.Done}, cleared: 1},
		"restarted since the change": {opts: &restart.Options{},
			units: map[string]systemdtest.Unit{"containerd.service": {MainPID: 100, StartedAt: change.Add(time.Minute)}},
			due:   restart.Due{Pending: hostfs.Pending{TrustStore: true, Since: change}, Runtimes: true},
			want:  restart.Outcome{State: restart.Done}, cleared: 1},
		"started before the change": {opts: &restart.Options{},
			units: map[string]systemdtest.Unit{"containerd.service": {MainPID: 100, StartedAt: change.Add(-time.Minute)}},
			due:   restart.Due{Pending: hostfs.Pending{TrustStore: true, Since: change}, Runtimes: true},
			want:  restart.Outcome{State: restart.Done, Restarted: 1}, restarts: []string{"containerd.service"}, cleared: 1},
		"never, restarted since the change": {opts: &restart.Options{Never: true},
			units: map[string]systemdtest.Unit{"containerd.service": {MainPID: 100, StartedAt: change.Add(time.Minute)}},
			due:   restart.Due{Pending: hostfs.Pending{TrustStore: true, Since: change}, Runtimes: true},
			want:  restart.Outcome{State: restart.Done}, cleared: 1},
		"record not written": {opts: &restart.Options{}, due: trustStore, recordErr: errors.New("disk full"),
			want: restart.Outcome{State: restart.Failed, Message: "record restart: disk full", Retry: retry}},
		"restart failed": {opts: &restart.Options{}, due: trustStore,
			units:    map[string]systemdtest.Unit{"containerd.service": {MainPID: 100, Result: "failed", ServiceResult: "exit-code"}},
			want:     restart.Outcome{State: restart.Failed, Message: `restart containerd.service: job result "failed", service result "exit-code"`, Retry: restart.Backoff},
			restarts: []string{"containerd.service"}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			conn, rec := systemdtest.New(tt.units), &record{err: tt.recordErr}
			got := policy(tt.opts, conn, rec).Handle(context.Background(), tt.due)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.restarts, conn.Restarts())
			require.Equal(t, tt.cleared, rec.cleared)
		})
	}
}

func TestHandleBacksOffAfterAFailure(t *testing.T) {
	conn, rec := systemdtest.New(map[string]systemdtest.Unit{"containerd.service": {MainPID: 100, Result: "failed"}}), &record{}
	p := policy(&restart.Options{}, conn, rec)
	first := p.Handle(context.Background(), trustStore)
	require.Equal(t, restart.Failed, first.State)

	again := p.Handle(context.Background(), trustStore)
	require.Equal(t, restart.Failed, again.State)
	require.Contains(t, again.Message, first.Message+" (retried after ")
	require.Greater(t, again.Retry, time.Duration(0))
	require.LessOrEqual(t, again.Retry, restart.Backoff)
	require.Len(t, conn.Restarts(), 1, "no attempt within the backoff")
	require.Zero(t, rec.cleared)
}

func TestHandleSystemdUnreachable(t *testing.T) {
	for name, tt := range map[string]struct {
		never bool
		want  restart.Outcome
	}{
		"on":    {want: restart.Outcome{State: restart.Failed, Message: "restart pending: cannot reach systemd: no bus", Retry: retry}},
		"never": {never: true, want: restart.Outcome{State: restart.Waiting, Message: "restart pending: why (restarts are off)", Retry: restart.NeverRecheck}},
	} {
		t.Run(name, func(t *testing.T) {
			p := restart.New(&restart.Options{Never: tt.never, Systemd: func(context.Context) (systemd.Conn, error) {
				return nil, errors.New("no bus")
			}}, &record{}, retry, quiet)
			require.Equal(t, tt.want, p.Handle(context.Background(), trustStore))
		})
	}
}

func TestHandleSlots(t *testing.T) {
	for name, tt := range map[string]struct {
		slots    slots
		want     restart.Outcome
		restarts []string
		released []string
	}{
		"free": {want: restart.Outcome{State: restart.Done, Restarted: 1}, restarts: []string{"containerd.service"}, released: []string{"slot-0"}},
		"failing": {slots: slots{err: errors.New("forbidden")},
			want: restart.Outcome{State: restart.Failed, Message: "restart pending: restart slot: forbidden", Retry: retry}},
	} {
		t.Run(name, func(t *testing.T) {
			conn := systemdtest.New(map[string]systemdtest.Unit{"containerd.service": {MainPID: 100}})
			p := policy(&restart.Options{Slots: &tt.slots, MaxConcurrent: 2}, conn, &record{})
			require.Equal(t, tt.want, p.Handle(context.Background(), trustStore))
			require.Equal(t, tt.restarts, conn.Restarts())
			require.Equal(t, tt.released, tt.slots.released)
		})
	}

	conn := systemdtest.New(map[string]systemdtest.Unit{"containerd.service": {MainPID: 100}})
	full := &slots{full: true}
	got := policy(&restart.Options{Slots: full, MaxConcurrent: 2}, conn, &record{}).Handle(context.Background(), trustStore)
	require.Equal(t, restart.Waiting, got.State)
	require.Equal(t, "restart pending: waiting for a restart slot (at most 2 nodes restart at once)", got.Message)
	require.GreaterOrEqual(t, got.Retry, time.Second, "jittered between 1 and 2 s")
	require.Less(t, got.Retry, 2*time.Second)
	require.Empty(t, conn.Restarts())
}

func TestLeave(t *testing.T) {
	loaded := map[string]systemdtest.Unit{"containerd.service": {MainPID: 100}}
	for name, tt := range map[string]struct {
		opts      *restart.Options
		recordErr error
		want      restart.Outcome
		restarts  []string
		cleared   int
	}{
		"no options: handed over":   {want: restart.Outcome{State: restart.Done}, cleared: 1},
		"never: handed over":        {opts: &restart.Options{Never: true}, want: restart.Outcome{State: restart.Done}, cleared: 1},
		"on: restarted":             {opts: &restart.Options{}, want: restart.Outcome{State: restart.Done, Restarted: 1}, restarts: []string{"containerd.service"}, cleared: 1},
		"never, record not written": {opts: &restart.Options{Never: true}, recordErr: errors.New("disk full"), want: restart.Outcome{State: restart.Failed, Message: "disk full", Retry: retry}},
	} {
		t.Run(name, func(t *testing.T) {
			conn, rec := systemdtest.New(loaded), &record{err: tt.recordErr}
			require.Equal(t, tt.want, policy(tt.opts, conn, rec).Leave(context.Background(), trustStore))
			require.Equal(t, tt.restarts, conn.Restarts())
			require.Equal(t, tt.cleared, rec.cleared)
		})
	}
}

func TestHandOver(t *testing.T) {
	rec := &record{}
	require.NoError(t, restart.HandOver(rec))
	require.Equal(t, 1, rec.cleared)
	require.EqualError(t, restart.HandOver(&record{err: errors.New("disk full")}), "disk full")
}

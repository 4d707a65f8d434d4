// Package restart is the one place that deals with what awaits a restart
// (hostfs.Pending, carried in reconcile.Report.Restart): a Policy decides, for
// each sync, whether to restart the container runtimes now, wait (restarts
// off, no free restart slot, a failure backing off) or record that nothing
// awaits any more, and returns that as an Outcome (state, message, when to
// try again). HandOver records a pending restart as left to the operator
// (`nodetrust apply`). Callers never clear the record themselves.
package restart

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/systemd"
)

// DefaultUnits are the container runtimes that load the OS trust store once
// per process.
var DefaultUnits = []string{"containerd.service", "docker.service", "crio.service"}

// Options configure the restarts of the container runtimes after the OS
// trust store changed (hosts.toml and certs.d are read per pull and never
// need one), and of units whose config changed.
type Options struct {
	// Never turns restarts off: the node reports "restart pending" instead.
	Never bool
	// Units are restarted when loaded on the node, in order.
	Units []string
	// Systemd connects to the host's systemd (D-Bus); the connection is
	// closed after each restart round.
	Systemd func(ctx context.Context) (systemd.Conn, error)
	// Slots limits how many nodes restart at once across the cluster; nil
	// (no cluster, --source-dir) restarts at once.
	Slots Slots
	// MaxConcurrent is reported in messages while waiting for a slot.
	MaxConcurrent int
}

// Slots is a cluster-wide counting semaphore; lease.Slots implements it.
type Slots interface {
	TryAcquire(ctx context.Context) (slot string, ok bool, err error)
	Release(ctx context.Context, slot string) error
}

// Record keeps what awaits a restart across syncs and agent restarts;
// *hostfs.Root implements it.
type Record interface {
	// ClearRestarts records that nothing awaits a restart any more.
	ClearRestarts() error
}

// HandOver records that what awaits a restart was reported to whoever
// restarts the runtimes (the operator, after `nodetrust apply`), so that no
// later apply or agent reports or restarts it again.
func HandOver(rec Record) error { return rec.ClearRestarts() }

// Backoff is how long a failed restart is not tried again, so that a unit
// that fails to start is not pushed into systemd's start limit (5 starts in
// 10 s by default). The returned Outcome.Retry tries again when it ends.
const Backoff = 15 * time.Second

// NeverRecheck is how often a node with --restart=never and a pending
// restart looks whether someone else restarted the runtimes.
const NeverRecheck = time.Minute

// slotRetry is how soon a node waiting for a restart slot asks again; jitter
// keeps waiting nodes from asking in step.
func slotRetry() time.Duration { return time.Second + rand.N(time.Second) }

// Due is a restart that awaits, with what the policy needs to know of the
// node to handle it.
type Due struct {
	hostfs.Pending
	// Runtimes: a container runtime's config directory exists on the node;
	// without one, no process caches the old trust store.
	Runtimes bool
	// Reason says why the restart awaits, for messages
	// (reconcile.Report.RestartReason).
	Reason string
}

// State is where a pending restart stands after Handle.
type State int

const (
	// Done: nothing awaits a restart any more (restarted, restarted by
	// someone else, or nothing to restart), and the record says so.
	Done State = iota
	// Waiting: a restart awaits by design: restarts are off, or no restart
	// slot is free.
	Waiting
	// Failed: a restart failed or could not be tried.
	Failed
)

// Outcome is what Handle did about a pending restart.
type Outcome struct {
	State State
	// Message says why the restart is not Done; "" when it is.
	Message string
	// Retry is when to handle the pending restart again; 0: no need.
	Retry time.Duration
	// Restarted counts the units restarted, also when a later one failed.
	Restarted int
}

// Policy handles pending restarts as its Options say. It remembers the last
// failed restart, so that the next Handle calls back off; it is not safe
// for concurrent use.
type Policy struct {
	opts   *Options // nil: restarts are off, and never rechecked
	record Record
	retry  time.Duration
	log    *slog.Logger
	// failed is the last failed restart, at failedAt; "" once one succeeded.
	failed   string
	failedAt time.Time
}

// New returns a policy. A nil opts turns restarts off and only reports
// them pending. retry is when to try again after an error that is not a
// failed restart (systemd unreachable, the record not written).
func New(opts *Options, record Record, retry time.Duration, log *slog.Logger) *Policy {
	return &Policy{opts: opts, record: record, retry: retry, log: log}
}

// Handle restarts what due awaits, or says why not.
func (p *Policy) Handle(ctx context.Context, due Due) Outcome {
	if !due.Runtimes { // no runtime on the node caches the old trust store
		return p.clear()
	}
	if p.opts == nil {
		return p.off(due)
	}
	if !p.opts.Never && p.failed != "" && time.Since(p.failedAt) < Backoff {
		until := p.failedAt.Add(Backoff)
		return Outcome{State: Failed, Message: p.failed + fmt.Sprintf(" (retried after %s)", until.UTC().Format(time.RFC3339)), Retry: time.Until(until)}
	}
	conn, err := p.opts.Systemd(ctx)
	if err != nil {
		return p.cannot(due, fmt.Sprintf("restart pending: cannot reach systemd: %v", err))
	}
	defer conn.Close()
	return p.restartLoaded(ctx, &systemd.Restarter{Conn: conn}, due)
}

// Leave handles due when nodetrust leaves the node. No agent stays to
// report a pending restart or to recheck it, so with restarts off it logs
// the restart as pending and hands it over; otherwise it is Handle.
func (p *Policy) Leave(ctx context.Context, due Due) Outcome {
	if p.opts != nil && !p.opts.Never {
		return p.Handle(ctx, due)
	}
	p.log.Warn(p.off(due).Message)
	if err := HandOver(p.record); err != nil {
		return Outcome{State: Failed, Message: err.Error(), Retry: p.retry}
	}
	return Outcome{State: Done}
}

// off is the outcome while restarts are off.
func (p *Policy) off(due Due) Outcome {
	o := Outcome{State: Waiting, Message: "restart pending: " + due.Reason + " (restarts are off)"}
	if p.opts != nil {
		o.Retry = NeverRecheck
	}
	return o
}

// cannot is the outcome when systemd cannot tell what to restart: msg, or,
// with restarts off, just that they are off.
func (p *Policy) cannot(due Due, msg string) Outcome {
	if p.opts.Never {
		return p.off(due)
	}
	return Outcome{State: Failed, Message: msg, Retry: p.retry}
}

// clear records that nothing awaits a restart any more.
func (p *Policy) clear() Outcome {
	if err := p.record.ClearRestarts(); err != nil {
		return Outcome{State: Failed, Message: fmt.Sprintf("record restart: %v", err), Retry: p.retry}
	}
	return Outcome{State: Done}
}

// restartLoaded restarts those of the units due covers that are loaded and
// not restarted since the change, holding a restart slot.
func (p *Policy) restartLoaded(ctx context.Context, rs *systemd.Restarter, due Due) Outcome {
	units, err := rs.Present(ctx, p.units(due.Pending))
	if err != nil {
		return p.cannot(due, fmt.Sprintf("restart pending: %v", err))
	}
	if units = p.notRestartedSince(ctx, rs, units, due.Since); len(units) == 0 {
		return p.clear()
	}
	if p.opts.Never {
		return p.off(due)
	}
	if p.opts.Slots == nil {
		return p.restart(ctx, rs, units)
	}
	slot, ok, err := p.opts.Slots.TryAcquire(ctx)
	switch {
	case err != nil:
		return Outcome{State: Failed, Message: fmt.Sprintf("restart pending: restart slot: %v", err), Retry: p.retry}
	case !ok:
		return Outcome{State: Waiting, Message: fmt.Sprintf("restart pending: waiting for a restart slot (at most %d nodes restart at once)", p.opts.MaxConcurrent), Retry: slotRetry()}
	}
	defer func() {
		if err := p.opts.Slots.Release(context.WithoutCancel(ctx), slot); err != nil {
			p.log.Warn("release restart slot", "slot", slot, "err", err)
		}
	}()
	return p.restart(ctx, rs, units)
}

// restart restarts units in order, stopping at the first failure, which
// starts the backoff.
func (p *Policy) restart(ctx context.Context, rs *systemd.Restarter, units []string) Outcome {
	var n int
	for _, unit := range units {
		res, err := rs.Restart(ctx, unit)
		if err != nil {
			p.failed, p.failedAt = err.Error(), time.Now()
			return Outcome{State: Failed, Message: p.failed, Retry: Backoff, Restarted: n}
		}
		p.log.Info("restarted", "unit", unit, "oldPID", res.OldPID, "newPID", res.NewPID, "duration", res.Duration)
		n++
	}
	p.failed = ""
	o := p.clear()
	o.Restarted = n
	return o
}

// units are the units a pending restart covers, in order: every runtime
// after a trust store change, and each unit whose config changed.
func (p *Policy) units(pending hostfs.Pending) []string {
	var units []string
	if pending.TrustStore {
		units = append(units, p.opts.Units...)
	}
	for _, u := range pending.Units {
		if !slices.Contains(units, u) {
			units = append(units, u)
		}
	}
	return units
}

// notRestartedSince returns those of units whose main process started
// before since: the others (restarted by hand, or the node rebooted) run
// with the change already. A unit whose start time cannot be read is kept.
func (p *Policy) notRestartedSince(ctx context.Context, rs *systemd.Restarter, units []string, since time.Time) []string {
	if since.IsZero() {
		return units
	}
	var out []string
	for _, u := range units {
		started, err := rs.StartedAt(ctx, u)
		switch {
		case err != nil:
			p.log.Warn("read start time", "unit", u, "err", err)
		case started.After(since):
			p.log.Info("restarted since the change: no restart needed", "unit", u, "started", started, "change", since)
			continue
		}
		out = append(out, u)
	}
	return out
}

package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/node"
	"github.com/nodetrust/nodetrust/pkg/systemd"
)

// DefaultRestartUnits are the container runtimes that load the OS trust
// store once per process.
var DefaultRestartUnits = []string{"containerd.service", "docker.service", "crio.service"}

// Restarts restarts the container runtimes after the OS trust store
// changed: hosts.toml and certs.d are read per pull and never need one.
type Restarts struct {
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

// RestartBackoff is how long a failed restart is not tried again, so that a
// unit that fails to start is not pushed into systemd's start limit (5 starts
// in 10 s by default). The retry timer tries again when it ends.
const RestartBackoff = 15 * time.Second

// slotRetry is how soon a node waiting for a restart slot asks again; jitter
// keeps waiting nodes from asking in step.
func slotRetry() time.Duration { return time.Second + rand.N(time.Second) }

// Slots is a cluster-wide counting semaphore; lease.Slots implements it.
type Slots interface {
	TryAcquire(ctx context.Context) (slot string, ok bool, err error)
	Release(ctx context.Context, slot string) error
}

// restartReason says why rep awaits a restart, and what to restart.
func restartReason(rep node.Report) string {
	var why []string
	if rep.Restart.TrustStore {
		why = append(why, "the OS trust store changed; restart the container runtimes to load it")
	}
	if len(rep.Restart.Units) > 0 {
		why = append(why, fmt.Sprintf("the config of %s changed; restart it to load it", strings.Join(rep.Restart.Units, ", ")))
	}
	return strings.Join(why, "; ")
}

// restartUnits are the units a pending restart covers, in order: every
// runtime after a trust store change, and each unit whose config changed.
func (r *Restarts) restartUnits(rep node.Report) []string {
	var units []string
	if rep.Restart.TrustStore {
		units = append(units, r.Units...)
	}
	for _, u := range rep.Restart.Units {
		if !slices.Contains(units, u) {
			units = append(units, u)
		}
	}
	return units
}

// NeverRecheck is how often a node with --restart=never and a pending
// restart looks whether someone else restarted the runtimes.
const NeverRecheck = time.Minute

// notRestartedSince returns those of units whose main process started
// before since: the others (restarted by hand, or the node rebooted) run
// with the change already. A unit whose start time cannot be read is kept.
func (a *Agent) notRestartedSince(ctx context.Context, rs *systemd.Restarter, units []string, since time.Time) []string {
	if since.IsZero() {
		return units
	}
	var out []string
	for _, u := range units {
		started, err := rs.StartedAt(ctx, u)
		switch {
		case err != nil:
			a.log.Warn("read start time", "unit", u, "err", err)
		case started.After(since):
			a.log.Info("restarted since the change: no restart needed", "unit", u, "started", started, "change", since)
			continue
		}
		out = append(out, u)
	}
	return out
}

// restart handles a pending restart and adjusts the status. It returns
// when to try again (waiting for a slot, systemd unreachable, a failed
// restart backing off), or 0.
func (a *Agent) restart(ctx context.Context, st *annotation.Status, rep node.Report) (retry time.Duration) {
	r := a.opts.Restarts
	if !rep.Runtimes { // no runtime on the node caches the old trust store
		if err := a.opts.Root.ClearRestarts(); err != nil {
			degrade(st, fmt.Sprintf("record restart: %v", err))
			return a.opts.Retry
		}
		return 0
	}
	off := func() time.Duration {
		pending(st, "restart pending: "+restartReason(rep)+" (restarts are off)")
		if r == nil {
			return 0
		}
		return NeverRecheck
	}
	if r == nil {
		return off()
	}
	if !r.Never && a.restartErr != "" && time.Since(a.restartFailedAt) < RestartBackoff {
		degrade(st, a.restartErr+fmt.Sprintf(" (retried after %s)", a.restartFailedAt.Add(RestartBackoff).UTC().Format(time.RFC3339)))
		return time.Until(a.restartFailedAt.Add(RestartBackoff))
	}
	conn, err := r.Systemd(ctx)
	if err != nil && r.Never {
		return off()
	}
	if err != nil {
		degrade(st, fmt.Sprintf("restart pending: cannot reach systemd: %v", err))
		return a.opts.Retry
	}
	defer conn.Close()
	rs := &systemd.Restarter{Conn: conn}
	units, err := rs.Present(ctx, r.restartUnits(rep))
	if err != nil && r.Never {
		return off()
	}
	if err != nil {
		degrade(st, fmt.Sprintf("restart pending: %v", err))
		return a.opts.Retry
	}
	if units = a.notRestartedSince(ctx, rs, units, rep.Restart.Since); len(units) == 0 {
		if err := a.opts.Root.ClearRestarts(); err != nil {
			degrade(st, fmt.Sprintf("record restart: %v", err))
			return a.opts.Retry
		}
		return 0
	}
	if r.Never {
		return off()
	}
	if len(units) > 0 && r.Slots != nil {
		slot, ok, err := r.Slots.TryAcquire(ctx)
		switch {
		case err != nil:
			degrade(st, fmt.Sprintf("restart pending: restart slot: %v", err))
			return a.opts.Retry
		case !ok:
			pending(st, fmt.Sprintf("restart pending: waiting for a restart slot (at most %d nodes restart at once)", r.MaxConcurrent))
			return slotRetry()
		}
		defer func() {
			if err := r.Slots.Release(context.WithoutCancel(ctx), slot); err != nil {
				a.log.Warn("release restart slot", "slot", slot, "err", err)
			}
		}()
	}
	for _, unit := range units {
		res, err := rs.Restart(ctx, unit)
		if err != nil {
			a.restartErr, a.restartFailedAt = err.Error(), time.Now()
			degrade(st, a.restartErr)
			return RestartBackoff
		}
		a.log.Info("restarted", "unit", unit, "oldPID", res.OldPID, "newPID", res.NewPID, "duration", res.Duration)
		a.metrics.restarted()
	}
	a.restartErr = ""
	if err := a.opts.Root.ClearRestarts(); err != nil {
		degrade(st, fmt.Sprintf("record restart: %v", err))
		return a.opts.Retry
	}
	return 0
}

func pending(st *annotation.Status, msg string) {
	if st.State == annotation.StateReady {
		st.State = annotation.StatePending
	}
	st.Message = joinMessage(st.Message, msg)
}

func degrade(st *annotation.Status, msg string) {
	st.State = annotation.StateDegraded
	st.Message = joinMessage(st.Message, msg)
}

func joinMessage(a, b string) string {
	if a == "" {
		return annotation.OneLine(b)
	}
	return annotation.OneLine(strings.Join([]string{a, b}, "; "))
}

// Package systemd restarts container runtime units (containerd.service,
// docker.service, crio.service) through systemd's D-Bus API and checks the
// outcome: the job result must be "done" and the unit must be active again.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// Conn is the part of go-systemd's *dbus.Conn a Restarter uses. Dial returns
// the real one; systemdtest.Conn is an in-memory one for tests.
type Conn interface {
	// RestartUnitContext queues a restart job for the unit and sends the
	// job's result ("done", "failed", …) on ch once systemd removes the job.
	RestartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	// ListUnitsByNamesContext reports the load and active state of each
	// named unit, including units that do not exist (LoadState "not-found").
	ListUnitsByNamesContext(ctx context.Context, units []string) ([]sddbus.UnitStatus, error)
	// GetServicePropertyContext reads one property of the
	// org.freedesktop.systemd1.Service interface, such as MainPID.
	GetServicePropertyContext(ctx context.Context, service, propertyName string) (*sddbus.Property, error)
	// Close closes the connection.
	Close()
}

var _ Conn = (*sddbus.Conn)(nil)

// Dial connects to the system bus at address, for example
// "unix:path=/host/run/dbus/system_bus_socket", authenticates with EXTERNAL
// and returns a go-systemd connection that talks to the systemd instance
// owning org.freedesktop.systemd1 on that bus. ctx bounds connecting and
// authenticating only; the connection lives until Close.
//
// Unlike go-systemd's NewWithContext, Dial never falls back to another bus
// (such as this process's own /run/systemd/private): it uses address or fails.
func Dial(ctx context.Context, address string) (*sddbus.Conn, error) {
	conn, err := sddbus.NewConnection(func() (*godbus.Conn, error) {
		return dialBus(ctx, address)
	})
	if err != nil {
		return nil, fmt.Errorf("connect to system bus %s: %w", address, err)
	}
	return conn, nil
}

// dialBus opens one authenticated bus connection. It does not hand ctx to
// godbus: godbus.WithContext closes the connection when ctx ends, which would
// tie the connection's lifetime to a dial timeout.
func dialBus(ctx context.Context, address string) (*godbus.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	conn, err := godbus.Dial(address)
	if err != nil {
		return nil, err
	}
	// Closing the connection unblocks an Auth or Hello the bus never answers.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	err = conn.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))})
	if err == nil {
		err = conn.Hello()
	}
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Default timings of a Restarter.
const (
	DefaultActiveTimeout = 10 * time.Second
	DefaultPollInterval  = 50 * time.Millisecond
)

// Restarter restarts units through a Conn and checks that they come back.
type Restarter struct {
	Conn Conn
	// ActiveTimeout bounds the wait for the unit to become active after its
	// restart job finished; zero means DefaultActiveTimeout.
	ActiveTimeout time.Duration
	// PollInterval is how often the active state is read meanwhile; zero
	// means DefaultPollInterval.
	PollInterval time.Duration
}

// Result describes one successful restart.
type Result struct {
	Unit   string
	OldPID uint32 // MainPID before the restart (0 if the unit was not running)
	NewPID uint32 // MainPID once the unit is active again
	// Duration runs from queueing the restart job to the unit being active.
	Duration time.Duration
}

// JobError is returned when systemd finished a restart job with a result
// other than "done": "failed", "timeout", "canceled", "dependency", "skipped"
// or "invalid".
type JobError struct {
	Unit   string
	Result string // the job's result
	// ServiceResult is the service's Result property read after the job,
	// which says why it failed: "exit-code", "signal", "timeout",
	// "start-limit-hit", … It is empty when it could not be read.
	ServiceResult string
}

// Error implements error.
func (e *JobError) Error() string {
	if e.ServiceResult == "" {
		return fmt.Sprintf("restart %s: job result %q", e.Unit, e.Result)
	}
	return fmt.Sprintf("restart %s: job result %q, service result %q", e.Unit, e.Result, e.ServiceResult)
}

// Present returns those of units that systemd has loaded (LoadState
// "loaded"), in the order given. Units that do not exist ("not-found"),
// are masked or fail to parse are left out.
func (r *Restarter) Present(ctx context.Context, units []string) ([]string, error) {
	if len(units) == 0 {
		return nil, nil
	}
	statuses, err := r.Conn.ListUnitsByNamesContext(ctx, units)
	if err != nil {
		return nil, fmt.Errorf("list units %s: %w", strings.Join(units, " "), err)
	}
	// systemd answers one status per (valid) name, in order; Name is the
	// unit's primary name, which differs from the one asked for when that
	// is an alias, so match by position.
	if len(statuses) != len(units) {
		return nil, fmt.Errorf("list units %s: got %d statuses for %d names", strings.Join(units, " "), len(statuses), len(units))
	}
	var present []string
	for i, s := range statuses {
		if s.LoadState == "loaded" {
			present = append(present, units[i])
		}
	}
	return present, nil
}

// Restart restarts unit with mode "replace", waits for systemd's job result
// and requires "done" (anything else is a *JobError), then waits until the
// unit's ActiveState is "active". ctx should carry a deadline: it bounds the
// whole restart, and a unit whose start never completes (TimeoutStartSec=0)
// would otherwise be waited for forever. When ctx ends first the job may
// still be running in systemd.
func (r *Restarter) Restart(ctx context.Context, unit string) (Result, error) {
	res := Result{Unit: unit}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("restart %s: %w", unit, err)
	}
	pid, err := r.mainPID(ctx, unit)
	if err != nil {
		return res, fmt.Errorf("restart %s: %w", unit, err)
	}
	res.OldPID = pid

	start := time.Now()
	// Buffered: go-systemd sends the result while holding its job lock, so
	// an unread unbuffered channel would stall every later job.
	ch := make(chan string, 1)
	if _, err := r.Conn.RestartUnitContext(ctx, unit, "replace", ch); err != nil {
		return res, fmt.Errorf("restart %s: %w", unit, err)
	}
	select {
	case result := <-ch:
		if result != "done" {
			return res, &JobError{Unit: unit, Result: result, ServiceResult: r.serviceResult(ctx, unit)}
		}
	case <-ctx.Done():
		return res, fmt.Errorf("restart %s: no job result yet, the job may still be running: %w", unit, ctx.Err())
	}

	if err := r.waitActive(ctx, unit); err != nil {
		return res, fmt.Errorf("restart %s: %w", unit, err)
	}
	res.Duration = time.Since(start)
	if res.NewPID, err = r.mainPID(ctx, unit); err != nil {
		return res, fmt.Errorf("restart %s: %w", unit, err)
	}
	return res, nil
}

// waitActive polls the unit's ActiveState until it is "active", fails fast on
// "failed" and "inactive", and gives up after ActiveTimeout.
func (r *Restarter) waitActive(ctx context.Context, unit string) error {
	timeout, interval := r.ActiveTimeout, r.PollInterval
	if timeout <= 0 {
		timeout = DefaultActiveTimeout
	}
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last *sddbus.UnitStatus
	for {
		statuses, err := r.Conn.ListUnitsByNamesContext(ctx, []string{unit})
		switch {
		case err != nil && last != nil && ctx.Err() != nil:
			// The deadline passed during the query: report the last state.
			return fmt.Errorf("unit still %s (%s) after the restart job: %w", last.ActiveState, last.SubState, ctx.Err())
		case err != nil:
			return fmt.Errorf("read active state: %w", err)
		case len(statuses) != 1:
			return fmt.Errorf("read active state: got %d statuses", len(statuses))
		}
		last = &statuses[0]
		switch last.ActiveState {
		case "active":
			return nil
		case "failed", "inactive":
			return fmt.Errorf("unit is %s (%s) after the restart job", last.ActiveState, last.SubState)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("unit still %s (%s) after the restart job: %w", last.ActiveState, last.SubState, ctx.Err())
		}
	}
}

// mainPID reads the service's MainPID (0 when it has no running process).
func (r *Restarter) mainPID(ctx context.Context, unit string) (uint32, error) {
	p, err := r.Conn.GetServicePropertyContext(ctx, unit, "MainPID")
	if err != nil {
		return 0, fmt.Errorf("read MainPID: %w", err)
	}
	pid, ok := p.Value.Value().(uint32)
	if !ok {
		return 0, errors.New("read MainPID: value " + p.Value.String() + " is not a uint32")
	}
	return pid, nil
}

// StartedAt returns when the unit's main process last started
// (ExecMainStartTimestamp), or the zero time if it never did.
func (r *Restarter) StartedAt(ctx context.Context, unit string) (time.Time, error) {
	p, err := r.Conn.GetServicePropertyContext(ctx, unit, "ExecMainStartTimestamp")
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: read ExecMainStartTimestamp: %w", unit, err)
	}
	usec, ok := p.Value.Value().(uint64)
	if !ok {
		return time.Time{}, fmt.Errorf("%s: ExecMainStartTimestamp %s is not a uint64", unit, p.Value.String())
	}
	if usec == 0 {
		return time.Time{}, nil
	}
	return time.UnixMicro(int64(usec)), nil
}

// serviceResult reads the service's Result property, or "" if it cannot.
func (r *Restarter) serviceResult(ctx context.Context, unit string) string {
	p, err := r.Conn.GetServicePropertyContext(ctx, unit, "Result")
	if err != nil {
		return ""
	}
	result, _ := p.Value.Value().(string)
	return result
}

// Package systemdtest is an in-memory systemd D-Bus connection for tests of
// callers of package systemd.
package systemdtest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"

	"github.com/nodetrust/nodetrust/pkg/systemd"
)

// Unit configures one unit of a Conn. The zero value is a loaded, active
// unit whose restarts succeed.
type Unit struct {
	// LoadState is reported by ListUnitsByNamesContext; "" means "loaded".
	// Any other value makes RestartUnitContext fail as for a missing unit.
	LoadState string
	// ActiveState is the current active state; "" means "active".
	ActiveState string
	// MainPID is the current main PID. A restart with result "done" gives
	// the unit a new one, greater than every PID handed out before.
	MainPID uint32
	// Result is the job result a restart sends; "" means "done".
	Result string
	// ServiceResult is the service's Result property; "" means "success".
	ServiceResult string
	// StartedAt is when the main process started (ExecMainStartTimestamp);
	// a restart with result "done" sets it to the time it finished.
	StartedAt time.Time
	// Delay is how long a restart job runs before its result is sent.
	Delay time.Duration
	// Hang makes a restart queue its job but never send a result.
	Hang bool
	// Err, when set, is returned by RestartUnitContext; no job is queued.
	Err error
	// After lists the ActiveState values that successive
	// ListUnitsByNamesContext calls report once a restart job finished; the
	// last one stays. Empty means "active" after "done" and "failed" after
	// "failed"; other results leave the state as it was.
	After []string
}

// Conn is an in-memory systemd.Conn for tests of callers of this package: it knows a
// fixed set of units, records every call and answers restarts as each unit
// is configured. It is safe for concurrent use.
type Conn struct {
	mu      sync.Mutex
	units   map[string]*unit
	calls   []string
	nextPID uint32
	nextJob int
	closed  bool
}

type unit struct {
	Unit
	pending []string // ActiveState values still to report, from After
}

var _ systemd.Conn = (*Conn)(nil)

// New returns a Conn that knows units; every other unit is "not-found".
func New(units map[string]Unit) *Conn {
	f := &Conn{units: map[string]*unit{}, nextPID: 1000}
	for name, u := range units {
		f.Set(name, u)
	}
	return f
}

// Set adds or replaces a unit.
func (f *Conn) Set(name string, u Unit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u.LoadState == "" {
		u.LoadState = "loaded"
	}
	if u.ActiveState == "" {
		u.ActiveState = "active"
	}
	if u.MainPID >= f.nextPID {
		f.nextPID = u.MainPID + 1
	}
	f.units[name] = &unit{Unit: u}
}

// Calls returns every call so far, one string each, for example
// "RestartUnit containerd.service replace",
// "ListUnitsByNames containerd.service crio.service",
// "GetServiceProperty containerd.service MainPID" and "Close".
func (f *Conn) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Restarts returns the units RestartUnitContext was called for, in order.
func (f *Conn) Restarts() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var units []string
	for _, c := range f.calls {
		if rest, ok := strings.CutPrefix(c, "RestartUnit "); ok {
			units = append(units, strings.Fields(rest)[0])
		}
	}
	return units
}

// Closed reports whether Close was called.
func (f *Conn) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// RestartUnitContext implements systemd.Conn. It sends the job result on ch from
// another goroutine after the unit's Delay, as go-systemd does once systemd
// signals JobRemoved.
func (f *Conn) RestartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "RestartUnit "+name+" "+mode)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	u := f.units[name]
	if u == nil || u.LoadState != "loaded" {
		// What systemd answers, and go-systemd passes on, for a missing unit.
		return 0, godbus.Error{Name: "org.freedesktop.systemd1.NoSuchUnit", Body: []any{"Unit " + name + " not found."}}
	}
	if u.Err != nil {
		return 0, u.Err
	}
	f.nextJob++
	if u.Hang {
		return f.nextJob, nil
	}
	result := u.Result
	if result == "" {
		result = "done"
	}
	delay := u.Delay
	go func() {
		time.Sleep(delay)
		f.finish(u, result)
		if ch != nil {
			ch <- result
		}
	}()
	return f.nextJob, nil
}

// finish applies the state a restart job with result leaves the unit in.
func (f *Conn) finish(u *unit, result string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u.pending = append([]string(nil), u.After...)
	switch result {
	case "done":
		u.StartedAt = time.Now()
		u.MainPID = f.nextPID
		f.nextPID++
		if len(u.pending) == 0 {
			u.pending = []string{"active"}
		}
	case "failed":
		u.MainPID = 0
		if len(u.pending) == 0 {
			u.pending = []string{"failed"}
		}
	}
}

// ListUnitsByNamesContext implements systemd.Conn.
func (f *Conn) ListUnitsByNamesContext(ctx context.Context, units []string) ([]sddbus.UnitStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "ListUnitsByNames "+strings.Join(units, " "))
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]sddbus.UnitStatus, 0, len(units))
	for _, name := range units {
		u := f.units[name]
		if u == nil {
			out = append(out, sddbus.UnitStatus{Name: name, LoadState: "not-found", ActiveState: "inactive", SubState: "dead"})
			continue
		}
		if len(u.pending) > 0 {
			u.ActiveState, u.pending = u.pending[0], u.pending[1:]
		}
		out = append(out, sddbus.UnitStatus{Name: name, LoadState: u.LoadState, ActiveState: u.ActiveState, SubState: subState(u.ActiveState)})
	}
	return out, nil
}

// subState is the service sub-state that usually goes with an active state.
func subState(active string) string {
	switch active {
	case "active":
		return "running"
	case "activating":
		return "start"
	case "deactivating":
		return "stop"
	case "failed":
		return "failed"
	default:
		return "dead"
	}
}

// GetServicePropertyContext implements systemd.Conn. It knows MainPID, Result and
// ExecMainStartTimestamp; for units the Conn does not know they are 0,
// "success" and 0, as systemd reports for missing units.
func (f *Conn) GetServicePropertyContext(ctx context.Context, service, propertyName string) (*sddbus.Property, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "GetServiceProperty "+service+" "+propertyName)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	u := f.units[service]
	if u == nil {
		u = &unit{}
	}
	var v any
	switch propertyName {
	case "MainPID":
		v = u.MainPID
	case "ExecMainStartTimestamp":
		var usec uint64
		if !u.StartedAt.IsZero() {
			usec = uint64(u.StartedAt.UnixMicro())
		}
		v = usec
	case "Result":
		result := u.ServiceResult
		if result == "" {
			result = "success"
		}
		v = result
	default:
		return nil, fmt.Errorf("fake: property %s not supported", propertyName)
	}
	return &sddbus.Property{Name: propertyName, Value: godbus.MakeVariant(v)}, nil
}

// Close implements systemd.Conn.
func (f *Conn) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "Close")
	f.closed = true
}

// Package agent keeps a node's trust files in line with the labelled CA
// sources in the cluster (or in a directory of manifests). It is level
// triggered: every event — a source or Node change, a file drifting, a
// periodic resync — requests one sync, and a single worker recomputes the
// whole desired state and applies it with the same code as `nodetrust
// apply`. It never syncs before its Inputs are complete, so an empty cache
// can never read as "remove every CA".
//
// The package is the loop and its policies: drift watching, the restart of
// container runtimes after a trust store change, registry verification,
// health and metrics, uninstall. It knows no Kubernetes API types: it
// defines what it needs from outside (Inputs, Publisher, TaintRemover,
// Unpublisher), which pkg/cluster implements over the API and Dir over a
// manifest directory, and it reports a pkg/annotation Status. The status
// message is the sync report's own wording (reconcile.Report); what awaits a
// restart goes to a restart.Policy, whose outcome joins the status.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/restart"
	"github.com/nodetrust/nodetrust/pkg/source"
	"github.com/nodetrust/nodetrust/pkg/truststore"
)

// Inputs supplies the desired sources and the node's labels. Collect is only
// called once Wait returned nil.
type Inputs interface {
	// Wait blocks until the inputs are complete (caches synced) and starts
	// sending change notifications to notify.
	Wait(ctx context.Context, notify func()) error
	// Collect returns the current desired set and node labels (nil labels
	// ignore node selectors).
	Collect() (source.Set, labels.Set)
}

// Publisher reports a sync's outcome outside the node (Node annotations,
// Events). It returns an error when the report did not get through, so the
// agent retries it.
type Publisher interface {
	Publish(ctx context.Context, st annotation.Status, rep reconcile.Report) (Published, error)
}

// Published says what a Publish call changed outside the node.
type Published struct {
	Patched bool // the Node's annotations
	Events  int  // Kubernetes Events created
}

// Options configure an Agent.
type Options struct {
	Root      *hostfs.Root
	Inputs    Inputs
	Publisher Publisher // nil: nothing to publish (source-dir mode)
	Logger    *slog.Logger
	// Resync is the period of a full sync with no event; it also catches
	// drift that file notifications missed.
	Resync time.Duration
	// Retry is the delay before another sync after a failure to publish or
	// to apply everything.
	Retry time.Duration
	// Refresh overrides the trust store refresh (tests); see reconcile.Options.
	Refresh func(ctx context.Context, st truststore.Store, hostRoot string) error
	// NoDrift disables file notifications (tests of the resync path).
	NoDrift bool
	// Restarts restarts container runtimes after a trust store change; nil
	// only reports "restart pending".
	Restarts *restart.Options
	// ManageContainerdConfig: see reconcile.Options.
	ManageContainerdConfig bool
	// ContainerdConfig: see reconcile.Options.
	ContainerdConfig string
	// StartupTaint is a taint key removed from the Node after the first
	// complete sync (the Publisher must be a TaintRemover), so pods land on
	// a new node only once its CAs are in place.
	StartupTaint string
	// Verifier checks each registry of the applied sources after every
	// change and every VerifyInterval (default DefaultVerifyInterval); a
	// registry that does not verify degrades the node. nil: no verification.
	Verifier       Verifier
	VerifyInterval time.Duration
}

// Agent runs the sync loop.
type Agent struct {
	opts      Options
	restarts  *restart.Policy // handles pending restarts; keeps their failure backoff
	warnings  map[string]bool // logged already, so a resync does not repeat them
	log       *slog.Logger
	kick      chan struct{}
	ready     atomic.Bool
	metrics   *Metrics
	writers   writers
	untainted bool // the startup taint is off the Node
	verified  verified
}

// New returns an agent; call Run.
func New(opts Options) *Agent {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Resync == 0 {
		opts.Resync = 5 * time.Minute
	}
	if opts.Retry == 0 {
		opts.Retry = 5 * time.Second
	}
	if opts.VerifyInterval == 0 {
		opts.VerifyInterval = DefaultVerifyInterval
	}
	return &Agent{opts: opts, log: opts.Logger, kick: make(chan struct{}, 1), metrics: newMetrics(),
		restarts: restart.New(opts.Restarts, opts.Root, opts.Retry, opts.Logger)}
}

// Trigger requests a sync. Requests made while one is pending collapse into it.
func (a *Agent) Trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Ready reports whether a sync has completed since start.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Metrics returns the agent's metrics.
func (a *Agent) Metrics() *Metrics { return a.metrics }

// Run waits for the inputs, then syncs on every trigger until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("waiting for inputs to be complete")
	stop := a.logWaiting()
	err := a.opts.Inputs.Wait(ctx, a.Trigger)
	stop()
	if err != nil {
		return fmt.Errorf("wait for inputs: %w", err)
	}
	drift := a.watchDrift()
	if drift != nil {
		defer drift.close()
	}
	resync := time.NewTicker(a.opts.Resync)
	defer resync.Stop()
	var retry, verifyTick <-chan time.Time
	if a.opts.Verifier != nil {
		t := time.NewTicker(a.opts.VerifyInterval)
		defer t.Stop()
		verifyTick = t.C
	}
	a.Trigger()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
		case <-retry:
		case <-a.kick:
		case <-verifyTick:
			a.verified.due = true
		}
		retry = nil
		delay, ok := a.syncLocked(ctx, drift)
		if !ok {
			return nil
		}
		if delay > 0 {
			retry = time.After(delay)
		}
	}
}

// watchDrift starts the file notifications, or returns nil when they are
// off or unavailable.
func (a *Agent) watchDrift() *driftWatch {
	if a.opts.NoDrift {
		return nil
	}
	drift, err := newDriftWatch(a.opts.Root, a.Trigger, a.log)
	if err != nil {
		// e.g. the node's inotify instance limit: the resync still repairs drift.
		a.log.Warn("file watch unavailable; drift is repaired on resync only", "err", err, "resync", a.opts.Resync)
		return nil
	}
	return drift
}

// syncLocked runs one sync under the lock and points drift (when not nil)
// at the files owned afterwards. It returns when to sync again (0: on the
// next event), and false when ctx ended while it waited for the lock.
func (a *Agent) syncLocked(ctx context.Context, drift *driftWatch) (time.Duration, bool) {
	var delay time.Duration
	var owned []string
	if err := a.locked(ctx, func() { delay, owned = a.sync(ctx) }); err != nil {
		if ctx.Err() != nil {
			return 0, false
		}
		a.metrics.syncFailed()
		a.log.Error("sync failed", "err", err)
		delay = a.opts.Retry
	}
	if drift != nil && owned != nil {
		drift.update(owned)
	}
	return delay, true
}

// locked runs fn holding the host root's lock, so that no `nodetrust
// apply` (or second agent) writes at the same time. The agent takes it per
// sync, not for its lifetime: an operator's apply on the node waits for at
// most one sync (the agent's next sync then puts its own desired set back).
func (a *Agent) locked(ctx context.Context, fn func()) error {
	l, err := a.opts.Root.Lock(ctx, true, func(holder string) {
		a.log.Info("waiting for the lock on "+filepath.Join(a.opts.Root.Dir(), filepath.Dir(hostfs.LockPath))+" held by "+holder, "holder", holder)
	})
	if err != nil {
		return err
	}
	fn()
	return l.Unlock()
}

// sync runs one sync. It returns when to try again (0: everything went
// through) and the files nodetrust owns afterwards (nil when the sync could
// not run).
func (a *Agent) sync(ctx context.Context) (time.Duration, []string) {
	start := time.Now()
	set, nodeLabels := a.opts.Inputs.Collect()
	rep, err := reconcile.Sync(ctx, a.opts.Root, set, a.nodeOptions(nodeLabels))
	if err != nil {
		a.metrics.syncFailed()
		a.log.Error("sync failed", "err", err)
		return a.opts.Retry, nil
	}
	if fight := a.writers.note(rep.Recreated, time.Now()); fight != "" {
		rep.NodeProblems = append(rep.NodeProblems, fight)
	}
	st := StatusOf(rep)
	var verified []Verification
	if a.opts.Verifier != nil {
		verified = a.verify(ctx, rep, time.Now())
		st = withVerification(st, verified)
	}
	var retry time.Duration
	if rep.Restart.Any() {
		retry = a.restart(&st, a.restarts.Handle(ctx, due(rep)))
	}
	applied := rep.Converged()
	if applied && !a.ready.Swap(true) {
		a.log.Info("first sync complete: ready")
	}
	a.metrics.synced(rep, applied, time.Now())
	published := a.publish(ctx, st, rep, verified)
	if applied && !a.removeStartupTaint(ctx) {
		published = false // retried like a failed publish
	}
	a.logWarnings(rep)
	a.log.Info("sync", "state", st.State, "applied", st.Applied, "sources", st.Sources,
		"written", len(rep.Written), "removed", len(rep.Removed), "failed", len(rep.Failed),
		"rejected", len(rep.Rejected), "warnings", st.Warnings, "message", st.Message, "duration", time.Since(start))
	if retry == 0 && (!applied || !published) {
		retry = a.opts.Retry
	}
	return retry, rep.Owned
}

// publish reports a sync through the Publisher, if any, and the registries
// that do not verify. It returns false when the status did not get through
// and must be published again.
func (a *Agent) publish(ctx context.Context, st annotation.Status, rep reconcile.Report, verified []Verification) bool {
	if a.opts.Publisher == nil {
		return true
	}
	pub, err := a.opts.Publisher.Publish(ctx, st, rep)
	if err != nil {
		a.log.Warn("publish node status", "err", err)
	}
	a.metrics.published(pub)
	if vp, ok := a.opts.Publisher.(verificationPublisher); ok && verified != nil {
		if _, err := vp.PublishVerification(ctx, rep, verified); err != nil {
			a.log.Warn("publish verification events", "err", err)
		}
	}
	return err == nil
}

// logWarnings logs each warning once while it lasts.
func (a *Agent) logWarnings(rep reconcile.Report) {
	current := map[string]bool{}
	for _, w := range rep.WarningMessages() {
		current[w] = true
	}
	for w := range current {
		if !a.warnings[w] {
			a.log.Warn("warning", "warning", w)
		}
	}
	a.warnings = current
}

// StatusOf derives the node's status from a sync report: Degraded, with the
// report's problems as the message, when it has any.
func StatusOf(rep reconcile.Report) annotation.Status {
	st := annotation.Status{State: annotation.StateReady, Applied: rep.Hash, Sources: len(rep.Applied), Warnings: len(rep.WarningMessages())}
	if msg := rep.ProblemSummary(); msg != "" {
		st.State, st.Message = annotation.StateDegraded, annotation.OneLine(msg)
	}
	return st
}

// runtimeVersioner is an Inputs that knows the node's container runtime
// version (the Node's status.nodeInfo).
type runtimeVersioner interface{ RuntimeVersion() string }

// nodeOptions are the reconcile.Options of one sync. The containerd version is
// the kubelet's report for the Node, when the runtime is containerd.
func (a *Agent) nodeOptions(nodeLabels labels.Set) reconcile.Options {
	opts := reconcile.Options{
		NodeLabels: nodeLabels, Refresh: a.opts.Refresh,
		ManageContainerdConfig: a.opts.ManageContainerdConfig, ContainerdConfig: a.opts.ContainerdConfig,
	}
	if rv, ok := a.opts.Inputs.(runtimeVersioner); ok {
		if v, ok := strings.CutPrefix(rv.RuntimeVersion(), "containerd://"); ok {
			opts.ContainerdVersion = v
		}
	}
	return opts
}

// TaintRemover removes a taint from the agent's Node; cluster.Cluster
// implements it.
type TaintRemover interface {
	RemoveTaint(ctx context.Context, key string) (bool, error)
}

// removeStartupTaint removes Options.StartupTaint once; it reports false
// when that must be tried again.
func (a *Agent) removeStartupTaint(ctx context.Context) bool {
	if a.opts.StartupTaint == "" || a.untainted {
		return true
	}
	r, ok := a.opts.Publisher.(TaintRemover)
	if !ok {
		return true
	}
	done, err := r.RemoveTaint(ctx, a.opts.StartupTaint)
	if err != nil {
		a.log.Warn("remove the startup taint", "taint", a.opts.StartupTaint, "err", err)
		return false
	}
	if done {
		a.untainted = true
		a.log.Info("startup taint removed: the node takes pods", "taint", a.opts.StartupTaint)
	}
	return done
}

// waiter is an Inputs that can say why Wait has not returned yet (cluster:
// the API server cannot be reached or refuses the agent).
type waiter interface{ Waiting() string }

// waitLogEvery is how often a Wait that does not return is logged.
var waitLogEvery = 30 * time.Second

// logWaiting logs, at warning level, after 5 s and then every waitLogEvery,
// why the inputs are not complete yet, until the returned stop is called: an
// agent that cannot reach the API server says so, instead of nothing while
// its readiness probe fails.
func (a *Agent) logWaiting() (stop func()) {
	w, ok := a.opts.Inputs.(waiter)
	if !ok {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTimer(min(5*time.Second, waitLogEvery))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if msg := w.Waiting(); msg != "" {
					a.log.Warn("not ready: " + msg)
				}
				t.Reset(waitLogEvery)
			}
		}
	}()
	return sync.OnceFunc(func() { close(done) })
}

// verificationPublisher reports registries that do not verify (cluster:
// Events on the sources that name them).
type verificationPublisher interface {
	PublishVerification(ctx context.Context, rep reconcile.Report, results []Verification) (int, error)
}

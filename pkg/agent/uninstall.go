package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// Unpublisher removes what Publish put outside the node.
type Unpublisher interface {
	Unpublish(ctx context.Context) error
}

// Uninstall removes everything nodetrust wrote on the node: its files, its
// merges into other files (containerd's config and hosts.toml files get
// their originals back) and the ownership record, then the Node's
// annotations. Restoring files restarts nothing (what the runtimes run is
// equivalent: a certs.d without nodetrust's files); only a host-trust
// anchor leaving the OS trust store restarts the runtimes, as any trust
// store change does. It retries until everything is gone, is then ready,
// and returns when ctx ends, so a DaemonSet running it completes its
// rollout once every node is clean.
func (a *Agent) Uninstall(ctx context.Context) error {
	for {
		var err error
		if lerr := a.locked(ctx, func() { err = a.uninstall(ctx) }); lerr != nil {
			err = lerr
		}
		if err == nil {
			if !a.ready.Swap(true) {
				a.log.Info("uninstalled: nothing of nodetrust is left on the node")
			}
			<-ctx.Done()
			return nil
		}
		a.log.Error("uninstall", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("uninstall: %w", err)
		case <-time.After(a.opts.Retry):
		}
	}
}

func (a *Agent) uninstall(ctx context.Context) error {
	rep, err := reconcile.Sync(ctx, a.opts.Root, source.Set{}, a.nodeOptions(nil))
	if err != nil {
		return err
	}
	a.log.Info("uninstall", "removed", len(rep.Removed), "failed", len(rep.Failed))
	if err := errors.Join(append(rep.Failed, rep.RefreshErr)...); err != nil {
		return err
	}
	if len(rep.Owned) > 0 {
		return fmt.Errorf("still owned: %v", rep.Owned)
	}
	if rep.Restart.Any() {
		// Removed host-trust anchors stay trusted by running runtimes until
		// they restart: restart them as after any trust store change.
		st := annotation.Status{State: annotation.StateReady}
		if retry := a.restart(&st, a.restarts.Leave(ctx, due(rep))); retry > 0 || st.State != annotation.StateReady {
			return errors.New(st.Message)
		}
	}
	if u, ok := a.opts.Publisher.(Unpublisher); ok {
		return u.Unpublish(ctx)
	}
	return nil
}

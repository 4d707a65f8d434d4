package agent

import (
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/pkg/annotation"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/restart"
)

// due is what of rep the restart policy handles.
func due(rep reconcile.Report) restart.Due {
	return restart.Due{Pending: rep.Restart, Runtimes: rep.Runtimes, Reason: rep.RestartReason()}
}

// restart puts the outcome of the restart policy into st and the metrics.
// It returns when to try again, or 0.
func (a *Agent) restart(st *annotation.Status, o restart.Outcome) time.Duration {
	for range o.Restarted {
		a.metrics.restarted()
	}
	switch o.State {
	case restart.Waiting:
		pending(st, o.Message)
	case restart.Failed:
		degrade(st, o.Message)
	}
	return o.Retry
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

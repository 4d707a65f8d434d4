package agent

import (
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/pkg/node"
	"github.com/nodetrust/nodetrust/pkg/restart"
)

// due is what of rep the restart policy handles.
func due(rep node.Report) restart.Due {
	return restart.Due{Pending: rep.Restart, Runtimes: rep.Runtimes, Reason: rep.RestartReason()}
}

// restart puts the outcome of the restart policy into st and the metrics.
// It returns when to try again, or 0.
func (a *Agent) restart(st *Status, o restart.Outcome) time.Duration {
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

func pending(st *Status, msg string) {
	if st.State == StateReady {
		st.State = StatePending
	}
	st.Message = joinMessage(st.Message, msg)
}

func degrade(st *Status, msg string) {
	st.State = StateDegraded
	st.Message = joinMessage(st.Message, msg)
}

func joinMessage(a, b string) string {
	if a == "" {
		return oneLine(b)
	}
	return oneLine(strings.Join([]string{a, b}, "; "))
}

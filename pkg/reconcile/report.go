package reconcile

import (
	"fmt"
	"strings"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/plan"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// Report says what a Sync found and did. Its methods word it once for
// every reader: `nodetrust apply`'s text, the agent's status message and
// its logs.
type Report struct {
	// Applied are the sources that apply on this node, including those kept
	// from the last apply because they are now rejected or unreadable.
	Applied     []source.Source
	Kept        []source.ID // of Applied, those kept from the last apply
	NotSelected int
	Rejected    []*source.Rejection
	InputErrors []error
	Warnings    []plan.Warning
	Written     []string
	Removed     []string
	// Recreated are the written files that someone else had deleted.
	Recreated  []string
	Failed     []error
	Refreshed  bool
	RefreshErr error
	Hash       string
	// NodeProblems keep the node from using what was applied, such as a
	// containerd that reads no hosts.toml. They make an agent's node
	// Degraded; they are not failed writes.
	NodeProblems []string
	// NodeWarnings are about the node and change nothing.
	NodeWarnings []string
	// Restart is what awaits a restart: the OS trust store changed (the
	// container runtimes load it once per process), or units whose config
	// changed since their last restart by nodetrust (containerd.service
	// after a config_path edit).
	Restart hostfs.Pending
	// Runtimes: a container runtime's config directory exists on the node.
	Runtimes bool
	// Containerd says which containerd layout and hosts directory were
	// found, when containerd is present.
	Containerd *ContainerdInfo
	// Owned lists every file nodetrust owns on the node after the sync.
	Owned []string
}

// OK reports whether everything applied: the sync converged and no source
// was rejected.
func (r Report) OK() bool { return r.Converged() && len(r.Rejected) == 0 }

// Converged reports whether the node holds the desired state as far as the
// inputs allow: every input was read, every file written or removed, the
// trust store refreshed. Rejected sources (kept at their last applied
// version) and node problems do not stop it.
func (r Report) Converged() bool {
	return len(r.InputErrors) == 0 && len(r.Failed) == 0 && r.RefreshErr == nil
}

// Changed reports whether the sync wrote or removed anything.
func (r Report) Changed() bool { return len(r.Written)+len(r.Removed) > 0 }

// ProblemKind is what kind of problem a Problem is.
type ProblemKind int

// The kinds of problems, in the order Report.Problems lists them.
const (
	ProblemRejected   ProblemKind = iota // a source was rejected
	ProblemUnreadable                    // an input could not be read
	ProblemFailed                        // a file was not written or removed
	ProblemRefresh                       // the trust store refresh failed
	ProblemNode                          // the node does not use what was applied
)

// problemWords say each kind of problem: in a status message, and as a line
// of `nodetrust apply`'s text. %s is the problem's detail.
var problemWords = [...]struct{ status, line string }{
	ProblemRejected:   {"rejected %s", "rejected %s"},
	ProblemUnreadable: {"unreadable input: %s", "unreadable %s (nothing is removed while input is unreadable)"},
	ProblemFailed:     {"failed %s", "failed %s"},
	ProblemRefresh:    {"trust store refresh failed: %s", "failed trust store refresh: %s"},
	ProblemNode:       {"%s", "degraded node: %s"},
}

// Problem is one thing that keeps the sync from having applied everything,
// or the node from using what was applied.
type Problem struct {
	Kind   ProblemKind
	Detail string // the error, or the node problem
}

// String says the problem as part of a status message.
func (p Problem) String() string { return fmt.Sprintf(problemWords[p.Kind].status, p.Detail) }

// Line says the problem as a line of `nodetrust apply`'s text, without the
// newline.
func (p Problem) Line() string { return fmt.Sprintf(problemWords[p.Kind].line, p.Detail) }

// Problems lists the report's problems: rejections, unreadable inputs,
// failed targets, a failed refresh, then node problems.
func (r Report) Problems() []Problem {
	var ps []Problem
	add := func(k ProblemKind, detail string) { ps = append(ps, Problem{k, detail}) }
	for _, rej := range r.Rejected {
		add(ProblemRejected, rej.Error())
	}
	for _, e := range r.InputErrors {
		add(ProblemUnreadable, e.Error())
	}
	for _, f := range r.Failed {
		add(ProblemFailed, f.Error())
	}
	if r.RefreshErr != nil {
		add(ProblemRefresh, r.RefreshErr.Error())
	}
	for _, p := range r.NodeProblems {
		add(ProblemNode, p)
	}
	return ps
}

// ProblemSummary says the problems in one message ("2 problem(s): …; …"),
// or "" when there are none.
func (r Report) ProblemSummary() string {
	ps := r.Problems()
	if len(ps) == 0 {
		return ""
	}
	words := make([]string, len(ps))
	for i, p := range ps {
		words[i] = p.String()
	}
	return fmt.Sprintf("%d problem(s): %s", len(ps), strings.Join(words, "; "))
}

// WarningMessages says each warning, about a source ("Secret ns/name: …")
// or about the node ("node: …"); they change nothing.
func (r Report) WarningMessages() []string {
	var ws []string
	for _, w := range r.Warnings {
		ws = append(ws, w.ID.String()+": "+w.Message)
	}
	for _, w := range r.NodeWarnings {
		ws = append(ws, "node: "+w)
	}
	return ws
}

// restartTrustStore says why a trust store change awaits a restart.
const restartTrustStore = "the OS trust store changed; restart the container runtimes to load it"

// restartConfig says why units whose config changed await a restart.
func restartConfig(units ...string) string {
	return "the config of " + strings.Join(units, ", ") + " changed; restart it to load it"
}

// RestartReasons says, one each, what awaits a restart and why: the OS
// trust store, then each unit whose config changed.
func (r Report) RestartReasons() []string {
	var why []string
	if r.Restart.TrustStore {
		why = append(why, restartTrustStore)
	}
	for _, u := range r.Restart.Units {
		why = append(why, restartConfig(u))
	}
	return why
}

// RestartReason says in one message why the node awaits a restart, the
// units whose config changed named together; "" when nothing awaits one.
func (r Report) RestartReason() string {
	var why []string
	if r.Restart.TrustStore {
		why = append(why, restartTrustStore)
	}
	if len(r.Restart.Units) > 0 {
		why = append(why, restartConfig(r.Restart.Units...))
	}
	return strings.Join(why, "; ")
}

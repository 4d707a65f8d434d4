package node

import (
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/plan"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// Report says what a Sync found and did.
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

// OK reports whether everything applied: no rejection, no unreadable
// input, no failed target and no failed refresh.
func (r Report) OK() bool {
	return len(r.Rejected) == 0 && len(r.InputErrors) == 0 && len(r.Failed) == 0 && r.RefreshErr == nil
}

// Changed reports whether the sync wrote or removed anything.
func (r Report) Changed() bool { return len(r.Written)+len(r.Removed) > 0 }

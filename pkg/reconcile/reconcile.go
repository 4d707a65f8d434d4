// Package reconcile makes one host root match a desired set of sources, and
// only orchestrates: it reads facts about the node (present runtimes, OS
// trust store, its containerd through package containerd), keeps the last
// applied version of sources that are now rejected or unreadable, plans
// the file tree (package plan), applies it through hostfs and reports what
// keeps the runtimes from using it. Both `nodetrust apply` and the agent
// sync through Sync. ConfigFS is the host root as an fs.FS for reading
// configuration, as the runtimes would.
package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/plan"
	"github.com/nodetrust/nodetrust/pkg/source"
	"github.com/nodetrust/nodetrust/pkg/truststore"
)

// Options configure a Sync.
type Options struct {
	// NodeLabels select sources by node selector; nil ignores selectors.
	NodeLabels labels.Set
	// Refresh rebuilds the OS trust store; nil uses Store.Refresh, which
	// runs the OS command chrooted into the host root.
	Refresh func(ctx context.Context, st truststore.Store, hostRoot string) error
	// ManageContainerdConfig sets containerd's CRI registry config_path
	// when it would not read the hosts.toml files nodetrust writes, and
	// restores the original file once nodetrust writes none.
	ManageContainerdConfig bool
	// ContainerdVersion is the running containerd's version
	// (containerd.ParseVersion); "" judges it from the config's format.
	ContainerdVersion string
	// ContainerdConfig overrides the discovery of containerd's main config
	// file (a path on the node).
	ContainerdConfig string
}

// Sync makes root match set. The error is for a sync that could not run at
// all (unreadable ownership record), with an empty Report, or whose record
// could not be saved (hostfs.ErrNotRecorded), with the Report of what it
// did; everything else is in the Report.
func Sync(ctx context.Context, root *hostfs.Root, set source.Set, opts Options) (Report, error) {
	st, err := root.LoadState()
	if err != nil {
		return Report{}, err
	}
	rep := Report{Rejected: set.Rejected, InputErrors: set.Errors}
	effective, kept, err := withKept(set, st.Applied)
	if err != nil {
		return Report{}, err
	}
	rep.Kept = kept
	facts, cd := detect(root, opts, st)
	p := plan.Build(effective, facts.Facts)
	rep.Applied, rep.NotSelected, rep.Warnings, rep.Hash = p.Sources, p.NotSelected, p.Warnings, p.Hash
	rep.Runtimes = facts.Containerd || facts.Docker || facts.Containers
	rep.NodeWarnings = append(rep.NodeWarnings, facts.Notes...)
	if facts.Talos && len(p.Sources) > 0 {
		rep.NodeProblems = append(rep.NodeProblems, containerd.TalosProblem(firstRegistry(p.Sources)))
	}
	applied, err := json.Marshal(storeAll(p.Sources))
	if err != nil {
		return Report{}, err
	}
	files, uses := p.Files, usesContainerdHosts(p)
	if cd != nil {
		info := cd.node.Info()
		rep.Containerd = &info
		if opts.ManageContainerdConfig && uses {
			var problem string
			if files, problem = cd.configEdit(st, files); problem != "" {
				rep.NodeProblems = append(rep.NodeProblems, problem)
			}
		}
	}
	if err := apply(ctx, root, st, files, applied, facts, opts, &rep); err != nil {
		return rep, err // the record was not saved: say what was done anyway
	}
	if cd != nil && uses {
		cd.check(&rep, p)
	}
	if facts.Containers {
		rep.checkContainersOrder(root, p)
	}
	return rep, nil
}

// detect reads the facts of the node under root, with its containerd (nil
// when it has none).
func detect(root *hostfs.Root, opts Options, st hostfs.State) (Facts, *containerdSync) {
	facts := Detect(root)
	facts.NodeLabels = opts.NodeLabels
	cd := detectContainerd(root, &facts, opts, st)
	if facts.Talos {
		facts.Containerd, facts.Docker, facts.Containers = false, false, false
	}
	return facts, cd
}

// apply applies files and says in rep what it did.
func apply(ctx context.Context, root *hostfs.Root, st hostfs.State, files []hostfs.File, applied []byte, facts Facts, opts Options, rep *Report) error {
	res, err := root.Apply(st, files, applied, hostfs.Options{
		Mergers: map[string]hostfs.Merger{
			containerd.MergerName:       containerd.HostsMerger{},
			containerd.ConfigMergerName: containerd.ConfigMerger{},
		},
		Refresh: refresher(ctx, root, facts, opts),
	})
	rep.Written, rep.Removed, rep.Failed, rep.Recreated = res.Written, res.Removed, res.Failed, res.Recreated
	rep.Refreshed, rep.RefreshErr, rep.Owned = res.Refreshed, res.RefreshErr, res.Owned
	rep.Restart = res.Pending
	return err
}

func firstRegistry(ss []source.Source) string {
	for _, s := range ss {
		if len(s.Registries) > 0 {
			return string(s.Registries[0])
		}
	}
	return "REGISTRY"
}

func usesContainerdHosts(p plan.Plan) bool {
	for _, f := range p.Files {
		if f.Merger == containerd.MergerName {
			return true
		}
	}
	return false
}

// withKept adds to the valid sources the last applied version of every
// source that is now rejected, or, when the set is incomplete, of every
// source that was not read.
func withKept(set source.Set, applied json.RawMessage) ([]source.Source, []source.ID, error) {
	if set.Complete() && len(set.Rejected) == 0 {
		return set.Sources, nil, nil // nothing can be kept: skip decoding the record
	}
	var prev []source.Stored
	if len(applied) > 0 {
		if err := json.Unmarshal(applied, &prev); err != nil {
			return nil, nil, fmt.Errorf("ownership record: applied sources: %w", err)
		}
	}
	valid := make(map[source.ID]bool, len(set.Sources))
	for _, s := range set.Sources {
		valid[s.ID] = true
	}
	rejected := make(map[source.ID]bool, len(set.Rejected))
	for _, r := range set.Rejected {
		rejected[r.ID] = true
	}
	out := append([]source.Source(nil), set.Sources...)
	var kept []source.ID
	for _, st := range prev {
		if valid[st.ID] || (!rejected[st.ID] && set.Complete()) {
			continue
		}
		s, err := st.Source()
		if err != nil {
			return nil, nil, err
		}
		s.NodeSelector = nil // it applied here last time; keep it as it was
		out = append(out, s)
		kept = append(kept, st.ID)
	}
	return out, kept, nil
}

func storeAll(ss []source.Source) []source.Stored {
	out := make([]source.Stored, len(ss))
	for i, s := range ss {
		out[i] = s.Store()
	}
	return out
}

// Detect reads the facts of the node under root: which runtimes are
// present, and its OS trust store.
func Detect(root *hostfs.Root) Facts {
	f := Facts{Facts: plan.Facts{
		Containerd: root.IsDir(plan.ContainerdDir),
		Docker:     root.IsDir(plan.DockerDir),
		Containers: root.IsDir(plan.ContainersDir),
	}}
	// A runtime directory that is a symlink is not written through (hostfs
	// follows no symlink below the root): say so rather than call the
	// runtime absent.
	for _, d := range []string{plan.ContainerdDir, plan.DockerDir, plan.ContainersDir} {
		if target, err := root.Readlink(d); err == nil {
			f.Notes = append(f.Notes, fmt.Sprintf("/%s is a symlink to %s: nodetrust writes through no symlink, so nothing is written there; replace it by the directory itself, or bind-mount it", d, target))
		}
	}
	// A daemon installed without its config directory still reads it.
	if !f.Docker && anyFile(root, "usr/bin/dockerd", "usr/sbin/dockerd") {
		f.Docker, f.DockerBase = true, "etc"
	}
	if !f.Containers && anyFile(root, "usr/bin/crio", "usr/bin/podman", "usr/bin/skopeo") {
		f.Containers, f.ContainersBase = true, "etc"
	}
	data, err := root.ReadFileInRoot(truststore.OSReleasePath)
	if errors.Is(err, fs.ErrNotExist) { // os-release(5): fall back to /usr/lib
		data, err = root.ReadFileInRoot("usr/lib/os-release")
	}
	if err != nil {
		f.TrustStoreErr = fmt.Errorf("host trust is unsupported: cannot read /%s: %w", truststore.OSReleasePath, err)
		return f
	}
	switch osID(data) {
	case containerd.Talos:
		f.Talos = true
	case "rhcos", "scos": // OpenShift's node-ca owns /etc/docker/certs.d
		if f.Docker {
			f.Docker = false
			f.Notes = append(f.Notes, "OpenShift node: /etc/docker/certs.d is left to OpenShift's node-ca, which deletes directories it did not write; CRI-O reads /etc/containers/certs.d first")
		}
	}
	st, err := truststore.Detect(data)
	if err != nil {
		f.TrustStoreErr = err
		return f
	}
	f.TrustStore = &st
	return f
}

// Facts are plan.Facts plus what only the sync acts on.
type Facts struct {
	plan.Facts
	// Talos: nothing can be written (read-only /etc, files removed).
	Talos bool
	// Notes become node warnings.
	Notes []string
}

func anyFile(root *hostfs.Root, rels ...string) bool {
	for _, rel := range rels {
		if root.ExistsInRoot(rel) {
			return true
		}
	}
	return false
}

// osID is os-release's ID, unquoted.
func osID(data []byte) string {
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "ID="); ok {
			return strings.ToLower(strings.Trim(v, `"'`))
		}
	}
	return ""
}

func refresher(ctx context.Context, root *hostfs.Root, f Facts, opts Options) func() error {
	if f.TrustStore == nil {
		return nil
	}
	st := *f.TrustStore
	return func() error {
		if opts.Refresh != nil {
			return opts.Refresh(ctx, st, root.Dir())
		}
		return st.Refresh(ctx, root.Dir())
	}
}

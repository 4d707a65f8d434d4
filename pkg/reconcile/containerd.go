package reconcile

import (
	"fmt"
	"path"
	"strings"

	"github.com/nodetrust/nodetrust/pkg/certsd"
	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/plan"
)

// ContainerdInfo says what nodetrust found about the node's containerd.
type ContainerdInfo = containerd.Info

// containerdSync is the containerd of one sync: the node's, as detected
// before the apply, and the foreign hosts.toml files found then.
type containerdSync struct {
	node    *containerd.Node
	foreign containerd.Foreign
	edited  bool // the apply edits containerd's config
}

// detectContainerd finds the node's containerd and sets in f where
// hosts.toml files go and which foreign ones exist. It returns nil when
// the node has no containerd.
func detectContainerd(root *hostfs.Root, f *Facts, opts Options, st hostfs.State) *containerdSync {
	n := containerd.Detect(containerdRoot(root), containerd.Options{
		Version: opts.ContainerdVersion, Config: opts.ContainerdConfig, EtcDir: f.Containerd})
	f.Containerd = n != nil
	if n == nil {
		return nil
	}
	f.Notes = append(f.Notes, n.Notes()...)
	f.ContainerdHosts = n.HostsDir()
	c := &containerdSync{node: n}
	c.foreign = n.ScanHosts(func(rel string) bool {
		o, ok := st.Files[rel]
		return ok && o.Merge == nil
	})
	f.HostsFiles = c.foreign.URLs
	return c
}

// configEdit adds to files the edit of containerd's config that
// --manage-containerd-config makes, and returns the problem of an edit
// refused.
func (c *containerdSync) configEdit(st hostfs.State, files []hostfs.File) ([]hostfs.File, string) {
	edited := ""
	for p, o := range st.Files {
		if o.Restart == containerd.Unit {
			edited = p
			break
		}
	}
	f, problem := c.node.ConfigEdit(edited)
	if f == nil {
		return files, problem
	}
	c.edited = true
	return append(files[:len(files):len(files)], *f), problem
}

// check reports, after the apply, what keeps containerd from reading the
// hosts.toml files of p.
func (c *containerdSync) check(r *Report, p plan.Plan) {
	planned := containerd.Planned{CAs: map[string][]string{}, Edited: c.edited}
	for _, s := range p.Sources {
		for _, reg := range s.Registries {
			planned.CAs[string(reg)] = append(planned.CAs[string(reg)], plan.FileName(s.ID))
		}
	}
	for _, f := range p.Files {
		if f.Merger == containerd.MergerName {
			planned.HostsFiles = append(planned.HostsFiles, f.Path)
		}
	}
	found := c.node.Check(planned, c.foreign)
	r.NodeProblems = append(r.NodeProblems, found.Problems...)
	r.NodeWarnings = append(r.NodeWarnings, found.Warnings...)
}

// checkContainersOrder reports a directory containers/image (CRI-O, podman,
// skopeo) reads before nodetrust's: the first existing <dir>/<registry>
// wins and nothing is merged.
func (r *Report) checkContainersOrder(root *hostfs.Root, p plan.Plan) {
	if !root.IsDir(certsd.Rel(certsd.ContainersRootful)) {
		return // nothing is read before nodetrust's
	}
	seen := map[string]bool{}
	prefix := certsd.Rel(certsd.Containers) + "/"
	for _, f := range p.Files {
		rest, ok := strings.CutPrefix(f.Path, prefix)
		if !ok {
			continue
		}
		reg := strings.SplitN(rest, "/", 2)[0]
		if seen[reg] {
			continue
		}
		seen[reg] = true
		if first := path.Join(certsd.Rel(certsd.ContainersRootful), reg); root.IsDir(first) {
			r.NodeProblems = append(r.NodeProblems, fmt.Sprintf(
				"containers/image (CRI-O, podman, skopeo) reads /%s before /%s%s and uses only the first that exists, so nodetrust's CA for %s is not used; copy it into /%s or remove that directory",
				first, prefix, reg, reg, first))
		}
	}
}

// ContainerdLookup says where the containerd under root reads hosts.toml
// files (what Sync writes to), as `nodetrust check` resolves a registry; ok
// is false when the node has no containerd. version and config are as in
// Options.
func ContainerdLookup(root *hostfs.Root, version, config string) (r containerd.Reading, ok bool) {
	n := containerd.Detect(containerdRoot(root), containerd.Options{
		Version: version, Config: config, EtcDir: root.IsDir(plan.ContainerdDir)})
	if n == nil {
		return containerd.Reading{}, false
	}
	return n.Lookup(), true
}

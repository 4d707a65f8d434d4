// Package node makes one host root match a desired set of sources: it reads
// facts about the node (present runtimes, OS trust store), keeps the last
// applied version of sources that are now rejected or unreadable, plans the
// file tree and applies it through hostfs. Both `nodetrust apply` and the
// agent sync through Sync.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"time"

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
}

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
	Failed      []error
	Refreshed   bool
	RefreshErr  error
	Hash        string
	// NodeProblems keep the node from using what was applied, such as a
	// containerd that reads no hosts.toml. They make an agent's node
	// Degraded; they are not failed writes.
	NodeProblems []string
	// NodeWarnings are about the node and change nothing.
	NodeWarnings []string
	// RestartPending: the OS trust store changed and the container
	// runtimes, which load it once per process, were not restarted since.
	RestartPending bool
	// Restart lists units whose config changed since their last restart
	// by nodetrust (containerd.service after a config_path edit).
	Restart []string
	// RestartSince is when the last change awaiting a restart was made.
	RestartSince time.Time
	// Runtimes: a container runtime's config directory exists on the node.
	Runtimes bool
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
	facts := Detect(root)
	facts.NodeLabels = opts.NodeLabels
	p := plan.Build(effective, facts)
	rep.Applied, rep.NotSelected, rep.Warnings, rep.Hash = p.Sources, p.NotSelected, p.Warnings, p.Hash
	rep.Runtimes = facts.Containerd || facts.Docker || facts.Containers

	applied, err := json.Marshal(storeAll(p.Sources))
	if err != nil {
		return Report{}, err
	}
	files := p.Files
	config := &configReader{root: root}
	if opts.ManageContainerdConfig && facts.Containerd && usesContainerdHosts(p) {
		f, problem := containerdConfig(config, st)
		if problem != "" {
			rep.NodeProblems = append(rep.NodeProblems, problem)
		}
		if f != nil {
			files = append(files[:len(files):len(files)], *f)
			config.done = false // the apply may edit what was read
		}
	}
	res, err := root.Apply(st, files, applied, hostfs.Options{
		Mergers: map[string]hostfs.Merger{
			containerd.MergerName:       containerd.HostsMerger{},
			containerd.ConfigMergerName: containerd.ConfigMerger{},
		},
		Refresh: refresher(ctx, root, facts, opts),
	})
	rep.Written, rep.Removed, rep.Failed = res.Written, res.Removed, res.Failed
	rep.Refreshed, rep.RefreshErr, rep.Owned = res.Refreshed, res.RefreshErr, res.Owned
	rep.RestartPending, rep.Restart, rep.RestartSince = res.RestartPending, res.Restart, res.RestartSince
	if err != nil { // the record was not saved: say what was done anyway
		return rep, err
	}
	if usesContainerdHosts(p) {
		rep.checkContainerd(config)
		rep.checkShadows(root, p)
	}
	return rep, nil
}

func usesContainerdHosts(p plan.Plan) bool {
	for _, f := range p.Files {
		if f.Merger == containerd.MergerName {
			return true
		}
	}
	return false
}

// checkContainerd reports a containerd that would not read the hosts.toml
// files just written.
func (r *Report) checkContainerd(config *configReader) {
	reg, err := config.read()
	switch {
	case errors.Is(err, fs.ErrNotExist) && len(reg.Files) == 0:
		r.NodeWarnings = append(r.NodeWarnings, fmt.Sprintf("cannot check containerd's config_path: no /%s; containerd's built-in default reads no hosts.toml on 1.x", containerd.ConfigFile))
	case err != nil:
		r.NodeProblems = append(r.NodeProblems, err.Error())
	case reg.Problem() != "":
		r.NodeProblems = append(r.NodeProblems, reg.Problem())
	case reg.Warning() != "":
		r.NodeWarnings = append(r.NodeWarnings, reg.Warning())
	}
}

// containerdConfig returns the containerd config file nodetrust edits so
// that containerd reads hosts.toml: the one it edited before, or else the
// last file with the CRI plugin section, whose config_path wins on
// containerd 1.x and 2.x alike (the main config when none has one, created
// when missing). It returns nil when the config needs no edit or cannot take
// one; checkContainerd then reports why.
func containerdConfig(config *configReader, st hostfs.State) (*hostfs.File, string) {
	file := func(rel string) *hostfs.File {
		return &hostfs.File{Path: rel, Base: path.Dir(rel), Data: containerd.NewConfig(),
			Merger: containerd.ConfigMergerName, CreateAsMerge: true, Restart: containerd.Unit}
	}
	for p, o := range st.Files {
		if o.Restart == containerd.Unit {
			return file(p), ""
		}
	}
	reg, err := config.read()
	switch {
	case errors.Is(err, fs.ErrNotExist) && len(reg.Files) == 0:
		return file(containerd.ConfigFile), ""
	case err != nil || (reg.Problem() == "" && reg.Warning() == "") || reg.Conflict != "":
		return nil, ""
	}
	target := reg.EditTarget()
	rel := strings.TrimPrefix(target, "/")
	if !strings.HasPrefix(rel, plan.ContainerdDir+"/") {
		return nil, fmt.Sprintf("nodetrust does not edit %s, the file that sets containerd's config_path: --manage-containerd-config edits files below /%s only", target, plan.ContainerdDir)
	}
	return file(rel), ""
}

// checkShadows reports registries whose hosts.toml containerd does not read
// because a directory in the older host_port_ naming comes first.
func (r *Report) checkShadows(root *hostfs.Root, p plan.Plan) {
	for _, f := range p.Files {
		if f.Merger != containerd.MergerName {
			continue
		}
		dir := path.Dir(f.Path)
		reg := path.Base(dir)
		shadow := containerd.ShadowDir(reg)
		if shadow == "" || !root.IsDir(path.Join(path.Dir(dir), shadow)) {
			continue
		}
		r.NodeProblems = append(r.NodeProblems, fmt.Sprintf(
			"containerd reads /%s before /%s (the older host_port_ naming comes first), so nodetrust's CA for %s is not used; move what that directory holds into /%s/%s and remove it",
			path.Join(path.Dir(dir), shadow), dir, reg, dir, containerd.HostsFile))
	}
}

// configReader reads containerd's config files at most once per sync,
// unless a planned edit makes the caller read them again.
type configReader struct {
	root *hostfs.Root
	done bool
	reg  containerd.Registry
	err  error
}

func (c *configReader) read() (containerd.Registry, error) {
	if !c.done {
		c.reg, c.err = containerd.ReadRegistry(hostFS{c.root})
		c.done = true
	}
	return c.reg, c.err
}

// hostFS reads host paths inside the host root for containerd.ReadRegistry.
type hostFS struct{ root *hostfs.Root }

func (h hostFS) ReadFile(hostPath string) ([]byte, error) {
	return h.root.ReadFileInRoot(strings.TrimPrefix(path.Clean(hostPath), "/"))
}

// Glob lists matches below the root; reading them stays inside the root.
func (h hostFS) Glob(pattern string) ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(h.root.Dir(), path.Clean("/"+pattern)))
	for i, m := range matches {
		rel, _ := filepath.Rel(h.root.Dir(), m)
		matches[i] = "/" + filepath.ToSlash(rel)
	}
	return matches, err
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

// Detect reads the facts of the node under root.
func Detect(root *hostfs.Root) plan.Facts {
	f := plan.Facts{
		Containerd: root.IsDir(plan.ContainerdDir),
		Docker:     root.IsDir(plan.DockerDir),
		Containers: root.IsDir(plan.ContainersDir),
	}
	data, err := root.ReadFileInRoot(truststore.OSReleasePath)
	if errors.Is(err, fs.ErrNotExist) { // os-release(5): fall back to /usr/lib
		data, err = root.ReadFileInRoot("usr/lib/os-release")
	}
	if err != nil {
		f.TrustStoreErr = fmt.Errorf("host trust is unsupported: cannot read /%s: %w", truststore.OSReleasePath, err)
		return f
	}
	st, err := truststore.Detect(data)
	if err != nil {
		f.TrustStoreErr = err
		return f
	}
	f.TrustStore = &st
	return f
}

func refresher(ctx context.Context, root *hostfs.Root, f plan.Facts, opts Options) func() error {
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

package node

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/plan"
)

// ContainerdInfo says what nodetrust found about the node's containerd.
type ContainerdInfo struct {
	// Layout names the distribution layout ("containerd", "k3s", "rke2",
	// "microk8s", "custom") and Config its main config file.
	Layout, Config string
	// HostsDir is where nodetrust writes hosts.toml files (a node path).
	HostsDir string
	// Version is the containerd version judged ("unknown" when it was
	// judged from the config format); Transfer says whether its CRI pulls
	// through the transfer service.
	Version  string
	Transfer bool
	// Note says how the version was judged when it was not given.
	Note string
}

// containerdNode is the containerd of one sync: its layout, its config as
// read before the apply, and where it reads hosts.toml files.
type containerdNode struct {
	root    *hostfs.Root
	layout  containerd.Layout
	layoutE error
	version containerd.Version
	reg     containerd.Registry
	readErr error
	reading containerd.Reading
	edit    bool // a config edit is part of the apply
	info    ContainerdInfo
	// unmergeable are foreign hosts.toml files nodetrust cannot edit, with
	// the [host] URLs containerd reads from them and why.
	unmergeable map[string]unmergeable
}

type unmergeable struct {
	urls []string
	err  error
}

// detectContainerd finds the node's containerd layout and reads its config,
// and sets in f where hosts.toml files go and which foreign ones exist. It
// returns nil when the node has no containerd.
func detectContainerd(root *hostfs.Root, f *Facts, opts Options, st hostfs.State) (*containerdNode, error) {
	fsys := hostFS{root}
	layout, present, err := containerd.DiscoverLayout(fsys, opts.ContainerdConfig, f.Containerd)
	if !present {
		f.Containerd = false
		return nil, nil
	}
	f.Containerd = true
	c := &containerdNode{root: root, layout: layout, layoutE: err}
	if c.version, err = containerd.ParseVersion(opts.ContainerdVersion); err != nil {
		f.Notes = append(f.Notes, err.Error())
	}
	c.reg, c.readErr = containerd.ReadConfig(fsys, layout.Config)
	c.reading = c.reg.Reading(c.version, layout)
	if c.missingConfig() && layout.Name == containerd.Default.Name {
		c.reading.Dir = layout.HostsDir
	}
	rel := strings.TrimPrefix(path.Clean(c.reading.Dir), "/")
	f.ContainerdHosts = rel
	f.HostsFiles, c.unmergeable = foreignHostsFiles(root, rel, st)
	c.info = ContainerdInfo{Layout: layout.Name, Config: layout.Config, HostsDir: c.reading.Dir,
		Version: c.reading.Version.String(), Transfer: c.reading.Transfer, Note: c.reading.Note}
	if c.missingConfig() { // no config to judge a version from: the node warning says so
		c.info.Version, c.info.Note = c.version.String(), ""
	}
	return c, nil
}

func (c *containerdNode) missingConfig() bool {
	return errors.Is(c.readErr, fs.ErrNotExist) && len(c.reg.Files) == 0
}

// foreignHostsFiles lists the hosts.toml files below dir that nodetrust did
// not generate, with their [host] entries. Files nodetrust wrote whole are
// not read (they have none); one it created may have been replaced since.
func foreignHostsFiles(root *hostfs.Root, dir string, st hostfs.State) (map[string][]string, map[string]unmergeable) {
	matches, err := filepath.Glob(filepath.Join(root.Dir(), dir, "*", containerd.HostsFile))
	if err != nil {
		return nil, nil
	}
	out := map[string][]string{}
	var bad map[string]unmergeable
	for _, m := range matches {
		rel, err := filepath.Rel(root.Dir(), m)
		if err != nil {
			continue
		}
		rel = filepath.ToSlash(rel)
		if o, ok := st.Files[rel]; ok && o.Merge == nil {
			continue
		}
		data, err := root.ReadFile(rel)
		if err != nil || containerd.Generated(data) {
			continue
		}
		urls, err := containerd.HostURLs(data)
		switch {
		case err != nil:
			if bad == nil {
				bad = map[string]unmergeable{}
			}
			bad[rel] = unmergeable{urls: containerd.DecodedHostURLs(data), err: err}
		case len(urls) > 0:
			out[rel] = urls
		}
	}
	return out, bad
}

// checkUnmergeable warns about a hosts.toml nodetrust cannot edit whose
// [host] entries point at a registry of p: containerd uses that endpoint
// without nodetrust's CA.
func (c *containerdNode) checkUnmergeable(r *Report, p plan.Plan) {
	regs := map[string][]string{} // registry → its CA files
	for _, s := range p.Sources {
		for _, reg := range s.Registries {
			regs[string(reg)] = append(regs[string(reg)], plan.FileName(s.ID))
		}
	}
	files := make([]string, 0, len(c.unmergeable))
	for f := range c.unmergeable {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		u := c.unmergeable[f]
		for _, url := range u.urls {
			reg := containerd.HostOf(url)
			if cas := regs[reg]; len(cas) > 0 {
				r.NodeWarnings = append(r.NodeWarnings, fmt.Sprintf("/%s points containerd at %s, but nodetrust cannot add its CA there (%v): add ca = [\"../%s/%s\"] to that entry yourself, or write it as a [host.%q] table",
					f, url, u.err, reg, cas[0], url))
			}
		}
	}
}

// configEdit returns the config file edit that makes containerd read the
// hosts directory, when --manage-containerd-config may make one: the file
// edited before, or else the last file with the CRI plugin section (the
// main config when none has one, created when missing). Otherwise it
// returns nil, and a problem when the edit is refused.
func (c *containerdNode) configEdit(st hostfs.State) (*hostfs.File, string) {
	file := func(rel string) *hostfs.File {
		c.edit = true
		return &hostfs.File{Path: rel, Base: path.Dir(rel), Data: containerd.NewConfig(c.reading.Dir),
			Merger: containerd.ConfigMergerName, CreateAsMerge: true, Restart: containerd.Unit}
	}
	for p, o := range st.Files {
		if o.Restart == containerd.Unit {
			return file(p), ""
		}
	}
	switch {
	case c.layoutE != nil:
		return nil, ""
	case c.missingConfig() && c.layout.Template == "":
		return file(strings.TrimPrefix(c.layout.Config, "/")), ""
	case c.readErr != nil || c.reg.Conflict != "":
		return nil, ""
	case c.reading.Problem == "" && c.reading.Warning == "":
		return nil, ""
	case c.layout.Template != "":
		return nil, fmt.Sprintf("nodetrust does not edit %s: %s renders it from %s at every start; set config_path there", c.layout.Config, c.layout.Name, c.layout.Template)
	case c.reading.Problem != "" && !c.reading.Fixable:
		return nil, ""
	}
	target := c.reg.EditTarget()
	rel := strings.TrimPrefix(target, "/")
	if dir := strings.TrimPrefix(path.Dir(c.layout.Config), "/"); !strings.HasPrefix(rel, dir+"/") {
		return nil, fmt.Sprintf("nodetrust does not edit %s, the file that sets containerd's config_path: --manage-containerd-config edits files below /%s only", target, dir)
	}
	return file(rel), ""
}

// check reports, after the apply, what keeps containerd from reading the
// hosts.toml files of p.
func (c *containerdNode) check(r *Report, root *hostfs.Root, p plan.Plan) {
	if c.edit { // read what the apply left
		c.reg, c.readErr = containerd.ReadConfig(hostFS{root}, c.layout.Config)
		c.reading = c.reg.Reading(c.version, c.layout)
	}
	switch {
	case c.layoutE != nil:
		r.NodeProblems = append(r.NodeProblems, c.layoutE.Error())
	case c.missingConfig() && !c.version.Known:
		r.NodeWarnings = append(r.NodeWarnings, fmt.Sprintf("cannot check containerd's config_path: no %s; containerd's built-in default reads no hosts.toml on 1.x (give --containerd-version to judge it)", c.layout.Config))
	case c.readErr != nil && !c.missingConfig():
		r.NodeProblems = append(r.NodeProblems, c.readErr.Error())
	case c.reading.Problem != "":
		r.NodeProblems = append(r.NodeProblems, c.reading.Problem)
	default:
		if c.reading.Warning != "" {
			r.NodeWarnings = append(r.NodeWarnings, c.reading.Warning)
		}
	}
	c.checkShadows(r, root, p)
	c.checkUnmergeable(r, p)
}

// checkShadows reports registries whose hosts.toml containerd does not read
// because a directory in the older host_port_ naming comes first.
func (c *containerdNode) checkShadows(r *Report, root *hostfs.Root, p plan.Plan) {
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

// containersFirst is where containers/image (CRI-O, podman, skopeo) looks
// before /etc/containers/certs.d as root; the first existing
// <dir>/<registry> wins and nothing is merged.
const containersFirst = "etc/containers/certs.rootful.d"

// checkContainersOrder reports a directory containers/image reads before
// nodetrust's.
func (r *Report) checkContainersOrder(root *hostfs.Root, p plan.Plan) {
	seen := map[string]bool{}
	prefix := path.Join(plan.ContainersDir, "certs.d") + "/"
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
		if first := path.Join(containersFirst, reg); root.IsDir(first) {
			r.NodeProblems = append(r.NodeProblems, fmt.Sprintf(
				"containers/image (CRI-O, podman, skopeo) reads /%s before /%s%s and uses only the first that exists, so nodetrust's CA for %s is not used; copy it into /%s or remove that directory",
				first, prefix, reg, reg, first))
		}
	}
}

// hostFS reads host paths inside the host root for the containerd package.
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

func (h hostFS) Readlink(hostPath string) (string, error) {
	return h.root.Readlink(strings.TrimPrefix(path.Clean(hostPath), "/"))
}

// ContainerdLookup says where the containerd under root reads hosts.toml
// files (what Sync writes to), as `nodetrust check` resolves a registry; ok
// is false when the node has no containerd. version and config are as in
// Options.
func ContainerdLookup(root *hostfs.Root, version, config string) (r containerd.Reading, ok bool) {
	f := Facts{Facts: plan.Facts{Containerd: root.IsDir(plan.ContainerdDir)}}
	c, _ := detectContainerd(root, &f, Options{ContainerdVersion: version, ContainerdConfig: config}, hostfs.State{})
	if c == nil {
		return containerd.Reading{}, false
	}
	r = c.reading
	switch {
	case c.missingConfig() && !c.version.Known:
		// As Sync: no config to judge, so what nodetrust writes is assumed read.
		r.Problem, r.Transfer, r.Roots = "", false, []string{r.Dir}
		r.Warning = fmt.Sprintf("no %s: assumed containerd reads %s (its 1.x defaults read no hosts.toml; give the version to judge it)", c.layout.Config, r.Dir)
	case c.layoutE != nil:
		r.Problem = c.layoutE.Error()
	case c.readErr != nil && !c.missingConfig():
		r.Problem = c.readErr.Error()
	}
	return r, true
}

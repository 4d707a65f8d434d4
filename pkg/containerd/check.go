package containerd

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
)

// Foreign are the hosts.toml files in the hosts directory that nodetrust
// did not generate.
type Foreign struct {
	// URLs are the [host] entries of each file nodetrust can edit, by path
	// relative to the host root, in file order: a source's CA for a
	// registry goes into the entries that point at it (plan.Facts.HostsFiles).
	URLs map[string][]string
	// unmergeable are the files nodetrust cannot edit, with the [host]
	// URLs containerd reads from them and why.
	unmergeable map[string]unmergeable
}

type unmergeable struct {
	urls []string
	err  error
}

// ScanHosts reads the <registry>/hosts.toml files of the hosts directory
// from the tree, except those whole reports nodetrust wrote whole (they
// have no [host] entries; one it created as a merge may have been replaced
// since, so it is read).
func (n *Node) ScanHosts(whole func(rel string) bool) Foreign {
	out := Foreign{URLs: map[string][]string{}}
	dir := n.HostsDir()
	entries, err := fs.ReadDir(n.root.Tree, dir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		rel := path.Join(dir, e.Name(), HostsFile)
		if !e.IsDir() || whole(rel) {
			continue
		}
		data, err := fs.ReadFile(n.root.Tree, rel)
		if err != nil || Generated(data) {
			continue
		}
		urls, err := HostURLs(data)
		switch {
		case err != nil:
			if out.unmergeable == nil {
				out.unmergeable = map[string]unmergeable{}
			}
			out.unmergeable[rel] = unmergeable{urls: DecodedHostURLs(data), err: err}
		case len(urls) > 0:
			out.URLs[rel] = urls
		}
	}
	return out
}

// Planned is what an apply wrote for containerd.
type Planned struct {
	// HostsFiles are the hosts.toml files, relative to the host root.
	HostsFiles []string
	// CAs are the CA file names of each registry's sources.
	CAs map[string][]string
	// Edited: the apply edited containerd's config.
	Edited bool
}

// Findings keep containerd from using what was applied (Problems), or are
// worth knowing (Warnings).
type Findings struct {
	Problems, Warnings []string
}

// Check reports, after an apply, what keeps containerd from reading the
// hosts.toml files planned: its config (read again only when the apply
// edited it), a directory in the older host_port_ naming that comes first,
// and a foreign hosts.toml nodetrust cannot add a CA to.
func (n *Node) Check(p Planned, foreign Foreign) Findings {
	if p.Edited { // judge what the apply left
		after := *n
		after.read()
		n = &after
	}
	var f Findings
	switch {
	case n.layoutErr != nil:
		f.Problems = append(f.Problems, n.layoutErr.Error())
	case n.missingConfig() && !n.version.Known:
		f.Warnings = append(f.Warnings, fmt.Sprintf("cannot check containerd's config_path: no %s; containerd's built-in default reads no hosts.toml on 1.x (give --containerd-version to judge it)", n.layout.Config))
	case n.readErr != nil && !n.missingConfig():
		f.Problems = append(f.Problems, n.readErr.Error())
	case n.reading.Problem != "":
		f.Problems = append(f.Problems, n.reading.Problem)
	case n.reading.Warning != "":
		f.Warnings = append(f.Warnings, n.reading.Warning)
	}
	f.Problems = append(f.Problems, n.shadows(p.HostsFiles)...)
	f.Warnings = append(f.Warnings, foreign.warnings(p.CAs)...)
	return f
}

// shadows are the registries whose hosts.toml containerd does not read
// because a directory in the older host_port_ naming comes first.
func (n *Node) shadows(files []string) []string {
	var out []string
	dirs := map[string]map[string]bool{} // the directories in each hosts directory
	for _, file := range files {
		dir := path.Dir(file)
		reg, hosts := path.Base(dir), path.Dir(dir)
		shadow := ShadowDir(reg)
		if shadow == "" {
			continue
		}
		if dirs[hosts] == nil {
			dirs[hosts] = n.subdirs(hosts)
		}
		if !dirs[hosts][shadow] {
			continue
		}
		out = append(out, fmt.Sprintf(
			"containerd reads /%s before /%s (the older host_port_ naming comes first), so nodetrust's CA for %s is not used; move what that directory holds into /%s/%s and remove it",
			path.Join(hosts, shadow), dir, reg, dir, HostsFile))
	}
	return out
}

// subdirs are the names of the directories in dir, itself a directory of
// the tree: one listing for every registry of a hosts directory.
func (n *Node) subdirs(dir string) map[string]bool {
	out := map[string]bool{}
	if fi, err := fs.Stat(n.root.Tree, dir); err != nil || !fi.IsDir() {
		return out
	}
	entries, _ := fs.ReadDir(n.root.Tree, dir)
	for _, e := range entries {
		if e.IsDir() {
			out[e.Name()] = true
		}
	}
	return out
}

// warnings are about a hosts.toml nodetrust cannot edit whose [host]
// entries point at a registry with CA files (cas): containerd uses that
// endpoint without nodetrust's CA.
func (f Foreign) warnings(cas map[string][]string) []string {
	files := make([]string, 0, len(f.unmergeable))
	for file := range f.unmergeable {
		files = append(files, file)
	}
	sort.Strings(files)
	var out []string
	for _, file := range files {
		u := f.unmergeable[file]
		for _, url := range u.urls {
			reg := HostOf(url)
			if names := cas[reg]; len(names) > 0 {
				out = append(out, fmt.Sprintf("/%s points containerd at %s, but nodetrust cannot add its CA there (%v): add ca = [\"../%s/%s\"] to that entry yourself, or write it as a [host.%q] table",
					file, url, u.err, reg, names[0], url))
			}
		}
	}
	return out
}

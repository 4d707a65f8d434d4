package containerd

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/nodetrust/nodetrust/pkg/hostfs"
)

// Root is a host root as containerd policy reads it, two views of one
// directory tree (os.DirFS, or one backed by hostfs, on a node;
// fstest.MapFS or a t.TempDir() in tests).
type Root struct {
	// Config reads containerd's config files as containerd would on the
	// node: symlinks resolve inside the root.
	Config fs.FS
	// Tree reads the hosts directories nodetrust writes as hostfs writes
	// them: a file or directory reached through a symlink is not there.
	Tree fs.FS
}

// Options say what the host root alone does not tell about its containerd.
type Options struct {
	// Version is the running containerd's version (ParseVersion); ""
	// judges it from the config's format.
	Version string
	// Config overrides the discovery of the main config file (a host path).
	Config string
	// EtcDir: /etc/containerd exists, so containerd is present even when
	// no config file is.
	EtcDir bool
}

// Info says what nodetrust found about the node's containerd.
type Info struct {
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

// Node is the containerd of one node as one sync sees it: its layout, its
// config and where it reads hosts.toml files. Detect reads the config once;
// Check reads it again only when the apply edited it. A Node does not
// change once detected.
type Node struct {
	root      Root
	layout    Layout
	layoutErr error
	version   Version
	notes     []string
	reg       Registry
	readErr   error
	reading   Reading
}

// Detect finds the containerd under root, its layout and its config. It
// returns nil when the node has no containerd.
func Detect(root Root, opts Options) *Node {
	layout, present, err := DiscoverLayout(root.Config, opts.Config, opts.EtcDir)
	if !present {
		return nil
	}
	n := &Node{root: root, layout: layout, layoutErr: err}
	if n.version, err = ParseVersion(opts.Version); err != nil {
		n.notes = append(n.notes, err.Error())
	}
	n.read()
	return n
}

// read reads the config and judges where containerd reads hosts.toml.
func (n *Node) read() {
	n.reg, n.readErr = ReadConfig(n.root.Config, n.layout.Config)
	n.reading = n.reg.Reading(n.version, n.layout)
	if n.missingConfig() && n.layout.Name == Default.Name {
		n.reading.Dir = n.layout.HostsDir
	}
}

func (n *Node) missingConfig() bool {
	return errors.Is(n.readErr, fs.ErrNotExist) && len(n.reg.Files) == 0
}

// Notes are node warnings about what was given (a version that does not
// parse).
func (n *Node) Notes() []string { return n.notes }

// HostsDir is where nodetrust writes hosts.toml files, relative to the host
// root.
func (n *Node) HostsDir() string { return strings.TrimPrefix(path.Clean(n.reading.Dir), "/") }

// Info says what was found, as read before the apply.
func (n *Node) Info() Info {
	i := Info{Layout: n.layout.Name, Config: n.layout.Config, HostsDir: n.reading.Dir,
		Version: n.reading.Version.String(), Transfer: n.reading.Transfer, Note: n.reading.Note}
	if n.missingConfig() { // no config to judge a version from: the node warning says so
		i.Version, i.Note = n.version.String(), ""
	}
	return i
}

// Lookup says where containerd reads hosts.toml files (what a sync writes
// to), as `nodetrust check` resolves a registry: a node without a config
// is judged as a sync judges it, and a layout or config that cannot be read
// is the Problem.
func (n *Node) Lookup() Reading {
	r := n.reading
	switch {
	case n.missingConfig() && !n.version.Known:
		// As Sync: no config to judge, so what nodetrust writes is assumed read.
		r.Problem, r.Transfer, r.Roots = "", false, []string{r.Dir}
		r.Warning = fmt.Sprintf("no %s: assumed containerd reads %s (its 1.x defaults read no hosts.toml; give the version to judge it)", n.layout.Config, r.Dir)
	case n.layoutErr != nil:
		r.Problem = n.layoutErr.Error()
	case n.readErr != nil && !n.missingConfig():
		r.Problem = n.readErr.Error()
	}
	return r
}

// ConfigEdit returns the config file edit that makes containerd read the
// hosts directory, for --manage-containerd-config: edited (the file edited
// before, "" for none), or else the last file with the CRI plugin section
// (the main config when none has one, created when missing). Otherwise it
// returns nil, and a problem when the edit is refused.
func (n *Node) ConfigEdit(edited string) (*hostfs.File, string) {
	if edited != "" {
		return n.configFile(edited), ""
	}
	l := n.layout
	switch {
	case n.layoutErr != nil:
		return nil, ""
	case n.missingConfig() && l.Template == "":
		return n.configFile(strings.TrimPrefix(l.Config, "/")), ""
	case n.readErr != nil || n.reg.Conflict != "":
		return nil, ""
	case n.reading.Problem == "" && n.reading.Warning == "":
		return nil, ""
	case l.Template != "":
		return nil, fmt.Sprintf("nodetrust does not edit %s: %s renders it from %s at every start; set config_path there", l.Config, l.Name, l.Template)
	case n.reading.Problem != "" && !n.reading.Fixable:
		return nil, ""
	}
	target := n.reg.EditTarget()
	rel := strings.TrimPrefix(target, "/")
	if dir := strings.TrimPrefix(path.Dir(l.Config), "/"); !strings.HasPrefix(rel, dir+"/") {
		return nil, fmt.Sprintf("nodetrust does not edit %s, the file that sets containerd's config_path: --manage-containerd-config edits files below /%s only", target, dir)
	}
	return n.configFile(rel), ""
}

// configFile is the edit of the config file at rel (relative to the host
// root): merged, restored when nodetrust writes no hosts.toml any more, and
// loaded by a restart of containerd.
func (n *Node) configFile(rel string) *hostfs.File {
	return &hostfs.File{Path: rel, Base: path.Dir(rel), Data: NewConfig(n.reading.Dir),
		Merger: ConfigMergerName, CreateAsMerge: true, Restart: Unit}
}

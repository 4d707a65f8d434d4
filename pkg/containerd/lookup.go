package containerd

import (
	"fmt"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nodetrust/nodetrust/pkg/certsd"
)

// Version is a containerd release, as far as it matters here.
type Version struct {
	Major, Minor int
	// Known is false when the version was not given: it is then judged
	// from the config's format, and Reading says so.
	Known bool
}

// ParseVersion reads a containerd version as a Node's
// status.nodeInfo.containerRuntimeVersion ("containerd://1.7.23-k3s2") or
// a person ("2.2.4", "v1.6.20~ds1") writes it. "" is an unknown version.
func ParseVersion(s string) (Version, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Version{}, nil
	}
	v := strings.TrimPrefix(strings.TrimPrefix(s, "containerd://"), "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return Version{}, fmt.Errorf("containerd version %q: want MAJOR.MINOR[.PATCH]", s)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return Version{}, fmt.Errorf("containerd version %q: want MAJOR.MINOR[.PATCH]", s)
	}
	return Version{Major: major, Minor: minor, Known: true}, nil
}

// atLeast reports whether v is major.minor or later.
func (v Version) atLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

func (v Version) String() string {
	if !v.Known {
		return "unknown"
	}
	return fmt.Sprintf("%d.%d", v.Major, v.Minor)
}

// DefaultConfigPath is the config_path containerd 2.2 and later use when
// none is set and no registry.mirrors are.
const DefaultConfigPath = certsd.Containerd + ":" + certsd.Docker

// Reading is where a node's containerd reads hosts.toml files, and so where
// nodetrust writes them.
type Reading struct {
	// Dir is the hosts directory (a host path) nodetrust writes: the first
	// root containerd consults, or the layout's own directory when
	// containerd reads none (Problem then says so).
	Dir string
	// Roots are config_path's directories, as the CRI splits them.
	Roots []string
	// Transfer: the CRI pulls through the transfer service (2.1 and
	// later without a local-pull setting), which takes config_path as one
	// directory.
	Transfer bool
	// Version is the containerd version judged, and Note how, when it was
	// not known.
	Version Version
	Note    string
	// Problem says why containerd reads no hosts.toml in Dir, with the fix;
	// "" when it does.
	Problem string
	// Fixable: setting config_path = Dir in the config (EditTarget) is the
	// fix, and the layout does not render the config from a template.
	Fixable bool
	// Warning is about a config that works on this version but not on
	// others, or "".
	Warning string
}

// Reading models containerd's own lookup for the node: the CRI's
// registryHosts splits config_path into roots (filepath.SplitList) and the
// first root holding host_port_, host or _default wins; the transfer
// service (2.1+, unless a local-pull setting is present) uses
// HostDirFromRoot(config_path) on the whole string; 2.2 and later default
// an unset config_path to DefaultConfigPath unless mirrors are set. v is the
// running containerd's version; when unknown it is judged from the config's
// format (3: 2.2 or later; 1 or 2: 1.7), and Note says so.
func (r Registry) Reading(v Version, l Layout) Reading {
	out := Reading{Version: v}
	if !v.Known {
		out.Version, out.Note = judgeVersion(r.Version)
	}
	v = out.Version
	configPath, unsetHow := r.ConfigPath, "unset"
	if v.Major < 2 && out.Note == "" && r.LastSection != "" {
		configPath = r.LastSectionPath // 1.x: the last plugin section replaces the others whole
		if r.LastSectionPath == "" && r.ConfigPath != "" {
			unsetHow = fmt.Sprintf("unset in %s, the last file with [plugins.%q], which replaces the earlier section whole on containerd 1.x", r.LastSection, criImagesPlugin(r.Version))
		}
	}
	if configPath == "" && v.atLeast(2, 2) && !r.Mirrors {
		configPath = DefaultConfigPath
	}
	out.Transfer = v.atLeast(2, 1) && r.LocalPull == ""
	out.Roots = filepath.SplitList(configPath)
	out.Dir = l.HostsDir
	where, restart := r.where(l)
	switch {
	case r.Conflict != "" && r.ConfigPath == "":
		out.Problem = fmt.Sprintf("containerd reads no hosts.toml: config_path is unset under %s, and cannot be set as it is: %s", where, r.Conflict)
	case configPath == "":
		out.Problem = fmt.Sprintf("%s reads no hosts.toml: config_path is %s under %s; set config_path = %q %s", name(out), unsetHow, where, l.HostsDir, restart)
		out.Fixable = l.Template == ""
	case !validRoot(out.Roots[0]):
		out.Problem = fmt.Sprintf("containerd config_path %q under %s does not start with an absolute directory nodetrust can write; set config_path = %q %s", configPath, where, l.HostsDir, restart)
	default:
		r.readsRoots(&out, l, configPath, where, restart)
	}
	return out
}

// readsRoots judges a config_path whose first root nodetrust can write:
// out.Dir is that root, and the transfer service of 2.1 and later reads
// none of several roots.
func (r Registry) readsRoots(out *Reading, l Layout, configPath, where, restart string) {
	if l.Name == "microk8s" {
		out.Dir = ResolveSnap(path.Clean(out.Roots[0]), snapRevision(l))
	} else {
		out.Dir = path.Clean(out.Roots[0])
	}
	if out.Transfer && len(out.Roots) > 1 {
		how := "config_path is " + strconv.Quote(configPath)
		if r.ConfigPath == "" {
			how = fmt.Sprintf("config_path is unset, so it defaults to %q", DefaultConfigPath)
		}
		out.Problem = fmt.Sprintf("%s reads no hosts.toml: it pulls through its transfer service, which takes config_path as one directory, and %s under %s (containerd issue 12808); set config_path = %q, or use_local_image_pull = true under [plugins.%q], %s",
			name(*out), how, where, out.Dir, criImagesPlugin(3), restart)
		out.Fixable = l.Template == ""
		return
	}
	if out.Note != "" && out.Version.Major < 2 && r.LastSection != "" && path.Clean(r.LastSectionPath) != path.Clean(r.ConfigPath) {
		out.Warning = fmt.Sprintf("containerd 1.x reads no hosts.toml with this config: it replaces a whole plugin section with each imported file's, and %s, the last file with [plugins.%q], does not set config_path (containerd 2.x merges them and is not affected); set config_path = %q there too",
			r.LastSection, criImagesPlugin(r.Version), out.Dir)
	}
}

// judgeVersion is the containerd version a config of format version
// format implies (3: 2.2 or later; 1 or 2: 1.7), and the note saying so.
func judgeVersion(format int) (Version, string) {
	if format >= 3 {
		return Version{Major: 2, Minor: 2}, fmt.Sprintf("containerd's version is unknown: judged as 2.2 or later from the version %d config format", format)
	}
	return Version{Major: 1, Minor: 7}, fmt.Sprintf("containerd's version is unknown: judged as 1.x from the version %d config format (with containerd 2.x, give its version)", format)
}

// where names the config section and files that set config_path, for
// messages, and restart how to load a change.
func (r Registry) where(l Layout) (where, restart string) {
	where = fmt.Sprintf("%s in %s", r.Section(), strings.Join(r.Files, ", "))
	if len(r.Files) == 0 {
		where = fmt.Sprintf("%s (%s does not exist: containerd runs on its defaults)", r.Section(), l.Config)
	}
	restart = "and restart containerd"
	if l.Template != "" {
		where = fmt.Sprintf("%s (rendered by %s at every start from %s)", where, l.Name, l.Template)
		restart = fmt.Sprintf("in %s and restart %s", l.Template, l.Name)
	}
	return where, restart
}

// snapRevision is the revision directory a resolved MicroK8s layout uses.
func snapRevision(l Layout) string {
	if rest, ok := strings.CutSuffix(l.HostsDir, strings.TrimPrefix(certsd.MicroK8s, microk8sCurrent)); ok {
		return rest
	}
	return microk8sCurrent
}

// validRoot: an absolute directory below "/" with no "..".
func validRoot(dir string) bool {
	clean := path.Clean(dir)
	return path.IsAbs(dir) && clean != "/" && !strings.Contains(dir, "/../") && !strings.HasSuffix(dir, "/..")
}

// name is "containerd", with the version when it is known.
func name(r Reading) string {
	if r.Note != "" {
		return "containerd"
	}
	return "containerd " + r.Version.String()
}

package containerd

import (
	"fmt"
	"io/fs"
	"path"
	"strings"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/nodetrust/nodetrust/pkg/certsd"
)

// ConfigFile is containerd's main configuration, relative to the host root.
const ConfigFile = "etc/containerd/config.toml"

// CertsDir is the hosts directory of containerd's default layout, as
// containerd sees it.
const CertsDir = certsd.Containerd

// Registry is what containerd's effective configuration says about where
// its CRI plugin reads hosts.toml files, and how it pulls.
type Registry struct {
	// Version of the config format: 1 (containerd 1.x, default), 2
	// (containerd 1.x and 2.x) or 3 (containerd 2.x).
	Version int
	// ConfigPath is the CRI registry config_path; Set says whether any file
	// set it.
	ConfigPath string
	Set        bool
	// LastSection is the last file that has the CRI registry's plugin
	// section at all. containerd 1.x replaces a whole plugin section with
	// each imported file's, so on 1.x config_path is what this file says;
	// 2.x merges key by key, so there it is ConfigPath.
	LastSection string
	// LastSectionPath is config_path in LastSection ("" when unset).
	LastSectionPath string
	// Conflict names a setting containerd refuses next to config_path
	// (registry.mirrors, registry.configs.*.tls) and its file, or is "".
	Conflict string
	// Mirrors: registry.mirrors is set, so containerd 2.2 sets no default
	// config_path.
	Mirrors bool
	// LocalPull names the first setting that makes containerd 2.1 and later
	// pull without the transfer service (see CheckLocalImagePullConfigs in
	// containerd's CRI config), or is "".
	LocalPull string
	// Files are the files read, main config first, then imports.
	Files []string
	// pull holds the pull settings read, by key.
	pull map[string]any
	// v2Containerd holds the pull settings of version 2 files' CRI
	// containerd table, which 2.x migrates only when v2Runtimes (some file
	// has its runtimes table).
	v2Containerd map[string]any
	v2Runtimes   bool
}

// maxImports bounds the import graph (imports may import).
const maxImports = 64

// ReadRegistry reads /etc/containerd/config.toml and its imports.
func ReadRegistry(fsys fs.FS) (Registry, error) { return ReadConfig(fsys, "/"+ConfigFile) }

// ReadConfig reads the containerd config at main (a host path) and its
// imports, later files overriding earlier ones as containerd merges them.
// fsys is the host root; its symlinks should resolve inside it, as
// containerd's would on the node. Files keep host paths
// ("/etc/containerd/conf.d/*.toml") in Registry and in errors.
func ReadConfig(fsys fs.FS, main string) (Registry, error) {
	var reg Registry
	queue := []string{main}
	seen := map[string]bool{}
	for len(queue) > 0 {
		file := queue[0]
		queue = queue[1:]
		if seen[file] {
			continue
		}
		if seen[file] = true; len(seen) > maxImports {
			return reg, fmt.Errorf("containerd config: more than %d imported files", maxImports)
		}
		data, err := fs.ReadFile(fsys, fsName(file))
		if err != nil {
			return reg, fmt.Errorf("containerd config %s: %w", file, err)
		}
		imports, err := reg.apply(file, data)
		if err != nil {
			return reg, err
		}
		for _, imp := range imports {
			if !path.IsAbs(imp) {
				imp = path.Join(path.Dir(file), imp)
			}
			matches, err := fs.Glob(fsys, fsName(imp))
			if err != nil {
				return reg, fmt.Errorf("containerd config %s: imports %q: %w", file, imp, err)
			}
			for _, m := range matches {
				queue = append(queue, "/"+m)
			}
		}
	}
	if reg.v2Runtimes {
		for k, v := range reg.v2Containerd {
			reg.pull = setPull(reg.pull, k, v)
		}
	}
	reg.LocalPull = reg.localPull()
	return reg, nil
}

// fsName is hostPath as an fs.FS names it: relative to the host root.
func fsName(hostPath string) string {
	if name := strings.TrimPrefix(path.Clean("/"+hostPath), "/"); name != "" {
		return name
	}
	return "."
}

// configFile holds the parts of a containerd config nodetrust reads.
type configFile struct {
	Version int            `toml:"version"`
	Imports []string       `toml:"imports"`
	Plugins map[string]any `toml:"plugins"`
}

// criImagesPlugin names the plugin holding the registry section, by version.
func criImagesPlugin(version int) string {
	switch version {
	case 3:
		return "io.containerd.cri.v1.images"
	case 2:
		return "io.containerd.grpc.v1.cri"
	default:
		return "cri"
	}
}

func (r *Registry) apply(file string, data []byte) ([]string, error) {
	var cf configFile
	if err := toml.Unmarshal(data, &cf); err != nil {
		return nil, fmt.Errorf("containerd config %s does not parse: %w", file, err)
	}
	r.Files = append(r.Files, file)
	if cf.Version == 0 {
		cf.Version = 1
	}
	if len(r.Files) == 1 || cf.Version > r.Version {
		r.Version = cf.Version
	}
	plugin, hasSection := cf.Plugins[criImagesPlugin(cf.Version)].(map[string]any)
	registry, _ := plugin["registry"].(map[string]any)
	if hasSection {
		r.LastSection = file
		r.LastSectionPath, _ = registry["config_path"].(string)
	}
	if v, ok := registry["config_path"]; ok {
		s, isString := v.(string)
		if !isString {
			return nil, fmt.Errorf("containerd config %s: config_path is %T, want a string", file, v)
		}
		r.ConfigPath, r.Set = s, true
	}
	if err := conflicts(registry); err != nil && r.Conflict == "" {
		r.Conflict = fmt.Sprintf("%s: %v", file, err)
	}
	for _, k := range []string{"mirrors", "configs", "auths"} {
		if m, _ := registry[k].(map[string]any); len(m) > 0 {
			r.pull = setPull(r.pull, "registry."+k, true)
			r.Mirrors = r.Mirrors || k == "mirrors"
		}
	}
	r.readPullSettings(cf)
	return cf.Imports, nil
}

// The CRI settings that make containerd 2.1 and later pull without the
// transfer service, with the value each has by default; the order is
// containerd's own (CheckLocalImagePullConfigs).
var localPullSettings = []struct {
	key string
	def any
}{
	{"use_local_image_pull", false},
	{"disable_snapshot_annotations", true},
	{"discard_unpacked_layers", false},
	{"registry.mirrors", false},
	{"registry.configs", false},
	{"registry.auths", false},
	{"max_concurrent_downloads", int64(3)},
	{"image_pull_with_sync_fs", false},
}

// readPullSettings records the pull settings a file sets: in version 3 in
// the CRI images plugin; in version 2 where containerd 2.x migrates them
// from (the CRI plugin and its containerd table), over the images plugin.
func (r *Registry) readPullSettings(cf configFile) {
	if cf.Version < 2 {
		return // containerd 1.x only: it always pulls locally
	}
	images, _ := cf.Plugins[criImagesPlugin(3)].(map[string]any)
	for _, s := range localPullSettings {
		if v, ok := images[s.key]; ok {
			r.pull = setPull(r.pull, s.key, v)
		}
	}
	if cf.Version != 2 {
		return
	}
	cri, _ := cf.Plugins[criImagesPlugin(2)].(map[string]any)
	for _, k := range []string{"max_concurrent_downloads", "image_pull_with_sync_fs"} {
		if v, ok := cri[k]; ok {
			r.pull = setPull(r.pull, k, v)
		}
	}
	// containerd 2.x's migration (plugins/cri/images migrateConfig) takes
	// these from the containerd table only when it has a runtimes table:
	// without one they are dropped, and the transfer service stays in use.
	ctd, _ := cri["containerd"].(map[string]any)
	if _, ok := ctd["runtimes"].(map[string]any); ok {
		r.v2Runtimes = true
	}
	for _, k := range []string{"disable_snapshot_annotations", "discard_unpacked_layers"} {
		if v, ok := ctd[k]; ok {
			r.v2Containerd = setPull(r.v2Containerd, k, v)
		}
	}
}

func setPull(m map[string]any, k string, v any) map[string]any {
	if m == nil {
		m = map[string]any{}
	}
	m[k] = v
	return m
}

// localPull names the first setting that differs from its default.
func (r Registry) localPull() string {
	for _, s := range localPullSettings {
		if v, ok := r.pull[s.key]; ok && v != s.def {
			if strings.HasPrefix(s.key, "registry.") {
				return s.key
			}
			return fmt.Sprintf("%s = %v", s.key, v)
		}
	}
	return ""
}

// Section returns the TOML table that holds config_path for r's version.
func (r Registry) Section() string {
	return fmt.Sprintf("[plugins.%q.registry]", criImagesPlugin(r.Version))
}

// EditTarget is the file where setting config_path works on containerd 1.x
// and 2.x alike: the last one with the plugin section, else the main config.
func (r Registry) EditTarget() string {
	if r.LastSection != "" {
		return r.LastSection
	}
	if len(r.Files) > 0 {
		return r.Files[0]
	}
	return "/" + ConfigFile
}

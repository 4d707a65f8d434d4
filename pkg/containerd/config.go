package containerd

import (
	"fmt"
	"path"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// ConfigFile is containerd's main configuration, relative to the host root.
const ConfigFile = "etc/containerd/config.toml"

// CertsDir is the hosts directory nodetrust writes, as containerd sees it.
const CertsDir = "/etc/containerd/certs.d"

// Registry is what containerd's effective configuration says about where
// its CRI plugin reads hosts.toml files.
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
	// Files are the files read, main config first, then imports.
	Files []string
}

// FS reads files and expands glob patterns, both in host paths
// ("/etc/containerd/conf.d/*.toml") resolved inside the host root.
type FS interface {
	ReadFile(hostPath string) ([]byte, error)
	Glob(pattern string) ([]string, error)
}

// maxImports bounds the import graph (imports may import).
const maxImports = 64

// ReadRegistry reads /etc/containerd/config.toml and its imports, later
// files overriding earlier ones as containerd merges them.
func ReadRegistry(fsys FS) (Registry, error) {
	var reg Registry
	queue := []string{"/" + ConfigFile}
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
		data, err := fsys.ReadFile(file)
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
			matches, err := fsys.Glob(imp)
			if err != nil {
				return reg, fmt.Errorf("containerd config %s: imports %q: %w", file, imp, err)
			}
			queue = append(queue, matches...)
		}
	}
	return reg, nil
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
	return cf.Imports, nil
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
	return "/" + ConfigFile
}

// Warning explains a config that makes containerd 2.x read the hosts.toml
// files but not 1.x, or returns "". Both read config_path = "/x" in
// config.toml, followed by an import with [plugins."io.containerd.grpc.v1.cri"]
// sandbox_image = "…": 2.x merges the two, 1.x keeps only the import's
// section, without config_path.
func (r Registry) Warning() string {
	if r.Problem() != "" || r.Version >= 3 || r.LastSection == "" || path.Clean(r.LastSectionPath) == path.Clean(r.ConfigPath) {
		return ""
	}
	return fmt.Sprintf("containerd 1.x reads no hosts.toml with this config: it replaces a whole plugin section with each imported file's, and %s, the last file with [plugins.%q], does not set config_path (containerd 2.x merges them and is not affected); set config_path = %q there too",
		r.LastSection, criImagesPlugin(r.Version), CertsDir)
}

// Problem explains why containerd would not read the hosts.toml files
// nodetrust writes to CertsDir, or returns "".
func (r Registry) Problem() string {
	where := fmt.Sprintf("%s in %s", r.Section(), strings.Join(r.Files, ", "))
	dirs := strings.Split(r.ConfigPath, ":")
	switch {
	case r.ConfigPath == "" && r.Conflict != "":
		return fmt.Sprintf("containerd reads no hosts.toml: config_path is unset under %s, and cannot be set as it is: %s", where, r.Conflict)
	case r.ConfigPath == "" && r.Version >= 3:
		return fmt.Sprintf("config_path is unset under %s, so containerd 2.x uses its default list %q, which 2.1 and later do not read hosts.toml from (containerd issue 12808); set config_path = %q and restart containerd", where, "/etc/containerd/certs.d:/etc/docker/certs.d", CertsDir)
	case r.ConfigPath == "":
		return fmt.Sprintf("containerd reads no hosts.toml: config_path is unset under %s; set config_path = %q and restart containerd", where, CertsDir)
	case len(dirs) > 1:
		return fmt.Sprintf("containerd config_path %q under %s lists several directories: containerd 2.1 and later pull through the transfer service, which takes the list as one path and reads no hosts.toml (containerd issue 12808), and 1.x never split it; set config_path = %q", r.ConfigPath, where, CertsDir)
	case path.Clean(r.ConfigPath) != CertsDir:
		return fmt.Sprintf("containerd config_path is %q under %s, but nodetrust writes %s; set config_path = %q", r.ConfigPath, where, CertsDir, CertsDir)
	}
	return ""
}

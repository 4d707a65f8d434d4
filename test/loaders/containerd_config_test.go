package loaders

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"iter"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	toml2 "github.com/pelletier/go-toml/v2"
	"github.com/stretchr/testify/require"

	cd2srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	cd2version "github.com/containerd/containerd/v2/version"

	// containerd 2's CRI images plugin, one of the CRI plugins it builds in
	// (cmd/containerd/builtins/cri.go). Importing it registers its
	// ConfigMigration, which copies registry (and the other image keys)
	// from a version 2 [plugins."io.containerd.grpc.v1.cri"] section to
	// [plugins."io.containerd.cri.v1.images"] when a file is loaded. The
	// other two, plugins/cri and plugins/cri/runtime, are left out: their
	// migrations never write the images section, and the CRI plugin's,
	// which drops the moved keys from "io.containerd.grpc.v1.cri", runs
	// after the images plugin's (it requires it), so they cannot change
	// what is judged here; leaving them out keeps runc, CNI and NRI out of
	// this module.
	_ "github.com/containerd/containerd/v2/plugins/cri/images"

	nodetrustcd "github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/test/harness"
)

// wantCertsDir is where nodetrust writes hosts.toml files, spelled out
// rather than taken from nodetrust's constant.
const wantCertsDir = "/etc/containerd/certs.d"

// cd2ImagesPlugin is containerd 2's CRI images plugin, which owns the
// registry section (and so config_path) from config version 3 on.
const cd2ImagesPlugin = "io.containerd.cri.v1.images"

// fixtureDir holds the containerd configs nodetrust is tested against.
var fixtureDir = filepath.Join("..", "..", "hostfiles", "containerd")

// readFixture returns a fixture's bytes.
func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, name))
	require.NoError(t, err)
	return b
}

// writeConfig writes a config file, creating its directory, and returns its path.
func writeConfig(t *testing.T, path string, data []byte) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, data, 0o644))
	return path
}

// cd17Result is what containerd 1.7 made of a config file, as the
// containerd17 command (./containerd17) prints it.
type cd17Result struct {
	LoadError     string   `json:"loadError"`
	Files         []string `json:"files"`
	ConfigPath    string   `json:"configPath"`
	Mirrors       []string `json:"mirrors"`
	ValidateError string   `json:"validateError"`
	Warnings      []string `json:"warnings"`
	Logs          []string `json:"logs"`
}

// buildContainerd17 builds the containerd17 command into a directory of t.
// containerd 1.7's CRI config package cannot be linked into this module
// (its client does not compile against the containerd API and OCI runtime
// spec versions containerd v2 requires), so it is a module of its own,
// pinned to exactly what containerd v1.7.35 requires, and runs as a
// separate process.
func buildContainerd17(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "containerd17")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = "containerd17"
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "building ./containerd17:\n%s", out)
	return bin
}

// cd17Load runs the containerd17 command on the config file at path: it
// loads the file and its imports with containerd 1.7's LoadConfig,
// decodes the CRI plugin's config the way containerd does (Config.Decode
// of the plugin's registration: [plugins."io.containerd.grpc.v1.cri"] in
// version 2 files, [plugins.cri] in version 1 files, into DefaultConfig())
// and runs ValidatePluginConfig, which the plugin must pass to start.
func cd17Load(t *testing.T, bin, path string) cd17Result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "containerd17 %s: %s", path, stderr.String())
	var res cd17Result
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &res), "containerd17 %s printed %q", path, stdout.String())
	return res
}

// cd2Plugins returns containerd 2's registered plugins as its main command
// hands them to LoadConfigWithPlugins: the dependency-ordered graph, none
// disabled, each one's ConfigMigration run in that order.
func cd2Plugins() iter.Seq[plugin.Registration] {
	return slices.Values(registry.Graph(func(*plugin.Registration) bool { return false }))
}

// cd2ImagesDefault returns the registration of containerd 2's CRI images
// plugin; its Config is a *ImageConfig from containerd's internal
// cri/config package, holding DefaultImageConfig().
func cd2ImagesDefault(t *testing.T) plugin.Registration {
	t.Helper()
	for r := range cd2Plugins() {
		if r.URI() == cd2ImagesPlugin {
			require.NotNil(t, r.Config)
			return r
		}
	}
	require.FailNow(t, "containerd 2's CRI images plugin is not registered")
	return plugin.Registration{}
}

// cd2Images is what containerd 2 makes of a config file for its CRI images
// plugin.
type cd2Images struct {
	configPath string
	mirrors    int // registry.mirrors entries
	logs       []string
}

// cd2ImagesConfig loads the config file at path (and its imports) as
// containerd 2.4's main command does (cd2DecodeImages) and reads
// Registry.ConfigPath and Registry.Mirrors from the images plugin's config.
func cd2ImagesConfig(t *testing.T, path string) (cd2Images, error) {
	t.Helper()
	images, logs, err := cd2DecodeImages(t, path)
	if err != nil {
		return cd2Images{}, err
	}
	reg := images.FieldByName("Registry")
	require.True(t, reg.IsValid(), "containerd 2's ImageConfig has no Registry field")
	cp := reg.FieldByName("ConfigPath")
	mirrors := reg.FieldByName("Mirrors")
	require.True(t, cp.IsValid() && mirrors.IsValid(), "containerd 2's Registry has no ConfigPath or Mirrors field")
	return cd2Images{configPath: cp.String(), mirrors: mirrors.Len(), logs: logs}, nil
}

// cd2DecodeImages loads the config file at path (and its imports) as
// containerd 2.4's main command does: starting from the current config
// version, every file read is migrated to it by containerd's core and
// plugin migrations before it is merged (LoadConfigWithPlugins). Then it
// decodes the CRI images plugin's section with containerd's Config.Decode
// into a copy of the plugin's own default config, of containerd's own
// (internal) type, and returns that ImageConfig (a struct value, read by
// reflection) and what containerd logged.
func cd2DecodeImages(t *testing.T, path string) (reflect.Value, []string, error) {
	t.Helper()
	ctx, logs := harness.CaptureContainerdLog()
	// containerd 2's defaultConfig() starts at version.ConfigVersion.
	cfg := &cd2srvconfig.Config{Version: cd2version.ConfigVersion}
	if err := cd2srvconfig.LoadConfigWithPlugins(ctx, path, cd2Plugins, cfg); err != nil {
		return reflect.Value{}, nil, err
	}
	def := cd2ImagesDefault(t)
	// A deep copy of the default, so that decoding never changes the
	// registered one (decoding into a map adds to it).
	b, err := toml2.Marshal(def.Config)
	require.NoError(t, err)
	images := reflect.New(reflect.TypeOf(def.Config).Elem())
	require.NoError(t, toml2.Unmarshal(b, images.Interface()))
	if _, err := cfg.Decode(ctx, cd2ImagesPlugin, images.Interface()); err != nil {
		return reflect.Value{}, nil, err
	}
	return images.Elem(), logs.Entries(), nil
}

// containerdView is what both containerd loaders said about one config
// file besides its config_path: deprecations and log lines, which an edit
// must leave as they were.
type containerdView struct {
	cd17Warnings, cd17Logs []string // nil for version 3
	cd2Logs                []string
}

// requireContainerdConfigPath requires both containerd loaders to accept
// the config file at path and read want as the CRI registry config_path.
// containerd 1.7 reads config versions 1 and 2 only: a version 3 file
// must be refused by it and is judged by containerd 2 alone.
func requireContainerdConfigPath(t *testing.T, cd17Bin, path string, version int, want string) containerdView {
	t.Helper()
	var view containerdView
	res := cd17Load(t, cd17Bin, path)
	if version >= 3 {
		require.Contains(t, res.LoadError, "unsupported config version `3`", "containerd 1.7 on a version 3 file")
	} else {
		require.Empty(t, res.LoadError, "containerd 1.7 LoadConfig/Decode(%s)", path)
		require.Empty(t, res.ValidateError, "containerd 1.7 ValidatePluginConfig(%s)", path)
		require.Equal(t, want, res.ConfigPath, "containerd 1.7's config_path for %s", path)
		view.cd17Warnings, view.cd17Logs = res.Warnings, res.Logs
	}
	images, err := cd2ImagesConfig(t, path)
	require.NoError(t, err, "containerd 2 LoadConfigWithPlugins/Decode(%s)", path)
	require.Equal(t, want, images.configPath, "containerd 2's %s config_path for %s", cd2ImagesPlugin, path)
	view.cd2Logs = images.logs
	return view
}

// containerdConfigFixtures are the fixtures SetConfigPath must edit, with
// the version of each and the config_path containerd reads from it as is.
// gke-style.toml (registry.mirrors) is in TestContainerdConfigMirrorsConflict
// and the dropin-* pair in TestContainerdConfigImports.
var containerdConfigFixtures = []struct {
	file       string
	version    int
	configPath string
}{
	{file: "containerd-1.6-config-default.toml", version: 2, configPath: ""},
	{file: "containerd-1.7-certsd.toml", version: 2, configPath: wantCertsDir},
	{file: "containerd-2-certsd.toml", version: 3, configPath: wantCertsDir},
	{file: "containerd-2-config-default-style.toml", version: 3, configPath: "/etc/containerd/certs.d:/etc/docker/certs.d"},
	{file: "debian12-default.toml", version: 2, configPath: ""},
	{file: "k3s-style.toml", version: 3, configPath: "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"},
}

// TestContainerdConfigSetConfigPath judges SetConfigPath with containerd's
// own config loaders: for every fixture, containerd 1.7 and 2.4 read the
// fixture's config_path before the edit, /etc/containerd/certs.d after it
// (with no new validation warning or log), and the fixture's again after
// ConfigMerger.Unmerge, which gives back the fixture byte for byte.
//
// An empty config_path before the edit means containerd 1.7 reads no
// hosts.toml. containerd 2.4's images plugin, on Linux, replaces an empty
// config_path (without mirrors) by "/etc/containerd/certs.d:/etc/docker/certs.d"
// when it starts (plugins/cri/images InitFn), after the loading judged here;
// nodetrust's Registry.Problem explains why it does not rely on that list.
func TestContainerdConfigSetConfigPath(t *testing.T) {
	require.Equal(t, wantCertsDir, nodetrustcd.CertsDir)

	// Every fixture is judged here or in one of the tests named above.
	matches, err := filepath.Glob(filepath.Join(fixtureDir, "*.toml"))
	require.NoError(t, err)
	var listed, found []string
	for _, fx := range containerdConfigFixtures {
		listed = append(listed, fx.file)
	}
	for _, m := range matches {
		name := filepath.Base(m)
		if name != "gke-style.toml" && !strings.HasPrefix(name, "dropin-") {
			found = append(found, name)
		}
	}
	require.ElementsMatch(t, found, listed, "fixtures in %s", fixtureDir)

	cd17 := buildContainerd17(t)
	for _, fx := range containerdConfigFixtures {
		t.Run(fx.file, func(t *testing.T) {
			fixture := readFixture(t, fx.file)
			dir := t.TempDir()

			before := requireContainerdConfigPath(t, cd17, writeConfig(t, filepath.Join(dir, "original.toml"), fixture), fx.version, fx.configPath)

			edited, err := nodetrustcd.SetConfigPath(fixture, nodetrustcd.CertsDir)
			require.NoError(t, err, "SetConfigPath(%s)", fx.file)
			editedPath := writeConfig(t, filepath.Join(dir, "edited.toml"), edited)
			after := requireContainerdConfigPath(t, cd17, editedPath, fx.version, wantCertsDir)
			require.Equal(t, before, after, "the edit changed what containerd warns about; edited file:\n%s", edited)

			undone, err := nodetrustcd.ConfigMerger{}.Unmerge(edited, nil)
			require.NoError(t, err)
			require.Equal(t, string(fixture), string(undone), "Unmerge(SetConfigPath(%s))", fx.file)
			requireContainerdConfigPath(t, cd17, writeConfig(t, filepath.Join(dir, "undone.toml"), undone), fx.version, fx.configPath)
		})
	}
}

// TestContainerdConfigMirrorsConflict shows with containerd's own
// validation why SetConfigPath refuses gke-style.toml: containerd 1.7
// starts its CRI plugin with the fixture as it is (mirrors are only
// deprecated), but refuses it once config_path is set next to the mirrors.
func TestContainerdConfigMirrorsConflict(t *testing.T) {
	fixture := readFixture(t, "gke-style.toml")
	_, err := nodetrustcd.SetConfigPath(fixture, nodetrustcd.CertsDir)
	require.ErrorContains(t, err, "registry.mirrors is set")

	cd17 := buildContainerd17(t)
	// The naive edit: the registry table, after its mirrors sub-table.
	naive := string(fixture) + "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"" + wantCertsDir + "\"\n"
	dir := t.TempDir()

	for _, tc := range []struct {
		name       string
		data       string
		configPath string
		validate   string // containerd 1.7 ValidatePluginConfig's error, or ""
	}{
		{name: "as-is", data: string(fixture), configPath: ""},
		{name: "naive-config_path", data: naive, configPath: wantCertsDir, validate: "`mirrors` cannot be set when `config_path` is provided"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, filepath.Join(dir, tc.name+".toml"), []byte(tc.data))

			t.Run("containerd-1.7", func(t *testing.T) {
				res := cd17Load(t, cd17, path)
				require.Empty(t, res.LoadError)
				require.Equal(t, tc.configPath, res.ConfigPath)
				require.Equal(t, []string{"docker.io"}, res.Mirrors)
				require.Equal(t, tc.validate, res.ValidateError, "containerd 1.7 ValidatePluginConfig")
			})

			// containerd 2.4 validates the images plugin's config with
			// ValidateImageConfig, which lives in an internal package
			// (internal/cri/config) and is called only from the plugin's
			// InitFn, so it cannot be called here. What can be shown is
			// that containerd 2.4's loader and migration hand the plugin
			// both mirrors and config_path, the combination that function
			// refuses with the same error (and the InitFn does not default
			// config_path when mirrors are set).
			t.Run("containerd-2", func(t *testing.T) {
				images, err := cd2ImagesConfig(t, path)
				require.NoError(t, err)
				require.Equal(t, tc.configPath, images.configPath)
				require.Equal(t, 1, images.mirrors)
			})
		})
	}
}

// TestContainerdConfigImports covers a main config that imports drop-ins,
// one of which sets config_path. nodetrust edits the file whose
// config_path wins, the drop-in, and leaves the main config alone; both
// containerd loaders, following the imports, read the drop-in's
// config_path before the edit, /etc/containerd/certs.d after it, and the
// drop-in's again after Unmerge.
func TestContainerdConfigImports(t *testing.T) {
	cd17 := buildContainerd17(t)
	dir := t.TempDir()
	confD := filepath.Join(dir, "conf.d")

	mainFixture := string(readFixture(t, "dropin-main.toml"))
	mainConfig := strings.Replace(mainFixture, strconv.Quote("/etc/containerd/conf.d/*.toml"), strconv.Quote(filepath.Join(confD, "*.toml")), 1)
	require.NotEqual(t, mainFixture, mainConfig, "dropin-main.toml no longer imports /etc/containerd/conf.d/*.toml")
	mainPath := writeConfig(t, filepath.Join(dir, "config.toml"), []byte(mainConfig))

	dropinFixture := string(readFixture(t, "dropin-certsd.toml"))
	dropin := strings.Replace(dropinFixture, `config_path = "/etc/containerd/certs.d"`, `config_path = "/etc/docker/certs.d"`, 1)
	require.NotEqual(t, dropinFixture, dropin, "dropin-certsd.toml no longer sets config_path = \"/etc/containerd/certs.d\"")
	dropinPath := filepath.Join(confD, "registry.toml")

	edited, err := nodetrustcd.SetConfigPath([]byte(dropin), nodetrustcd.CertsDir)
	require.NoError(t, err)
	undone, err := nodetrustcd.ConfigMerger{}.Unmerge(edited, nil)
	require.NoError(t, err)
	require.Equal(t, dropin, string(undone), "Unmerge(SetConfigPath(drop-in))")

	for _, tc := range []struct {
		name       string
		dropin     string
		configPath string
	}{
		{name: "before", dropin: dropin, configPath: "/etc/docker/certs.d"},
		{name: "edited", dropin: string(edited), configPath: wantCertsDir},
		{name: "undone", dropin: string(undone), configPath: "/etc/docker/certs.d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeConfig(t, dropinPath, []byte(tc.dropin))

			res := cd17Load(t, cd17, mainPath)
			require.Empty(t, res.LoadError)
			require.ElementsMatch(t, []string{mainPath, dropinPath}, res.Files, "files containerd 1.7 read")
			require.Empty(t, res.ValidateError)
			require.Equal(t, tc.configPath, res.ConfigPath, "containerd 1.7's config_path")

			images, err := cd2ImagesConfig(t, mainPath)
			require.NoError(t, err)
			require.Equal(t, tc.configPath, images.configPath, "containerd 2's config_path")

			got, err := os.ReadFile(mainPath)
			require.NoError(t, err)
			require.Equal(t, mainConfig, string(got), "the main config changed")
		})
	}
}

// TestContainerdConfigImportHidesSectionOn1x: config.toml sets config_path,
// a drop-in sets only another CRI key. containerd 2.4 merges the two and
// reads /etc/containerd/certs.d; 1.7 replaces the whole plugin section with
// the drop-in's and reads "". nodetrust's ReadRegistry sees both: no
// Problem (2.x), a Warning naming the drop-in, and EditTarget the drop-in;
// after SetConfigPath on that drop-in, both loaders read certs.d.
func TestContainerdConfigImportHidesSectionOn1x(t *testing.T) {
	cd17 := buildContainerd17(t)
	dir := t.TempDir()
	confD := filepath.Join(dir, "conf.d")
	mainConfig := fmt.Sprintf("version = 2\nimports = [%q]\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = %q\n",
		filepath.Join(confD, "*.toml"), wantCertsDir)
	mainPath := writeConfig(t, filepath.Join(dir, "config.toml"), []byte(mainConfig))
	dropin := "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n"
	dropinPath := writeConfig(t, filepath.Join(confD, "pause.toml"), []byte(dropin))

	require.Equal(t, "", cd17Load(t, cd17, mainPath).ConfigPath, "containerd 1.7 drops the main file's config_path")
	images, err := cd2ImagesConfig(t, mainPath)
	require.NoError(t, err)
	require.Equal(t, wantCertsDir, images.configPath, "containerd 2.4 keeps it")

	reg, err := nodetrustcd.ReadRegistry(dirFS{main: mainPath})
	require.NoError(t, err)
	rd := reg.Reading(nodetrustcd.Version{}, nodetrustcd.Default)
	require.Empty(t, rd.Problem)
	require.Contains(t, rd.Warning, "containerd 1.x reads no hosts.toml with this config")
	require.Equal(t, dropinPath, reg.EditTarget())

	edited, err := nodetrustcd.SetConfigPath([]byte(dropin), nodetrustcd.CertsDir)
	require.NoError(t, err)
	writeConfig(t, dropinPath, edited)
	res := cd17Load(t, cd17, mainPath)
	require.Empty(t, res.ValidateError)
	require.Equal(t, wantCertsDir, res.ConfigPath, "containerd 1.7 after the drop-in's edit")
	images, err = cd2ImagesConfig(t, mainPath)
	require.NoError(t, err)
	require.Equal(t, wantCertsDir, images.configPath, "containerd 2.4 after the drop-in's edit")
	reg, err = nodetrustcd.ReadRegistry(dirFS{main: mainPath})
	require.NoError(t, err)
	require.Empty(t, reg.Reading(nodetrustcd.Version{}, nodetrustcd.Default).Warning)
}

// dirFS serves ReadRegistry's /etc/containerd/config.toml from main and
// every other path (the imports, absolute here) as is.
type dirFS struct{ main string }

func (d dirFS) Open(name string) (fs.File, error) { return os.DirFS("/").Open(name) }

func (d dirFS) ReadFile(name string) ([]byte, error) {
	if name == nodetrustcd.ConfigFile {
		return os.ReadFile(d.main)
	}
	return os.ReadFile("/" + name)
}

func (dirFS) Glob(pattern string) ([]string, error) { return fs.Glob(os.DirFS("/"), pattern) }

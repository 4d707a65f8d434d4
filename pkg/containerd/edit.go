package containerd

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"reflect"
	"strconv"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// ConfigMergerName names ConfigMerger among hostfs mergers.
const ConfigMergerName = "containerd-config"

// Unit is containerd's systemd unit, restarted after its config changed.
const Unit = "containerd.service"

// Marks of nodetrust's edit in a containerd config file. Unmerge finds the
// edit by them, so they also tell a reader what changed and why.
const (
	markSet      = "# set by nodetrust --manage-containerd-config; undone when nodetrust is uninstalled"
	markOriginal = "#nodetrust-original# "
)

// newConfigHeader starts the config NewConfig writes.
const newConfigHeader = `# Written by nodetrust --manage-containerd-config: this node had no containerd
# config file. nodetrust removes it when it is uninstalled.
`

// NewConfig is the config file nodetrust writes when a node has none, with
// config_path set to hostsDir ("" is CertsDir); as the ours of a
// ConfigMerger merge, it names the config_path to set. The version 2 layout
// is read by containerd 1.x and migrated by 2.x; every other setting keeps
// containerd's default.
func NewConfig(hostsDir string) []byte {
	if hostsDir == "" {
		hostsDir = CertsDir
	}
	return []byte(newConfigHeader + `version = 2

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "` + hostsDir + `"
`)
}

// ConfigMerger sets the CRI registry config_path in a containerd config file
// that nodetrust did not write, with the smallest change that does it. It
// implements hostfs.Merger.
type ConfigMerger struct{}

// Merge returns base with config_path set to the one in ours (a NewConfig).
func (ConfigMerger) Merge(base, ours []byte) ([]byte, error) {
	var reg Registry
	if _, err := reg.apply("nodetrust's config", ours); err != nil || !reg.Set {
		return nil, errors.New("nodetrust's containerd config sets no config_path")
	}
	return SetConfigPath(base, reg.ConfigPath)
}

// Generated reports whether data is a config NewConfig wrote.
func (ConfigMerger) Generated(data []byte) bool {
	return bytes.HasPrefix(data, []byte(newConfigHeader))
}

// Unmerge undoes the edit Merge made, found by its marks; a file without
// them is returned as is.
func (ConfigMerger) Unmerge(current, _ []byte) ([]byte, error) {
	lines := strings.SplitAfter(string(current), "\n")
	var out []string
	for _, line := range lines {
		trimmed := strings.TrimSpace(line)
		if !strings.HasSuffix(trimmed, markSet) {
			out = append(out, line)
			continue
		}
		n := len(out)
		switch {
		case strings.HasPrefix(trimmed, "["): // an appended table: drop the blank line before it too
			if n > 0 && strings.TrimSpace(out[n-1]) == "" {
				out = out[:n-1]
			}
		case n > 0 && strings.HasPrefix(strings.TrimSpace(out[n-1]), markOriginal):
			prev := out[n-1]
			i := strings.Index(prev, markOriginal)
			out[n-1] = prev[:i] + prev[i+len(markOriginal):]
		}
	}
	return []byte(strings.Join(out, "")), nil
}

// SetConfigPath returns data, a containerd config file, with the CRI
// registry config_path set to want. An existing config_path line is
// commented out and followed by the new one; otherwise the line goes below
// the registry table's header, or a new table is appended. Nothing else
// changes: the result is checked to decode to data plus config_path, and an
// edit that cannot be made that way is an error.
func SetConfigPath(data []byte, want string) ([]byte, error) {
	var cf configFile
	if err := toml.Unmarshal(data, &cf); err != nil {
		return nil, fmt.Errorf("does not parse: %w", err)
	}
	if cf.Version == 0 {
		cf.Version = 1
	}
	plugin := criImagesPlugin(cf.Version)
	registry, _ := mapAt(cf.Plugins, plugin, "registry")
	if err := conflicts(registry); err != nil {
		return nil, err
	}
	if cur, ok := registry["config_path"].(string); ok && cur != "" && path.Clean(cur) == path.Clean(want) {
		return data, nil
	}

	loc, err := locate(data, []string{"plugins", plugin, "registry"})
	if err != nil {
		return nil, err
	}
	value := strconv.Quote(want)
	var out []byte
	switch {
	case loc.keyValue != nil:
		out = replaceLine(data, *loc.keyValue, value)
	case loc.headerEnd >= 0:
		indent := loc.indent + "  "
		out = concat(data[:loc.headerEnd], indent+"config_path = "+value+" "+markSet+"\n", data[loc.headerEnd:])
	default:
		var sep string
		if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
			sep = "\n"
		}
		out = concat(data, sep+fmt.Sprintf("\n[plugins.%q.registry] %s\n  config_path = %s %s\n", plugin, markSet, value, markSet), nil)
	}
	if err := checkEdit(data, out, plugin, want); err != nil {
		return nil, err
	}
	return out, nil
}

// conflicts reports registry settings containerd refuses next to config_path.
func conflicts(registry map[string]any) error {
	if m, _ := registry["mirrors"].(map[string]any); len(m) > 0 {
		return errors.New("registry.mirrors is set, and containerd refuses to start its CRI plugin with both mirrors and config_path (\"`mirrors` cannot be set when `config_path` is provided\"); move the mirrors to hosts.toml files under " + CertsDir + " first")
	}
	configs, _ := registry["configs"].(map[string]any)
	for host, c := range configs {
		if c, _ := c.(map[string]any); c["tls"] != nil {
			return fmt.Errorf("registry.configs.%q.tls is set, and containerd 1.x refuses to start its CRI plugin with both configs.tls and config_path; move it to %s/%s/hosts.toml first", host, CertsDir, host)
		}
	}
	return nil
}

// mapAt walks nested tables.
func mapAt(m map[string]any, keys ...string) (map[string]any, bool) {
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			return nil, false
		}
		m = next
	}
	return m, true
}

// location is where config_path is, or goes, in a file.
type location struct {
	keyValue  *kvPos // an existing config_path
	headerEnd int    // after the registry table's header line, or -1
	indent    string // of that header
}

// kvPos is a key/value expression: its start, the start of its value, and
// its end, as byte offsets.
type kvPos struct{ start, value, end int }

// locate finds config_path below the registry table whose key is table.
func locate(data []byte, table []string) (location, error) {
	loc := location{headerEnd: -1}
	want := append(append([]string(nil), table...), "config_path")
	err := walkTOML(data, "does not parse", func(h tomlHeader) {
		if !h.array && equal(h.key, table) {
			loc.indent, loc.headerEnd = h.indent, h.end
		}
	}, func(full []string, _ int, e *unstable.Node) error {
		switch {
		case equal(full, want):
			v := e.Value()
			if v.Kind != unstable.String {
				return fmt.Errorf("config_path is a %s, not a string", v.Kind)
			}
			kv := kvPos{start: int(e.Raw.Offset), value: int(v.Raw.Offset), end: int(e.Raw.Offset + e.Raw.Length)}
			if bytes.IndexByte(data[kv.start:kv.end], '\n') >= 0 {
				return errors.New("config_path spans several lines; set it by hand")
			}
			loc.keyValue = &kv
		case len(full) < len(want) && equal(full, want[:len(full)]):
			return fmt.Errorf("%s is an inline table; nodetrust edits only [table] layouts, set config_path by hand", strings.Join(full, "."))
		}
		return nil
	})
	return loc, err
}

// tomlHeader is a table header of a TOML document.
type tomlHeader struct {
	key   []string
	array bool // an array of tables, [[key]]
	// lineStart and end are the offsets of its line's start and after its
	// newline; indent is the blank space before it.
	lineStart, end int
	indent         string
}

// arrayKey starts the key of what is below an array of tables: nothing
// nodetrust looks for lives there.
const arrayKey = "\x00array"

// walkTOML parses data and calls header for each table header and
// keyValue for each key/value with its full key (its table's, tableLen
// long, and its own), stopping at the first error keyValue returns. A
// document that does not parse is an error starting with notParsed.
func walkTOML(data []byte, notParsed string, header func(tomlHeader), keyValue func(full []string, tableLen int, e *unstable.Node) error) error {
	var p unstable.Parser
	p.Reset(data)
	var current []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			key, first := keyOf(e.Key())
			start := int(first.Raw.Offset)
			lineStart := bytes.LastIndexByte(data[:start], '\n') + 1
			h := tomlHeader{key: key, array: e.Kind == unstable.ArrayTable, lineStart: lineStart,
				end: lineEnd(data, start), indent: leadingSpace(data[lineStart:start])}
			current = key
			if h.array {
				current = []string{arrayKey}
			}
			header(h)
		case unstable.KeyValue:
			key, _ := keyOf(e.Key())
			if err := keyValue(append(append([]string(nil), current...), key...), len(current), e); err != nil {
				return err
			}
		}
	}
	if err := p.Error(); err != nil {
		return fmt.Errorf("%s: %w", notParsed, err)
	}
	return nil
}

func keyOf(it unstable.Iterator) ([]string, *unstable.Node) {
	var key []string
	var first *unstable.Node
	for it.Next() {
		if first == nil {
			first = it.Node()
		}
		key = append(key, string(it.Node().Data))
	}
	return key, first
}

func equal(a, b []string) bool { return reflect.DeepEqual(a, b) }

func leadingSpace(b []byte) string {
	return string(b[:len(b)-len(bytes.TrimLeft(b, " \t"))])
}

// lineEnd is the offset after the newline ending the line at off.
func lineEnd(data []byte, off int) int {
	if i := bytes.IndexByte(data[off:], '\n'); i >= 0 {
		return off + i + 1
	}
	return len(data)
}

// replaceLine comments out the line holding kv and adds the new value after it.
func replaceLine(data []byte, kv kvPos, value string) []byte {
	lineStart := bytes.LastIndexByte(data[:kv.start], '\n') + 1
	end := lineEnd(data, kv.start)
	raw := string(data[lineStart:end])
	line := strings.TrimRight(raw, "\r\n")
	eol := raw[len(line):]
	if eol == "" {
		eol = "\n"
	}
	indent := leadingSpace(data[lineStart:kv.start])
	newLine := string(data[lineStart:kv.value]) + value + " " + markSet
	return concat(data[:lineStart], indent+markOriginal+line[len(indent):]+eol+newLine+eol, data[end:])
}

func concat(a []byte, mid string, b []byte) []byte {
	out := make([]byte, 0, len(a)+len(mid)+len(b))
	return append(append(append(out, a...), mid...), b...)
}

// checkEdit proves that edited decodes to base with config_path set and
// nothing else changed.
func checkEdit(base, edited []byte, plugin, want string) error {
	var before, after map[string]any
	if err := toml.Unmarshal(base, &before); err != nil {
		return fmt.Errorf("does not parse: %w", err)
	}
	if err := toml.Unmarshal(edited, &after); err != nil {
		return fmt.Errorf("setting config_path would make it unparsable (%v); set it by hand", err)
	}
	m := before
	for _, k := range []string{"plugins", plugin, "registry"} {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m["config_path"] = want
	if !reflect.DeepEqual(before, after) {
		return errors.New("setting config_path would change other settings; set it by hand")
	}
	return nil
}

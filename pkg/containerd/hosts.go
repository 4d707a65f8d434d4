package containerd

import (
	"bytes"
	"fmt"
	"path"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// HostsFile is the name of containerd's per-registry configuration file.
const HostsFile = "hosts.toml"

// MergerName names the HostsMerger in hostfs options.
const MergerName = "containerd-hosts"

const header = "# Written by nodetrust: the CA files trusted for this registry, beside this file.\n" +
	"# A hosts.toml you write yourself is merged with these entries, never replaced.\n"

// markAdded ends every line nodetrust adds to a hosts.toml it merges into.
const markAdded = "# added by nodetrust"

type hostsFile struct {
	CA []string `toml:"ca"`
	// Host is always present, empty: containerd 1.6 rejects a hosts.toml
	// without a host table ("invalid `host` tree") and then falls back to
	// reading *.crt files docker-style; 1.7 and later accept both.
	Host map[string]any `toml:"host"`
}

// RenderHosts returns a hosts.toml that trusts the given CA files, named
// relative to the file's directory. It has no server key, so containerd's
// default upstream applies (docker.io → registry-1.docker.io).
func RenderHosts(caFiles []string) []byte {
	body, err := toml.Marshal(hostsFile{CA: caFiles, Host: map[string]any{}})
	if err != nil { // a struct of strings always marshals
		panic(err)
	}
	return append([]byte(header), body...)
}

// Generated reports whether data is a hosts.toml nodetrust generated
// (RenderHosts), recognisable by its first line even without a record.
func Generated(data []byte) bool { return bytes.HasPrefix(data, []byte(header)) }

// noCA is the generated hosts.toml without CA files, which is not created.
var noCA = RenderHosts(nil)

// Additions are the CA files nodetrust adds to one hosts.toml: to the
// top-level ca (the upstream server) and to the ca of [host."URL"] entries.
type Additions struct {
	CA    []string
	Hosts map[string][]string
}

// additionsFile is the encoded form of Additions: the hosts.toml nodetrust
// would generate, plus the per-host additions in a table containerd never
// reads, so a file created from it is RenderHosts(CA) exactly.
type additionsFile struct {
	CA    []string            `toml:"ca"`
	Hosts map[string][]string `toml:"nodetrust_host_ca"`
}

// RenderAdditions encodes a as the ours of a HostsMerger merge.
func RenderAdditions(a Additions) []byte {
	if len(a.Hosts) == 0 {
		return RenderHosts(a.CA)
	}
	body, err := toml.Marshal(additionsFile{CA: a.CA, Hosts: a.Hosts})
	if err != nil {
		panic(err)
	}
	return body
}

// Files lists the paths of the CA files a names, for a hosts.toml in dir.
func (a Additions) Files(dir string) []string {
	var out []string
	for _, f := range a.CA {
		out = append(out, path.Join(dir, f))
	}
	for _, url := range sortedKeys(a.Hosts) {
		for _, f := range a.Hosts[url] {
			out = append(out, path.Join(dir, f))
		}
	}
	return out
}

// keep returns a without the files whose path (for a hosts.toml in dir) is
// not in present.
func (a Additions) keep(dir string, present []string) Additions {
	in := map[string]bool{}
	for _, p := range present {
		in[p] = true
	}
	out := Additions{}
	for _, f := range a.CA {
		if in[path.Join(dir, f)] {
			out.CA = append(out.CA, f)
		}
	}
	for url, fs := range a.Hosts {
		for _, f := range fs {
			if in[path.Join(dir, f)] {
				if out.Hosts == nil {
					out.Hosts = map[string][]string{}
				}
				out.Hosts[url] = append(out.Hosts[url], f)
			}
		}
	}
	return out
}

// Render returns ours for the hosts.toml at file naming only the CA files
// of present (paths relative to the host root), those that are in place.
func (HostsMerger) Render(file string, ours []byte, present []string) []byte {
	a, err := parseAdditions(ours)
	if err != nil {
		return nil
	}
	return RenderAdditions(a.keep(path.Dir(file), present))
}

// Generated reports whether data is a hosts.toml nodetrust generated: it
// starts with nodetrust's header.
func (HostsMerger) Generated(data []byte) bool { return Generated(data) }

func parseAdditions(ours []byte) (Additions, error) {
	var f additionsFile
	if err := toml.Unmarshal(ours, &f); err != nil {
		return Additions{}, fmt.Errorf("nodetrust's hosts.toml: %w", err)
	}
	return Additions{CA: f.CA, Hosts: f.Hosts}, nil
}

// HostsMerger merges nodetrust's CA files into a hosts.toml someone else
// wrote, by the smallest text edit: entries are added to existing ca lists,
// or a marked ca line is added, and nothing else changes, so [host] order,
// comments, quoting and dotted keys stay. Every result is decoded and must
// equal the original plus nodetrust's entries.
type HostsMerger struct{}

// Create returns the file nodetrust writes where there is none: the
// generated hosts.toml when it has top-level entries, else nil (a mirror's
// entries only ever go into an existing file).
func (HostsMerger) Create(ours []byte) ([]byte, error) {
	if Generated(ours) && !bytes.Equal(ours, noCA) { // RenderHosts of its CA already
		return ours, nil
	}
	a, err := parseAdditions(ours)
	if err != nil {
		return nil, err
	}
	if len(a.CA) == 0 {
		return nil, nil
	}
	return RenderHosts(a.CA), nil
}

// Merge adds the CA files of ours to base.
func (m HostsMerger) Merge(base, ours []byte) ([]byte, error) {
	a, err := parseAdditions(ours)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(base)) == 0 { // containerd ignores an empty hosts.toml
		return m.Create(ours)
	}
	doc, err := scanHosts(base)
	if err != nil {
		return nil, err
	}
	var edits []textEdit
	if len(a.CA) > 0 {
		e, err := doc.addCA(base, nil, a.CA)
		if err != nil {
			return nil, err
		}
		edits = append(edits, e...)
	}
	for _, url := range sortedKeys(a.Hosts) {
		if _, ok := doc.hosts[url]; !ok {
			continue // the entry is gone: nothing to add to
		}
		e, err := doc.addCA(base, []string{"host", url}, a.Hosts[url])
		if err != nil {
			return nil, err
		}
		edits = append(edits, e...)
	}
	out := applyEdits(base, edits)
	if len(a.CA) > 0 && !doc.hasHost { // see hostsFile.Host
		out = append(out, withNewline(out)+"[host] "+markAdded+"\n"...)
	}
	if err := checkMerge(base, out, a); err != nil {
		return nil, err
	}
	return out, nil
}

// Unmerge removes the CA files of ours from current, and the lines Merge
// added; everything else stays as it is.
func (HostsMerger) Unmerge(current, ours []byte) ([]byte, error) {
	a, err := parseAdditions(ours)
	if err != nil {
		return nil, err
	}
	drop := map[string]bool{}
	for _, f := range a.CA {
		drop[f] = true
	}
	for _, fs := range a.Hosts {
		for _, f := range fs {
			drop[f] = true
		}
	}
	doc, err := scanHosts(current)
	if err != nil {
		return nil, err
	}
	var edits []textEdit
	for _, kv := range doc.cas {
		edits = append(edits, kv.drop(current, drop)...)
	}
	out := applyEdits(current, edits)
	out = dropMarkedLines(out)
	if _, err := scanHosts(out); err != nil {
		return nil, fmt.Errorf("removing nodetrust's entries would leave an unparsable file: %w", err)
	}
	return out, nil
}

// ShadowDir is the directory name containerd looks for before the
// registry's own under certs.d: for "host:port" it tries "host_port_" first
// (an older naming), and the first one that exists wins. It returns "" for
// a registry without a port.
func ShadowDir(registry string) string {
	i := strings.LastIndex(registry, ":")
	if i <= 0 || strings.HasSuffix(registry, "]") { // no port (a bare IPv6 literal is bracketed)
		return ""
	}
	return registry[:i] + "_" + registry[i+1:] + "_"
}

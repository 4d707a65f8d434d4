// Package containerd renders containerd's registry host configuration
// (certs.d/<registry>/hosts.toml) and merges nodetrust's CA files into a
// hosts.toml that somebody else wrote.
package containerd

import (
	"bytes"
	"fmt"
	"path"
	"slices"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// HostsFile is the name of containerd's per-registry configuration file.
const HostsFile = "hosts.toml"

// MergerName names the HostsMerger in hostfs options.
const MergerName = "containerd-hosts"

const header = "# Written by nodetrust: the CA files trusted for this registry, beside this file.\n" +
	"# A hosts.toml you write yourself is merged with these entries, never replaced.\n"

const mergedHeader = "# Merged by nodetrust: its CA files were added to the top-level \"ca\" list.\n" +
	"# The original file is restored when the last nodetrust source for this registry goes.\n"

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

// Generated reports whether data is a hosts.toml RenderHosts wrote: it
// starts with nodetrust's header.
func (HostsMerger) Generated(data []byte) bool {
	return bytes.HasPrefix(data, []byte(header))
}

// Render renders nodetrust's hosts.toml for the CA files at the given paths
// (only their names are kept: they sit beside the hosts.toml).
func (HostsMerger) Render(present []string) []byte {
	names := make([]string, len(present))
	for i, p := range present {
		names[i] = path.Base(p)
	}
	return RenderHosts(names)
}

// HostsMerger merges nodetrust's CA files into the top-level ca list of a
// hosts.toml, the list that applies to the upstream server, keeping every
// other key and [host] section.
type HostsMerger struct{}

// Merge adds the CA files listed in ours to base's top-level ca.
func (HostsMerger) Merge(base, ours []byte) ([]byte, error) {
	add, err := caList(ours)
	if err != nil {
		return nil, fmt.Errorf("nodetrust's hosts.toml: %w", err)
	}
	doc, existing, err := parse(base)
	if err != nil {
		return nil, err
	}
	for _, f := range add {
		if !slices.Contains(existing, f) {
			existing = append(existing, f)
		}
	}
	doc["ca"] = existing
	if _, ok := doc["host"]; !ok {
		doc["host"] = map[string]any{} // see hostsFile.Host
	}
	return encode(mergedHeader, doc)
}

// Unmerge removes the CA files listed in ours from current's top-level ca;
// the key goes when nothing is left in it.
func (HostsMerger) Unmerge(current, ours []byte) ([]byte, error) {
	drop, err := caList(ours)
	if err != nil {
		return nil, fmt.Errorf("nodetrust's hosts.toml: %w", err)
	}
	doc, existing, err := parse(current)
	if err != nil {
		return nil, err
	}
	kept := slices.DeleteFunc(existing, func(f string) bool { return slices.Contains(drop, f) })
	if len(kept) == 0 {
		delete(doc, "ca")
	} else {
		doc["ca"] = kept
	}
	if h, ok := doc["host"].(map[string]any); ok && len(h) == 0 {
		delete(doc, "host") // the empty table Merge added
	}
	return encode("", doc)
}

func caList(data []byte) ([]string, error) {
	_, list, err := parse(data)
	return list, err
}

// parse decodes a hosts.toml and its top-level ca, which containerd accepts
// as a string or a list of strings.
func parse(data []byte) (map[string]any, []string, error) {
	doc := map[string]any{}
	if err := toml.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("hosts.toml does not parse: %w", err)
	}
	switch ca := doc["ca"].(type) {
	case nil:
		return doc, nil, nil
	case string:
		return doc, []string{ca}, nil
	case []any:
		list := make([]string, 0, len(ca))
		for _, v := range ca {
			s, ok := v.(string)
			if !ok {
				return nil, nil, fmt.Errorf("hosts.toml: top-level ca holds %T, want strings", v)
			}
			list = append(list, s)
		}
		return doc, list, nil
	default:
		return nil, nil, fmt.Errorf("hosts.toml: top-level ca is %T, want a string or a list of strings", ca)
	}
}

func encode(head string, doc map[string]any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(head)
	enc := toml.NewEncoder(&b)
	enc.SetIndentTables(true)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode hosts.toml: %w", err)
	}
	return b.Bytes(), nil
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

// Package plan turns validated sources and facts about a node into the
// desired file tree, without touching the host: one CA file per source and
// registry for each present runtime (in the directories package certsd
// names), a containerd hosts.toml per registry plus the CA entries added to
// foreign ones, trust anchors for host-trust sources, and a short hash of
// what applies.
package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/certs"
	"github.com/nodetrust/nodetrust/pkg/certsd"
	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/registry"
	"github.com/nodetrust/nodetrust/pkg/source"
	"github.com/nodetrust/nodetrust/pkg/truststore"
)

// Runtime config directories, relative to the host root. A runtime is
// present when its directory exists.
const (
	ContainerdDir = "etc/containerd"
	DockerDir     = "etc/docker"
	ContainersDir = "etc/containers"
)

// Facts describe the node a plan is for.
type Facts struct {
	// Which runtimes are present: their config directories exist.
	Containerd, Docker, Containers bool
	// ContainerdHosts is the hosts directory containerd reads (relative to
	// the host root); its parent must exist. Empty means certsd.Containerd.
	ContainerdHosts string
	// HostsFiles lists, by path relative to the host root, the hosts.toml
	// files in ContainerdHosts that nodetrust did not generate, with their
	// [host."URL"] entries: a source's CA for a registry is added to the
	// entries that point at it (a mirror or pull-through cache).
	HostsFiles map[string][]string
	// DockerBase and ContainersBase are the directories that must exist
	// for those runtimes' certs.d (their config dirs, or /etc when only
	// the daemon is installed); empty means DockerDir and ContainersDir.
	DockerBase, ContainersBase string
	// TrustStore is the OS trust store; nil when unsupported, with the
	// reason in TrustStoreErr.
	TrustStore    *truststore.Store
	TrustStoreErr error
	// NodeLabels select sources by nodetrust.io/node-selector; nil ignores
	// selectors (standalone apply without --node-labels).
	NodeLabels labels.Set
}

// Plan is the desired state of one node.
type Plan struct {
	Files []hostfs.File
	// Sources are the sources that apply on this node, sorted by ID.
	Sources []source.Source
	// NotSelected counts sources whose node selector does not match.
	NotSelected int
	// Warnings are about applying sources on this node, keyed by source.
	Warnings []Warning
	// Hash identifies what applies: equal on nodes with the same sources.
	Hash string

	paths map[string]bool // of the CA files added
}

// Warning is a problem that does not stop a source from applying.
type Warning struct {
	ID      source.ID
	Message string
}

// Build computes the plan. It is pure and deterministic.
func Build(sources []source.Source, f Facts) Plan {
	var p Plan
	p.Sources, p.NotSelected = selected(sources, f.NodeLabels)
	hosts := f.ContainerdHosts
	if hosts == "" {
		hosts = certsd.Rel(certsd.Containerd)
	}
	adds := additions{}
	for _, s := range p.Sources {
		for _, w := range s.Warnings {
			p.Warnings = append(p.Warnings, Warning{s.ID, w})
		}
		p.caFiles(s, f, hosts, adds)
		if s.HostTrust {
			p.anchors(s, f)
		}
	}
	p.hostsFiles(adds, hosts)
	sort.Slice(p.Files, func(i, j int) bool { return p.Files[i].Path < p.Files[j].Path })
	p.Hash = Hash(p.Sources)
	return p
}

// selected are the sources whose node selector matches nodeLabels (all of
// them when nil), sorted by ID, and the number of the others.
func selected(sources []source.Source, nodeLabels labels.Set) ([]source.Source, int) {
	var out []source.Source
	for _, s := range sources {
		if nodeLabels == nil || s.Matches(nodeLabels) {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID.Less(out[j].ID) })
	return out, len(sources) - len(out)
}

// additions are the CA files added to each hosts.toml, by its path.
type additions map[string]*containerd.Additions

func (a additions) of(file string) *containerd.Additions {
	if a[file] == nil {
		a[file] = &containerd.Additions{}
	}
	return a[file]
}

// caFiles adds the CA file of s for each of its registries and each
// present runtime, and notes for containerd which hosts.toml files name
// it: its registry's own in hosts, and the foreign ones with a [host]
// entry pointing at the registry.
func (p *Plan) caFiles(s source.Source, f Facts, hosts string, adds additions) {
	bundle := certs.EncodePEM(s.Certs)
	name := FileName(s.ID)
	for _, r := range s.Registries {
		if f.Containerd {
			p.add(path.Dir(hosts), path.Join(hosts, string(r), name), bundle)
			a := adds.of(path.Join(hosts, string(r), containerd.HostsFile))
			a.CA = append(a.CA, name)
			p.mirrors(f.HostsFiles, hosts, r, name, adds)
		}
		if f.Docker {
			p.add(or(f.DockerBase, DockerDir), path.Join(certsd.Rel(certsd.Docker), string(r), name), bundle)
		}
		if f.Containers {
			p.add(or(f.ContainersBase, ContainersDir), path.Join(certsd.Rel(certsd.Containers), string(r), name), bundle)
		}
	}
}

// hostsFiles adds the hosts.toml files of adds, each merged into a file
// someone else wrote and naming only the CA files in place.
func (p *Plan) hostsFiles(adds additions, hosts string) {
	for file, a := range adds {
		sort.Strings(a.CA)
		for _, cas := range a.Hosts {
			sort.Strings(cas)
		}
		p.Files = append(p.Files, hostfs.File{
			Path:          file,
			Base:          path.Dir(hosts),
			Data:          containerd.RenderAdditions(*a),
			Merger:        containerd.MergerName,
			Late:          true,
			CreateAsMerge: true,
			Needs:         a.Files(path.Dir(file)), // hostfs names only those written
		})
	}
}

// mirrors adds the CA file name of registry r to every [host] entry of a
// foreign hosts.toml that points at r, by a path relative to that file.
func (p *Plan) mirrors(files map[string][]string, hosts string, r registry.Host, name string, adds additions) {
	for file, urls := range files {
		for _, u := range urls {
			if containerd.HostOf(u) != string(r) {
				continue
			}
			rel, err := filepath.Rel(path.Dir(file), path.Join(hosts, string(r), name))
			if err != nil {
				continue
			}
			a := adds.of(file)
			if a.Hosts == nil {
				a.Hosts = map[string][]string{}
			}
			a.Hosts[u] = append(a.Hosts[u], filepath.ToSlash(rel))
		}
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// add adds a CA file, once: containerd's hosts directory may be Docker's.
func (p *Plan) add(base, file string, data []byte) {
	if p.paths[file] {
		return
	}
	if p.paths == nil {
		p.paths = map[string]bool{}
	}
	p.paths[file] = true
	p.Files = append(p.Files, hostfs.File{Path: file, Base: base, Data: data})
}

// anchors adds one anchor file per certificate, as trust stores expect.
func (p *Plan) anchors(s source.Source, f Facts) {
	if f.TrustStore == nil {
		msg := "host trust requested but not installed"
		if f.TrustStoreErr != nil {
			msg = f.TrustStoreErr.Error()
		}
		p.Warnings = append(p.Warnings, Warning{s.ID, msg})
		return
	}
	st := f.TrustStore
	stem := strings.TrimSuffix(FileName(s.ID), ".crt")
	for _, c := range s.Certs {
		p.Files = append(p.Files, hostfs.File{
			Path:    path.Join(st.AnchorDir, stem+"_"+c.SHA256[:16]+st.Ext),
			Base:    st.AnchorDir,
			Data:    certs.EncodePEM([]certs.Cert{c}),
			Refresh: true,
		})
	}
}

// FileName is the CA file of a source: nodetrust_<kind>_<namespace>_<name>.crt.
// Namespaces and names never contain "_", so no two sources share a name.
func FileName(id source.ID) string {
	return "nodetrust_" + strings.ToLower(id.Kind) + "_" + id.Namespace + "_" + id.Name + ".crt"
}

// Hash returns a short, stable hash of what the sources install.
func Hash(sources []source.Source) string {
	h := sha256.New()
	for _, s := range sources {
		h.Write([]byte(s.ID.String()))
		for _, r := range s.Registries {
			h.Write([]byte("\x00r" + string(r)))
		}
		if s.HostTrust {
			h.Write([]byte("\x00t"))
		}
		for _, c := range s.Certs {
			h.Write([]byte("\x00c" + c.SHA256))
		}
		h.Write([]byte("\n"))
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

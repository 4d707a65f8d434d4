package containerd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"path"
	"slices"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Endpoint is one registry host containerd tries for a pull, as its
// config.ConfigureHosts builds it from a hosts directory.
type Endpoint struct {
	// Scheme, Host and Path make the API root, e.g. https, registry-1.docker.io, /v2.
	Scheme string `json:"scheme"`
	Host   string `json:"host"`
	Path   string `json:"path"`
	// Capabilities are pull, resolve, push and referrers, or a subset.
	Capabilities []string `json:"capabilities"`
	// CAFiles are the CA files added to the system roots for this host,
	// as host-absolute paths.
	CAFiles []string `json:"caFiles,omitempty"`
	// SkipVerify is containerd's skip_verify: TLS is not verified.
	SkipVerify bool `json:"skipVerify,omitempty"`
	// Upstream marks the last entry: the server key, or the default.
	Upstream bool `json:"upstream,omitempty"`
}

// URL is the endpoint's API root.
func (e Endpoint) URL() string { return e.Scheme + "://" + e.Host + e.Path }

// Resolved is how containerd resolves one registry from one hosts directory.
type Resolved struct {
	// Dir is the hosts directory, relative to the host root ("" for none).
	Dir string `json:"dir"`
	// From says what was read: "hosts.toml", "*.crt files" or "defaults".
	From string `json:"from"`
	// Endpoints are tried in this order.
	Endpoints []Endpoint `json:"endpoints"`
	// Warnings are things containerd does silently (a hosts.toml it cannot
	// decode and ignores, a shape containerd 1.6 rejects).
	Warnings []string `json:"warnings,omitempty"`
}

var allCapabilities = []string{"pull", "resolve", "push", "referrers"}

// ResolveHosts returns the endpoints containerd would try for registry
// (as written in image references, host or host:port) given its chosen
// hosts directory dir inside fsys (the host root; "" when no directory
// applies): each [host."…"] table of dir/hosts.toml in file order, then
// the upstream server. Without a hosts.toml, *.crt files in dir are CAs of
// the upstream, docker-style. It models containerd v2's
// core/remotes/docker/config.ConfigureHosts; client certificates are left
// out (nodetrust does not judge them). Like containerd, a hosts.toml that
// does not decode or has invalid values is ignored (said in Warnings); an
// error is a directory that cannot be read.
func ResolveHosts(fsys fs.FS, dir, registry string) (Resolved, error) {
	dir = strings.TrimPrefix(dir, "/")
	res := Resolved{Dir: dir, From: "defaults"}
	var hosts []Endpoint
	if dir != "" {
		var err error
		if hosts, err = loadHostDir(fsys, dir, &res); err != nil {
			return res, fmt.Errorf("hosts directory %s: %w", dir, err)
		}
	}
	if len(hosts) == 0 {
		hosts = []Endpoint{{}}
	}
	last := &hosts[len(hosts)-1]
	if last.Host == "" {
		defaultUpstream(last, registry)
	}
	last.Upstream = true
	res.Endpoints = hosts
	return res, nil
}

// defaultUpstream fills in containerd's default server for registry.
func defaultUpstream(e *Endpoint, registry string) {
	e.Scheme, e.Host, e.Path, e.Capabilities = "https", registry, "/v2", slices.Clone(allCapabilities)
	switch {
	case registry == "docker.io":
		e.Host = "registry-1.docker.io"
	case isLocalhost(registry):
		// containerd speaks plain HTTP to a loopback registry on a port
		// other than 443, and does not verify TLS unless the port is 80.
		if _, port, _ := net.SplitHostPort(registry); port != "" && port != "443" {
			e.Scheme = "http"
		}
		if _, port, _ := net.SplitHostPort(registry); port != "80" {
			e.SkipVerify = true
		}
	}
}

func isLocalhost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func loadHostDir(fsys fs.FS, dir string, res *Resolved) ([]Endpoint, error) {
	b, err := fs.ReadFile(fsys, path.Join(dir, HostsFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if len(b) == 0 {
		return loadCertFiles(fsys, dir, res)
	}
	hosts, hostTree, err := parseHostsFile(dir, b)
	if err != nil {
		// containerd logs "failed to decode hosts.toml" and reads *.crt files.
		res.Warnings = append(res.Warnings, fmt.Sprintf("containerd ignores %s (%v) and falls back to *.crt files", path.Join(dir, HostsFile), err))
		return loadCertFiles(fsys, dir, res)
	}
	res.From = HostsFile
	if !hostTree {
		res.Warnings = append(res.Warnings, "containerd 1.6 rejects a hosts.toml without a [host] table (\"invalid `host` tree\") and falls back to *.crt files; 1.7 and later read it")
	}
	return hosts, nil
}

// hostFileConfig is one [host."…"] table, or the top level.
type hostFileConfig struct {
	Capabilities []string `toml:"capabilities"`
	CACert       any      `toml:"ca"`
	SkipVerify   *bool    `toml:"skip_verify"`
	OverridePath bool     `toml:"override_path"`
}

// parseHostsFile also says whether the file has a host key at all.
func parseHostsFile(dir string, b []byte) ([]Endpoint, bool, error) {
	var c struct {
		hostFileConfig
		Server      string                    `toml:"server"`
		HostConfigs map[string]hostFileConfig `toml:"host"`
	}
	if err := toml.Unmarshal(b, &c); err != nil {
		return nil, false, err
	}
	var hosts []Endpoint
	for _, h := range sortedHosts(b) {
		e, err := parseHostConfig(h, dir, c.HostConfigs[h])
		if err != nil {
			return nil, false, err
		}
		hosts = append(hosts, e)
	}
	e, err := parseHostConfig(c.Server, dir, c.hostFileConfig)
	if err != nil {
		return nil, false, err
	}
	var raw map[string]any
	_ = toml.Unmarshal(b, &raw) // it decoded above
	_, hostTree := raw["host"]
	return append(hosts, e), hostTree, nil
}

// sortedHosts lists the [host."…"] tables in file order, as containerd's
// getSortedHosts does: only table headers count, a dotted key does not.
func sortedHosts(b []byte) []string {
	var out []string
	p := unstable.Parser{}
	p.Reset(b)
	var prev string
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.Table {
			continue
		}
		var parts []string
		for it := e.Key(); it.Next(); {
			parts = append(parts, string(it.Node().Data))
		}
		if len(parts) < 2 || parts[0] != "host" || parts[1] == prev {
			continue
		}
		prev = parts[1]
		out = append(out, prev)
	}
	return out
}

func parseHostConfig(server, dir string, cfg hostFileConfig) (Endpoint, error) {
	var e Endpoint
	if server != "" {
		if err := e.setServer(server, cfg.OverridePath); err != nil {
			return Endpoint{}, err
		}
	}
	if cfg.SkipVerify != nil {
		e.SkipVerify = *cfg.SkipVerify
	}
	e.Capabilities = slices.Clone(allCapabilities)
	if len(cfg.Capabilities) > 0 {
		e.Capabilities = nil
		for _, c := range cfg.Capabilities {
			c = strings.ToLower(c)
			if !slices.Contains(allCapabilities, c) {
				return Endpoint{}, fmt.Errorf("unknown capability %v", c)
			}
			e.Capabilities = append(e.Capabilities, c)
		}
	}
	var err error
	if e.CAFiles, err = caFiles(cfg.CACert, dir); err != nil {
		return Endpoint{}, err
	}
	return e, nil
}

// setServer sets the scheme, host and API path of e from a server URL.
func (e *Endpoint) setServer(server string, overridePath bool) error {
	if !strings.HasPrefix(server, "http") {
		server = "https://" + server
	}
	u, err := url.Parse(server)
	if err != nil {
		return fmt.Errorf("unable to parse server %v: %w", server, err)
	}
	e.Scheme, e.Host = u.Scheme, u.Host
	switch {
	case u.Path != "":
		e.Path = path.Clean(u.Path)
		if !strings.HasSuffix(e.Path, "/v2") && !overridePath {
			e.Path += "/v2"
		}
	case !overridePath:
		e.Path = "/v2"
	}
	return nil
}

// caFiles are the host paths of a ca value, a string or a list of them.
func caFiles(ca any, dir string) ([]string, error) {
	switch ca := ca.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{absPath(ca, dir)}, nil
	case []any:
		var out []string
		for _, v := range ca {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("unable to cast %v to string", v)
			}
			out = append(out, absPath(s, dir))
		}
		return out, nil
	default:
		return nil, fmt.Errorf("invalid type %v for \"ca\"", ca)
	}
}

// absPath is p as the host sees it: absolute as written, else relative to
// the hosts directory (dir is relative to the host root).
func absPath(p, dir string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return "/" + path.Join(dir, p)
}

// loadCertFiles reads dir docker-style: every *.crt is a CA of the upstream.
func loadCertFiles(fsys fs.FS, dir string, res *Resolved) ([]Endpoint, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err == nil {
		res.From = "*.crt files"
	}
	var e Endpoint
	for _, f := range entries {
		if !f.IsDir() && strings.HasSuffix(f.Name(), ".crt") {
			e.CAFiles = append(e.CAFiles, "/"+path.Join(dir, f.Name()))
		}
	}
	return []Endpoint{e}, nil
}

// Package check answers "will this node's pull of REGISTRY verify?": it
// resolves the registry as each container runtime present under a host
// root would (which directory, which endpoints in which order, which CA
// files) and probes every endpoint with exactly that trust plus the host's
// system bundle. `nodetrust check` prints its Report; the agent reports it.
package check

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/pkg/certsd"
	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/plan"
	"github.com/nodetrust/nodetrust/pkg/probe"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
)

// systemBundles are the host's system CA bundles, first existing used: the
// runtimes add their configured CAs to the system roots.
var systemBundles = []string{"etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt"}

// Report is the outcome for one registry; its JSON form is stable.
type Report struct {
	Registry     string    `json:"registry"`
	HostRoot     string    `json:"hostRoot"`
	OK           bool      `json:"ok"`
	SystemBundle string    `json:"systemBundle"`
	Runtimes     []Runtime `json:"runtimes"`
}

// Runtime is how one runtime resolves the registry, and each probe.
type Runtime struct {
	Runtime   string     `json:"runtime"`
	OK        bool       `json:"ok"`
	Dir       string     `json:"dir"`
	From      string     `json:"from"`
	Warnings  []string   `json:"warnings"`
	Endpoints []Endpoint `json:"endpoints"`
	// unread is why the runtime reads none of the files nodetrust writes
	// (containerd without a hosts directory), "" when it reads them.
	unread string
}

// Endpoint is one endpoint and its probe. Problem is set instead of a
// probe when the runtime would fail before connecting (a CA file it cannot read).
type Endpoint struct {
	URL          string        `json:"url"`
	Capabilities []string      `json:"capabilities,omitempty"`
	CAFiles      []string      `json:"caFiles"`
	SkipVerify   bool          `json:"skipVerify"`
	Problem      string        `json:"problem,omitempty"`
	Probe        *probe.Result `json:"probe,omitempty"`
}

// Unreachable reports whether r fails only because no endpoint could be
// reached (refused, timed out, a name that does not resolve): nothing about
// its trust is known then.
func (r Report) Unreachable() bool {
	seen := false
	for _, rt := range r.Runtimes {
		for _, e := range rt.Endpoints {
			if e.OK() {
				continue
			}
			if e.Probe == nil {
				return false
			}
			switch e.Probe.Verdict {
			case probe.Refused, probe.Timeout, probe.DNS, probe.Unreachable:
				seen = true
			default:
				return false
			}
		}
	}
	return !r.OK && seen
}

// OK reports whether a pull through e gets past TLS.
func (e Endpoint) OK() bool { return e.Problem == "" && e.Probe != nil && e.Probe.Verdict.OK() }

// Options say what Registry cannot find out from the host root alone.
type Options struct {
	// ContainerdVersion is the running containerd's version ("": judged
	// from its config's format); ContainerdConfig overrides the discovery
	// of its main config file. See reconcile.Options.
	ContainerdVersion, ContainerdConfig string
}

// Registry resolves reg (host or host:port, as in image references) as each
// runtime present under root would and probes every endpoint with exactly
// that runtime's trust plus the system bundle, names resolved through the
// root's etc/hosts first. Runtimes are present when etc/containerd,
// etc/docker or etc/containers exists; with none, the report is not OK.
func Registry(ctx context.Context, root *hostfs.Root, reg string, opts Options) Report {
	rep := Report{Registry: reg, HostRoot: root.Dir(), OK: true}
	var system []byte
	for _, b := range systemBundles {
		if data, err := root.ReadFileInRoot(b); err == nil {
			system, rep.SystemBundle = data, "/"+b
			break
		}
	}
	hosts, _ := root.ReadFileInRoot("etc/hosts")
	p := &probe.Prober{Hosts: probe.ParseHosts(hosts)}
	fsys := reconcile.ConfigFS(root)
	var runtimes []Runtime
	if reading, ok := reconcile.ContainerdLookup(root, opts.ContainerdVersion, opts.ContainerdConfig); ok {
		runtimes = append(runtimes, containerdCheck(root, fsys, reg, reading))
	}
	if root.IsDir(plan.DockerDir) {
		rt := certsDirCheck("docker", fsys, reg, []string{certsd.Docker})
		dockerInsecure(&rt, reg, p.Hosts)
		runtimes = append(runtimes, rt)
	}
	if root.IsDir(plan.ContainersDir) {
		runtimes = append(runtimes, certsDirCheck("containers/image", fsys, reg, certsd.ContainersOrder()))
	}
	if len(runtimes) == 0 {
		rep.OK = false
	}
	probeAll(ctx, p, fsys, system, runtimes)
	for i := range runtimes {
		explainUnread(&runtimes[i])
	}
	now := time.Now()
	for i := range runtimes {
		rt := &runtimes[i]
		rt.OK = len(rt.Endpoints) > 0
		for _, e := range rt.Endpoints {
			rt.OK = rt.OK && e.OK()
			if w := expiryWarning(e, now); w != "" {
				rt.Warnings = append(rt.Warnings, w)
			}
		}
		rep.OK = rep.OK && rt.OK
	}
	rep.Runtimes = nonNil(runtimes)
	return rep
}

// explainUnread makes a failed trust verdict of a runtime that reads no
// hosts directory say so: labelling the CA again cannot help there, its
// config must change first. The verdict stays what the pull meets.
func explainUnread(rt *Runtime) {
	if rt.unread == "" {
		return
	}
	for _, e := range rt.Endpoints {
		if e.Probe == nil {
			continue
		}
		switch e.Probe.Verdict {
		case probe.UnknownAuthority, probe.IncompleteChain:
			e.Probe.Reason = "no labelled CA is in " + rt.Runtime + "'s trust, as it reads no hosts.toml: " + e.Probe.Reason
			e.Probe.Hint = rt.unread
		}
	}
}

// nonNil keeps JSON arrays arrays.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// containerdHostsDir is the hosts directory containerd's CRI picks for reg:
// per root of config_path (the whole string as one directory for the 2.1+
// transfer service), host_port_, then host, then _default; the first root
// holding any of them wins; "" when none does.
func containerdHostsDir(root *hostfs.Root, reading containerd.Reading, reg string) string {
	roots := reading.Roots
	if reading.Transfer {
		roots = []string{strings.Join(reading.Roots, ":")}
	}
	var names []string
	if s := containerd.ShadowDir(reg); s != "" {
		names = append(names, s)
	}
	names = append(names, reg, "_default")
	for _, r := range roots {
		for _, n := range names {
			if d := strings.TrimPrefix(path.Join(r, n), "/"); root.IsDir(d) {
				return d
			}
		}
	}
	return ""
}

func containerdCheck(root *hostfs.Root, fsys fs.FS, reg string, reading containerd.Reading) Runtime {
	rt := Runtime{Runtime: "containerd", Warnings: []string{}}
	dir := ""
	if reading.Problem != "" {
		rt.Warnings = append(rt.Warnings, reading.Problem) // containerd reads no hosts directory: its defaults apply
		rt.unread = reading.Problem
	} else {
		dir = containerdHostsDir(root, reading, reg)
	}
	if reading.Warning != "" {
		rt.Warnings = append(rt.Warnings, reading.Warning)
	}
	res, err := containerd.ResolveHosts(fsys, dir, reg)
	rt.Dir, rt.From = hostPath(res.Dir), res.From
	rt.Warnings = append(rt.Warnings, res.Warnings...)
	if err != nil {
		rt.Warnings = append(rt.Warnings, err.Error())
		return rt
	}
	for _, e := range res.Endpoints {
		rt.Endpoints = append(rt.Endpoints, Endpoint{
			URL: e.URL(), Capabilities: e.Capabilities, CAFiles: nonNil(e.CAFiles), SkipVerify: e.SkipVerify,
		})
	}
	return rt
}

// certsDirCheck models Docker and containers/image: the first existing
// <dir>/<registry> of dirs (host paths), its *.crt files added to the
// system roots, and https://<registry> (Docker Hub's registry-1.docker.io
// for docker.io).
func certsDirCheck(name string, fsys fs.FS, reg string, dirs []string) Runtime {
	rt := Runtime{Runtime: name, From: "defaults", Warnings: []string{}}
	host := reg
	if reg == "docker.io" { // certs.d/docker.io is read for Docker Hub's endpoint
		host = "registry-1.docker.io"
	}
	ep := Endpoint{URL: "https://" + host, CAFiles: []string{}}
	for _, d := range dirs {
		dir := path.Join(certsd.Rel(d), reg)
		entries, err := fs.ReadDir(fsys, dir)
		if err != nil {
			continue
		}
		rt.Dir, rt.From = hostPath(dir), "*.crt files"
		for _, f := range entries {
			if !f.IsDir() && strings.HasSuffix(f.Name(), ".crt") {
				ep.CAFiles = append(ep.CAFiles, hostPath(path.Join(dir, f.Name())))
			}
		}
		break
	}
	rt.Endpoints = []Endpoint{ep}
	return rt
}

// dockerInsecure applies dockerd's default insecure registry range,
// 127.0.0.0/8: a registry whose address is in it (an IP literal, or a name
// the node's hosts file maps only there) is pulled without verification,
// trying plain HTTP too. Names only DNS knows are not looked up here.
func dockerInsecure(rt *Runtime, reg string, hosts probe.Hosts) {
	host := reg
	if h, _, err := net.SplitHostPort(reg); err == nil {
		host = h
	}
	addrs := []string{strings.Trim(host, "[]")}
	if net.ParseIP(addrs[0]) == nil {
		addrs = hosts.Lookup(host)
	}
	_, loop, _ := net.ParseCIDR("127.0.0.0/8")
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip == nil || !loop.Contains(ip) {
			return
		}
	}
	if len(addrs) == 0 {
		return
	}
	rt.Endpoints[0].SkipVerify = true
	rt.Warnings = append(rt.Warnings, fmt.Sprintf("dockerd treats %s (%s) as an insecure registry (default range 127.0.0.0/8): it does not verify TLS and falls back to plain HTTP", host, strings.Join(addrs, ", ")))
}

// ExpiryWarning is how close to its expiry a verified serving certificate
// is said to be.
const ExpiryWarning = 14 * 24 * time.Hour

// expiryWarning warns about a verified endpoint whose serving certificate
// expires within ExpiryWarning.
func expiryWarning(e Endpoint, now time.Time) string {
	if e.Probe == nil || e.Probe.Verdict != probe.Verified || e.Probe.LeafNotAfter.Sub(now) > ExpiryWarning {
		return ""
	}
	left := e.Probe.LeafNotAfter.Sub(now)
	return fmt.Sprintf("the serving certificate of %s expires at %s, in %.1f days: renew it before pulls fail",
		e.URL, e.Probe.LeafNotAfter.UTC().Format(time.RFC3339), left.Hours()/24)
}

// Problem is a one-line reason of the first runtime that does not verify,
// "" when all do.
func (r Report) Problem() string {
	if len(r.Runtimes) == 0 {
		return "no container runtime on the node"
	}
	for _, rt := range r.Runtimes {
		if rt.OK {
			continue
		}
		for _, e := range rt.Endpoints {
			switch {
			case e.Problem != "":
				return fmt.Sprintf("%s: %s: %s", rt.Runtime, e.URL, e.Problem)
			case e.Probe != nil && !e.Probe.Verdict.OK():
				return fmt.Sprintf("%s: %s: %s", rt.Runtime, e.Probe.Verdict, e.Probe.Reason)
			}
		}
		return rt.Runtime + ": no endpoint"
	}
	return ""
}

// LeafNotAfter is the earliest expiry of the serving certificates seen,
// zero when none was.
func (r Report) LeafNotAfter() time.Time {
	var first time.Time
	for _, rt := range r.Runtimes {
		for _, e := range rt.Endpoints {
			if e.Probe == nil || e.Probe.LeafNotAfter.IsZero() {
				continue
			}
			if first.IsZero() || e.Probe.LeafNotAfter.Before(first) {
				first = e.Probe.LeafNotAfter
			}
		}
	}
	return first
}

// probeAll probes every endpoint, a few at a time.
func probeAll(ctx context.Context, p *probe.Prober, fsys fs.FS, system []byte, runtimes []Runtime) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range runtimes {
		for j := range runtimes[i].Endpoints {
			e := &runtimes[i].Endpoints[j]
			t, problem := target(fsys, *e, system)
			if problem != "" {
				e.Problem = problem
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				r := p.Probe(ctx, t)
				e.Probe = &r
			}()
		}
	}
	wg.Wait()
}

// target is the probe of e: its address, name and CA files' contents.
func target(fsys fs.FS, e Endpoint, system []byte) (probe.Target, string) {
	u, err := url.Parse(e.URL)
	if err != nil {
		return probe.Target{}, fmt.Sprintf("bad endpoint %s: %v", e.URL, err)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80"}[u.Scheme]
		if port == "" {
			port = "443"
		}
	}
	t := probe.Target{
		Addr: net.JoinHostPort(u.Hostname(), port), ServerName: u.Hostname(), System: system,
		SkipVerify: e.SkipVerify, PlainHTTP: u.Scheme == "http",
	}
	for _, f := range e.CAFiles {
		data, err := fs.ReadFile(fsys, strings.TrimPrefix(f, "/"))
		if err != nil {
			return t, fmt.Sprintf("unable to read CA cert %s (%v): the pull fails before connecting", f, err)
		}
		t.CAs = append(t.CAs, data)
	}
	return t, ""
}

func hostPath(rel string) string {
	if rel == "" {
		return ""
	}
	return "/" + rel
}

// WriteText prints one block per runtime, verdict first, for humans.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if len(r.Runtimes) == 0 {
		fmt.Fprintf(&b, "FAIL no container runtime under %s (none of etc/containerd, etc/docker, etc/containers)\n", r.HostRoot)
	}
	for _, rt := range r.Runtimes {
		verdict := "OK  "
		if !rt.OK {
			verdict = "FAIL"
		}
		dir := rt.Dir
		if dir == "" {
			dir = "no directory"
		}
		fmt.Fprintf(&b, "%s %s: %s from %s (%s)\n", verdict, rt.Runtime, r.Registry, dir, rt.From)
		for _, wr := range rt.Warnings {
			fmt.Fprintf(&b, "     warning: %s\n", wr)
		}
		for i, e := range rt.Endpoints {
			writeEndpoint(&b, i+1, e, r.SystemBundle)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeEndpoint(b *strings.Builder, n int, e Endpoint, bundle string) {
	verdict := "?"
	if e.Problem != "" {
		verdict = "ca-file-error"
	} else if e.Probe != nil {
		verdict = string(e.Probe.Verdict)
	}
	caps := ""
	if len(e.Capabilities) > 0 {
		caps = " [" + strings.Join(e.Capabilities, ",") + "]"
	}
	fmt.Fprintf(b, "  %d. %s %s%s\n", n, verdict, e.URL, caps)
	trust := strings.Join(e.CAFiles, ", ")
	if trust == "" {
		trust = "no CA files"
	}
	if bundle != "" {
		trust += " + " + bundle
	}
	if e.SkipVerify {
		trust += " (skip_verify)"
	}
	fmt.Fprintf(b, "     trust: %s\n", trust)
	if e.Problem != "" {
		fmt.Fprintf(b, "     %s\n", e.Problem)
		return
	}
	if e.Probe == nil {
		return
	}
	fmt.Fprintf(b, "     %s\n", e.Probe.Reason)
	if e.Probe.Hint != "" {
		fmt.Fprintf(b, "     hint: %s\n", e.Probe.Hint)
	}
	for _, c := range e.Probe.Chain {
		fmt.Fprintf(b, "     served: %s (issuer %s, until %s)\n", c.Subject, c.Issuer, c.NotAfter.Format("2006-01-02"))
	}
}

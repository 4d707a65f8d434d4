package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nodetrust/nodetrust/pkg/containerd"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/node"
	"github.com/nodetrust/nodetrust/pkg/probe"
	"github.com/nodetrust/nodetrust/pkg/registry"
)

// systemBundles are the host's system CA bundles, first existing used: the
// runtimes add their configured CAs to the system roots.
var systemBundles = []string{"etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt"}

// checkReport is check's output; its JSON form is stable.
type checkReport struct {
	Registry     string         `json:"registry"`
	HostRoot     string         `json:"hostRoot"`
	OK           bool           `json:"ok"`
	SystemBundle string         `json:"systemBundle"`
	Runtimes     []runtimeCheck `json:"runtimes"`
}

// runtimeCheck is how one runtime resolves the registry, and each probe.
type runtimeCheck struct {
	Runtime   string          `json:"runtime"`
	OK        bool            `json:"ok"`
	Dir       string          `json:"dir"`
	From      string          `json:"from"`
	Warnings  []string        `json:"warnings"`
	Endpoints []endpointCheck `json:"endpoints"`
}

// endpointCheck is one endpoint and its probe. Problem is set instead of a
// probe when the runtime would fail before connecting (a CA file it cannot read).
type endpointCheck struct {
	URL          string        `json:"url"`
	Capabilities []string      `json:"capabilities,omitempty"`
	CAFiles      []string      `json:"caFiles"`
	SkipVerify   bool          `json:"skipVerify"`
	Problem      string        `json:"problem,omitempty"`
	Probe        *probe.Result `json:"probe,omitempty"`
}

func (e endpointCheck) ok() bool { return e.Problem == "" && e.Probe != nil && e.Probe.Verdict.OK() }

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("check", flag.ContinueOnError)
	fl.SetOutput(stderr)
	hostRoot := fl.String("host-root", "/", "root of the host filesystem whose runtimes are checked")
	output := fl.String("output", "text", "text or json")
	cdVersion := fl.String("containerd-version", "", "the running containerd's version, as for apply")
	cdConfig := fl.String("containerd-config", "", "containerd's main config file on the node, as for apply")
	reg, err := parseCheckArgs(fl, args)
	if err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return usageError{fmt.Errorf("check: --output must be text or json, not %q", *output)}
	}
	root, err := hostfs.Open(*hostRoot)
	if err != nil {
		return usageError{fmt.Errorf("check: --host-root: %w", err)}
	}
	defer root.Close()
	if _, err := containerd.ParseVersion(*cdVersion); err != nil {
		return usageError{fmt.Errorf("check: --containerd-version: %w", err)}
	}
	rep := check(ctx, root, reg, *cdVersion, *cdConfig)
	if err := writeOutput(stdout, *output, rep, rep.writeText); err != nil {
		return err
	}
	if !rep.OK {
		return errProblem
	}
	return nil
}

// writeOutput writes v as indented JSON for --output json, else as text.
func writeOutput(w io.Writer, output string, v any, text func(io.Writer) error) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return text(w)
}

// parseCheckArgs takes exactly one REGISTRY, before or among the flags.
func parseCheckArgs(fl *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", errHelp
			}
			return "", usageError{err}
		}
		if fl.NArg() == 0 {
			break
		}
		pos = append(pos, fl.Arg(0))
		args = fl.Args()[1:]
	}
	if len(pos) != 1 {
		return "", usageError{fmt.Errorf("check: want one REGISTRY (host or host:port, as in image references), got %d arguments", len(pos))}
	}
	h, err := registry.Parse(pos[0])
	if err != nil {
		return "", usageError{fmt.Errorf("check: %w", err)}
	}
	return string(h), nil
}

// check resolves reg as each runtime present under root would and probes
// every endpoint with exactly that runtime's trust plus the system bundle.
func check(ctx context.Context, root *hostfs.Root, reg, cdVersion, cdConfig string) checkReport {
	rep := checkReport{Registry: reg, HostRoot: root.Dir(), OK: true}
	var system []byte
	for _, b := range systemBundles {
		if data, err := root.ReadFileInRoot(b); err == nil {
			system, rep.SystemBundle = data, "/"+b
			break
		}
	}
	hosts, _ := root.ReadFileInRoot("etc/hosts")
	p := &probe.Prober{Hosts: probe.ParseHosts(hosts)}
	fsys := rootFS{root}
	var runtimes []runtimeCheck
	if reading, ok := node.ContainerdLookup(root, cdVersion, cdConfig); ok {
		runtimes = append(runtimes, containerdCheck(root, fsys, reg, reading))
	}
	if root.IsDir("etc/docker") {
		runtimes = append(runtimes, certsDirCheck("docker", fsys, reg, []string{"etc/docker/certs.d"}))
	}
	if root.IsDir("etc/containers") {
		runtimes = append(runtimes, certsDirCheck("containers/image", fsys, reg,
			[]string{"etc/containers/certs.rootful.d", "etc/containers/certs.d", "etc/docker/certs.d"}))
	}
	if len(runtimes) == 0 {
		rep.OK = false
	}
	probeAll(ctx, p, fsys, system, runtimes)
	for i := range runtimes {
		rt := &runtimes[i]
		rt.OK = len(rt.Endpoints) > 0
		for _, e := range rt.Endpoints {
			rt.OK = rt.OK && e.ok()
		}
		rep.OK = rep.OK && rt.OK
	}
	rep.Runtimes = nonNilRuntimes(runtimes)
	return rep
}

func nonNilRuntimes(r []runtimeCheck) []runtimeCheck {
	if r == nil {
		return []runtimeCheck{}
	}
	return r
}

// containerdHostsDir is the hosts directory containerd's CRI picks for reg:
// per root of config_path (one directory, for the transfer service),
// host_port_, then host, then _default; the first root holding any wins;
// "" when none does.
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

func containerdCheck(root *hostfs.Root, fsys rootFS, reg string, reading containerd.Reading) runtimeCheck {
	rt := runtimeCheck{Runtime: "containerd", Warnings: []string{}}
	dir := ""
	if reading.Problem != "" {
		rt.Warnings = append(rt.Warnings, reading.Problem) // the CRI plugin reads no hosts directory nodetrust writes
	} else {
		dir = containerdHostsDir(root, reading, reg)
	}
	res, err := containerd.ResolveHosts(fsys, dir, reg)
	rt.Dir, rt.From = hostPath(res.Dir), res.From
	rt.Warnings = append(rt.Warnings, res.Warnings...)
	if err != nil {
		rt.Warnings = append(rt.Warnings, err.Error())
		return rt
	}
	for _, e := range res.Endpoints {
		rt.Endpoints = append(rt.Endpoints, endpointCheck{
			URL: e.URL(), Capabilities: e.Capabilities, CAFiles: nonNil(e.CAFiles), SkipVerify: e.SkipVerify,
		})
	}
	return rt
}

// certsDirCheck models Docker and containers/image: the first existing
// <dir>/<registry> of dirs, its *.crt files added to the system roots, and
// https://<registry>.
func certsDirCheck(name string, fsys rootFS, reg string, dirs []string) runtimeCheck {
	rt := runtimeCheck{Runtime: name, From: "defaults", Warnings: []string{}}
	ep := endpointCheck{URL: "https://" + reg, CAFiles: []string{}}
	for _, d := range dirs {
		dir := path.Join(d, reg)
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
	rt.Endpoints = []endpointCheck{ep}
	return rt
}

// probeAll probes every endpoint, a few at a time.
func probeAll(ctx context.Context, p *probe.Prober, fsys rootFS, system []byte, runtimes []runtimeCheck) {
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
func target(fsys rootFS, e endpointCheck, system []byte) (probe.Target, string) {
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
		data, err := fsys.ReadFile(strings.TrimPrefix(f, "/"))
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

// rootFS is the host root as an fs.FS for containerd.ResolveHosts: files
// are read as a chroot would (symlinks resolved inside the root).
type rootFS struct{ root *hostfs.Root }

func (r rootFS) Open(name string) (fs.File, error) { return os.DirFS(r.root.Dir()).Open(name) }

func (r rootFS) ReadFile(name string) ([]byte, error) { return r.root.ReadFileInRoot(name) }

func (r rootFS) ReadDir(name string) ([]fs.DirEntry, error) {
	return fs.ReadDir(os.DirFS(r.root.Dir()), name)
}

// configFS reads host paths inside the root for containerd.ReadRegistry.
type configFS struct{ root *hostfs.Root }

func (c configFS) ReadFile(hostPath string) ([]byte, error) {
	return c.root.ReadFileInRoot(strings.TrimPrefix(path.Clean(hostPath), "/"))
}

func (c configFS) Glob(pattern string) ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(c.root.Dir(), path.Clean("/"+pattern)))
	for i, m := range matches {
		rel, _ := filepath.Rel(c.root.Dir(), m)
		matches[i] = "/" + filepath.ToSlash(rel)
	}
	return matches, err
}

// writeText prints one block per runtime, verdict first.
func (r checkReport) writeText(w io.Writer) error {
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

func writeEndpoint(b *strings.Builder, n int, e endpointCheck, bundle string) {
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

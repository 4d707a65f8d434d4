package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

const (
	// upstreamHost is the registry a mirror stands in for: it does not
	// resolve, so only the mirror [host] entry can serve the pull.
	upstreamHost = "upstream.nodetrust.test"
	k3sCertsDir  = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"
	k3sConfig    = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
	rke2CertsDir = "/var/lib/rancher/rke2/agent/etc/containerd/certs.d"
	rke2Config   = "/var/lib/rancher/rke2/agent/etc/containerd/config.toml"
	// MicroK8s's containerd reads ${SNAP_DATA}/args, SNAP_DATA being the
	// snap's "current" link to its revision (here 7589).
	microk8sCertsDir = "/var/snap/microk8s/current/args/certs.d"
	microk8sConfig   = "/var/snap/microk8s/current/args/containerd.toml"
	listPath         = "/etc/containerd/certs.d:/etc/docker/certs.d"
)

// layoutApply is the part of `nodetrust apply --output json` the pulls are
// held against.
type layoutApply struct {
	OK           bool     `json:"ok"`
	Written      []string `json:"written"`
	Removed      []string `json:"removed"`
	NodeProblems []string `json:"nodeProblems"`
	NodeWarnings []string `json:"nodeWarnings"`
}

func (a layoutApply) String() string {
	problems := make([]string, len(a.NodeProblems))
	for i, p := range a.NodeProblems {
		if len(p) > 110 {
			p = p[:110] + "…"
		}
		problems[i] = p
	}
	return fmt.Sprintf("written %d, nodeProblems %q", len(a.Written), problems)
}

// nodetrustCLI runs `nodetrust apply` the way an operator on the node would.
type nodetrustCLI struct {
	bin         string
	versionFlag bool // the binary takes --containerd-version (issue 9)
}

func newNodetrustCLI(t *testing.T) nodetrustCLI {
	bin := harness.Binary(t)
	out, _ := exec.Command(bin, "apply", "-h").CombinedOutput()
	return nodetrustCLI{bin: bin, versionFlag: bytes.Contains(out, []byte("containerd-version"))}
}

// apply runs `nodetrust apply -f manifests --host-root root --output json
// [--containerd-version version]`; exit 1 (a node problem) is an answer.
func (n nodetrustCLI) apply(t *testing.T, manifests, root, version string) layoutApply {
	t.Helper()
	args := []string{"apply", "-f", manifests, "--host-root", root, "--output", "json"}
	if n.versionFlag && version != "" {
		args = append(args, "--containerd-version", version)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("nodetrust %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	var rep layoutApply
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("nodetrust apply printed %q (stderr %q): %v", stdout.String(), stderr.String(), err)
	}
	return rep
}

// secretManifest writes a directory holding one labelled Secret with c's
// certificate for registry, and returns it.
func secretManifest(t *testing.T, c *ca, registry string) string {
	t.Helper()
	dir := t.TempDir()
	doc := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata:
  name: registry-ca
  namespace: registry-system
  labels:
    nodetrust.io/ca: "true"
  annotations:
    nodetrust.io/registries: %q
type: Opaque
data:
  ca.crt: %s
`, registry, base64.StdEncoding.EncodeToString(c.PEM))
	if err := os.WriteFile(filepath.Join(dir, "source.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pullCase is one node layout: a containerd, its config, the operator's
// files before nodetrust runs, and what must happen.
type pullCase struct {
	name    string
	spec    containerdSpec // bin "" is containerd 2.2.4
	version string         // --containerd-version
	// mirror pulls upstream.nodetrust.test/e2e/img:v1 through an operator's
	// hosts.toml whose [host] entry is the registry.
	mirror      bool
	wantPull    bool // the pull after apply succeeds (else fails x509)
	wantProblem bool // nodetrust reports a node problem
	preIssue9   bool // needs issue 9's discovery (skipped with an older binary)
	// setup prepares the host root before containerd starts (a MicroK8s
	// snap's "current" link).
	setup func(t *testing.T, root string)
	// wantDir is the host directory nodetrust must write hosts.toml under
	// (the layout's, with no symlink in it); "" does not check.
	wantDir string
	// bug names a known nodetrust bug this case shows; it is skipped
	// unless NODETRUST_LAYOUTS_STRICT=1, so that the branch stays green.
	bug string
}

func layoutCases() []pullCase {
	deb := func(nodeConfig, configPath string) containerdSpec {
		return containerdSpec{bin: "containerd", nodeConfig: nodeConfig, configPath: configPath}
	}
	cd2 := func(configPath string, images ...string) containerdSpec {
		return containerdSpec{v3: true, nodeConfig: "/etc/containerd/config.toml", configPath: configPath, images: images}
	}
	return []pullCase{
		{name: "1.6: single directory", spec: debianSpec, version: "1.6.20", wantPull: true},
		{name: "1.6: two-directory list", spec: deb("/etc/containerd/config.toml", listPath), version: "1.6.20", wantPull: true, preIssue9: true},
		{name: "1.6: k3s layout (no /etc/containerd)", spec: deb(k3sConfig, k3sCertsDir), version: "1.6.20", wantPull: true, preIssue9: true},
		{name: "1.6: RKE2 layout (no /etc/containerd)", spec: deb(rke2Config, rke2CertsDir), version: "1.6.20", wantPull: true, preIssue9: true,
			wantDir: strings.TrimPrefix(rke2CertsDir, "/")},
		{name: "1.6: MicroK8s layout (snap revision behind current)", spec: deb(microk8sConfig, microk8sCertsDir), version: "1.6.20", wantPull: true, preIssue9: true,
			setup: microk8sSnap, wantDir: "var/snap/microk8s/7589/args/certs.d"},
		{name: "1.6: mirror [host] of upstream.nodetrust.test", spec: debianSpec, version: "1.6.20", mirror: true, wantPull: true, preIssue9: true},
		{name: "2.2: transfer service, two-directory list", spec: cd2(listPath), version: "2.2.4", wantPull: false, wantProblem: true},
		{name: "2.2: discard_unpacked_layers, two-directory list", spec: cd2(listPath, "discard_unpacked_layers = true"), version: "2.2.4", wantPull: true, preIssue9: true},
		{name: "2.2: use_local_image_pull, two-directory list", spec: cd2(listPath, "use_local_image_pull = true"), version: "2.2.4", wantPull: true, preIssue9: true},
		{name: "2.2: transfer service, single directory", spec: cd2("/etc/containerd/certs.d"), version: "2.2.4", wantPull: true},
		{name: "2.2: v2 config, discard_unpacked_layers beside runtimes, list", version: "2.2.4", wantPull: true, preIssue9: true,
			spec: containerdSpec{nodeConfig: "/etc/containerd/config.toml", configPath: listPath,
				images: []string{"discard_unpacked_layers = true", `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]`, `  runtime_type = "io.containerd.runc.v2"`}}},
		{name: "2.2: v2 config, discard_unpacked_layers without runtimes, list", version: "2.2.4", wantPull: false, wantProblem: true,
			spec: containerdSpec{nodeConfig: "/etc/containerd/config.toml", configPath: listPath, images: []string{"discard_unpacked_layers = true"}}},
	}
}

// layoutEnv is what every layout case shares.
type layoutEnv struct {
	hostsFile string
	reg       *dockerRegistry
	ca        *ca
	cli       nodetrustCLI
	cd2       string
	strict    bool
}

// TestLayoutPulls pulls through the CRI of real containerds (Debian's 1.6.20,
// 2.2.4 built from Go modules) on each node layout, before and after
// `nodetrust apply`, and holds nodetrust's node problems against what the
// pull did; then it replays a k3s restart over nodetrust's files.
func TestLayoutPulls(t *testing.T) {
	harness.SkipUnlessReal(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: unshare -m, mount --bind")
	}
	for _, b := range []string{"docker-registry", "containerd", "unshare"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (%v): run test/scripts/deps.sh", b, err)
		}
	}
	rep := newReportAs(t, "nodetrust layout pulls report (test/e2e TestLayoutPulls)", "NODETRUST_LAYOUT_REPORT")
	env := layoutEnv{
		hostsFile: filepath.Join(t.TempDir(), "hosts.alias"),
		cli:       newNodetrustCLI(t),
		cd2:       harness.Containerd2Bin(t),
		strict:    os.Getenv("NODETRUST_LAYOUTS_STRICT") == "1",
	}
	if err := hostsWithAlias(env.hostsFile); err != nil {
		t.Fatal(err)
	}
	rep.Note("nodetrust: %s (--containerd-version: %v)", env.cli.bin, env.cli.versionFlag)
	rep.Note("containerd 2: %s", env.cd2)
	rep.Step("registry: fresh CA, docker-registry TLS on 127.0.0.1, push e2e/img:v1", func() string {
		env.ca = newCA("nodetrust layout CA")
		env.reg = newDockerRegistry(t)
		ready, err := env.reg.start(env.ca.serving(), env.ca)
		if err != nil {
			t.Fatal(err)
		}
		dig, err := env.reg.push(env.ca)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("ready in %.2fs, pushed %s", ready.Seconds(), shortID(dig.String()))
	})
	for _, pc := range layoutCases() {
		skip := env.skipReason(pc.preIssue9)
		if pc.bug != "" && !env.strict {
			skip = "known bug: " + pc.bug + "; NODETRUST_LAYOUTS_STRICT=1 runs it"
		}
		runLayoutCase(t, rep, pc.name, skip, func(t *testing.T, note func(string)) { pc.run(t, env, note) })
	}
	// The same rewrite in /etc/containerd/certs.d needs no discovery, only
	// issue 9's coexistence (merge into the file there now, never delete
	// another writer's file), which a binary without issue 9 lacks too.
	runLayoutCase(t, rep, "1.6: k3s-style rewrite in /etc/containerd/certs.d, apply again", env.skipReason(true), func(t *testing.T, note func(string)) {
		k3sRestart(t, env, debianSpec, note)
	})
	runLayoutCase(t, rep, "1.6: k3s restart: dir removed, k3s's hosts.toml, apply again", env.skipReason(true), func(t *testing.T, note func(string)) {
		k3sRestart(t, env, containerdSpec{bin: "containerd", nodeConfig: k3sConfig, configPath: k3sCertsDir}, note)
	})
}

// skipReason says why a case that needs issue 9 (preIssue9) is skipped
// with this binary, or "".
func (env layoutEnv) skipReason(preIssue9 bool) string {
	if preIssue9 && !env.cli.versionFlag && !env.strict {
		return "needs issue 9 (binary has no --containerd-version); NODETRUST_LAYOUTS_STRICT=1 runs it"
	}
	return ""
}

// runLayoutCase runs fn as a subtest (skipped when skip is set) and records
// it as one report row, with the notes fn made up to its end or its failure.
func runLayoutCase(t *testing.T, rep *report, name, skip string, fn func(t *testing.T, note func(string))) {
	start := time.Now()
	var notes []string
	result := "FAIL"
	t.Run(name, func(t *testing.T) {
		if skip != "" {
			result = "skip"
			notes = append(notes, skip)
			t.Skip(skip)
		}
		fn(t, func(s string) { notes = append(notes, s) })
		if !t.Failed() {
			result = "ok"
		}
	})
	rep.Add(name, result, time.Since(start).Seconds(), strings.Join(notes, "; "))
}

// run starts the case's containerd on a fresh host root, pulls before and
// after apply and after the source is gone.
func (pc pullCase) run(t *testing.T, env layoutEnv, note func(string)) {
	root := t.TempDir()
	spec := pc.spec
	if spec.bin == "" {
		spec.bin = env.cd2
	}
	if pc.setup != nil {
		pc.setup(t, root)
	}
	ctrd, took := startContainerdSpec(t, env.hostsFile, root, spec)
	ref := env.reg.imageRef()
	note(fmt.Sprintf("%s up in %.2fs", ctrd.version, took.Seconds()))
	var mirrorFile, mirrorHosts string
	if pc.mirror {
		ref = upstreamHost + "/e2e/img:v1"
		dir := filepath.Join(root, "etc/containerd/certs.d", upstreamHost)
		mirrorFile = filepath.Join(dir, "hosts.toml")
		hosts := fmt.Sprintf("server = \"https://%s\"\n\n[host.\"https://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", upstreamHost, env.reg.name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mirrorFile, []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
		mirrorHosts = hosts
	}
	if _, _, err := ctrd.pull(ref); err == nil {
		t.Fatalf("before apply: pull of %s succeeded", ref)
	}
	note("before apply: CRI pull fails")
	manifests := secretManifest(t, env.ca, env.reg.name())
	applied := env.cli.apply(t, manifests, root, pc.version)
	note("apply: " + applied.String())
	if pc.wantDir != "" {
		if !slices.ContainsFunc(applied.Written, func(w string) bool {
			return strings.HasPrefix(strings.TrimPrefix(w, "/"), pc.wantDir+"/") && strings.HasSuffix(w, "/hosts.toml")
		}) {
			t.Errorf("apply wrote %q, want a hosts.toml under %s", applied.Written, pc.wantDir)
		} else {
			note("hosts.toml written under " + pc.wantDir)
		}
	}
	if pc.wantProblem != (len(applied.NodeProblems) > 0) {
		t.Errorf("nodetrust nodeProblems %q, want a problem: %v", applied.NodeProblems, pc.wantProblem)
	}
	if !pc.wantPull {
		note(expectPull(t, ctrd, ref, false, note, "after apply"))
		return
	}
	note(expectPull(t, ctrd, ref, true, note, "after apply"))
	if log, err := os.ReadFile(ctrd.proc.LogPath); err == nil && bytes.Contains(log, []byte("Falling back to local image pull mode")) {
		note("containerd logged: falling back to local image pull")
	}
	removed := env.cli.apply(t, t.TempDir(), root, pc.version)
	note(fmt.Sprintf("source gone (removed %d): %s", len(removed.Removed), expectPull(t, ctrd, ref, false, note, "after removal")))
	if pc.mirror {
		if got, err := os.ReadFile(mirrorFile); err != nil || string(got) != mirrorHosts {
			t.Errorf("the operator's %s after removal: %v\n%s\nwant byte for byte:\n%s", mirrorFile, err, got, mirrorHosts)
		} else {
			note("operator's mirror hosts.toml restored byte for byte")
		}
	}
}

// microk8sSnap lays out a MicroK8s snap: its revision directory and the
// "current" link to it, which containerd's config_path goes through.
func microk8sSnap(t *testing.T, root string) {
	snap := filepath.Join(root, "var/snap/microk8s")
	if err := os.MkdirAll(filepath.Join(snap, "7589/args"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("7589", filepath.Join(snap, "current")); err != nil {
		t.Fatal(err)
	}
}

// k3sRestart replays what k3s does at every start to a host in its
// registries.yaml: RemoveAll of the host's directory, then its own
// hosts.toml. nodetrust's next apply must trust the CA again with k3s's
// content kept, and give k3s's file back byte for byte when the source goes.
func k3sRestart(t *testing.T, env layoutEnv, spec containerdSpec, note func(string)) {
	root := t.TempDir()
	ctrd, _ := startContainerdSpec(t, env.hostsFile, root, spec)
	ref := env.reg.imageRef()
	manifests := secretManifest(t, env.ca, env.reg.name())
	first := env.cli.apply(t, manifests, root, "1.6.20")
	note("first apply (" + first.String() + "): " + expectPull(t, ctrd, ref, true, note, "first apply"))

	dir := filepath.Join(root, spec.configPath, env.reg.name())
	k3sFile := fmt.Sprintf("# File generated by k3s. DO NOT EDIT.\nserver = \"https://%[1]s\"\n\n[host.\"https://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", env.reg.name())
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(k3sFile), 0o600); err != nil {
		t.Fatal(err)
	}
	note("k3s restarted: " + expectPull(t, ctrd, ref, false, note, "after the k3s restart"))

	again := env.cli.apply(t, manifests, root, "1.6.20")
	merged, err := os.ReadFile(filepath.Join(dir, "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{"# File generated by k3s. DO NOT EDIT.", fmt.Sprintf("[host.\"https://%s\"]", env.reg.name())} {
		if !strings.Contains(string(merged), keep) {
			t.Errorf("merged hosts.toml lost k3s's %q:\n%s", keep, merged)
		}
	}
	note("apply again (" + again.String() + "): " + expectPull(t, ctrd, ref, true, note, "apply after the k3s restart"))

	env.cli.apply(t, t.TempDir(), root, "1.6.20")
	restored, err := os.ReadFile(filepath.Join(dir, "hosts.toml"))
	if err != nil {
		t.Fatalf("k3s's hosts.toml gone after the source went: %v", err)
	}
	if string(restored) != k3sFile {
		t.Errorf("k3s's hosts.toml not restored byte for byte:\n%s\nwant:\n%s", restored, k3sFile)
	}
	note("source gone: k3s's file restored byte for byte, " + expectPull(t, ctrd, ref, false, note, "after removal"))
}

// expectPull pulls ref through CRI and requires success (ok) or an
// unknown-authority failure; a wrong outcome is also noted for the report
// before the case fails.
func expectPull(t *testing.T, ctrd *containerdNode, ref string, ok bool, note func(string), when string) string {
	t.Helper()
	ctrd.sameProcess(t)
	id, took, err := ctrd.pull(ref)
	switch {
	case ok && err == nil:
		return fmt.Sprintf("CRI pull ok in %.2fs (%s)", took.Seconds(), shortID(id))
	case !ok && err != nil && strings.Contains(err.Error(), x509Unknown):
		return fmt.Sprintf("CRI pull fails x509 in %.2fs", took.Seconds())
	case ok:
		note(fmt.Sprintf("%s: CRI pull failed: ...%s", when, tailString(err.Error(), 160)))
		t.Fatalf("%s: CRI pull of %s: %v", when, ref, err)
	case err == nil:
		note(when + ": CRI pull succeeded, want x509")
		t.Fatalf("%s: CRI pull of %s succeeded, want %q", when, ref, x509Unknown)
	default:
		note(fmt.Sprintf("%s: CRI pull failed, not x509: ...%s", when, tailString(err.Error(), 160)))
		t.Fatalf("%s: CRI pull of %s failed with %v, want %q", when, ref, err, x509Unknown)
	}
	return ""
}

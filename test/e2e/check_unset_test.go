package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
)

// TestCheckConfigPathUnset runs check on a node whose containerd 1.6 has no
// config_path: it reads no hosts.toml, so the CA nodetrust writes cannot
// make its pulls verify. apply must say so (a "degraded node:" problem that
// names config_path; its exit status stays 0, as every source applied), check
// must call containerd's pull unverified with the config_path fix as its
// hint (not "label the CA": it is labelled), and a real CRI pull must fail
// x509, the kind of failure check names.
func TestCheckConfigPathUnset(t *testing.T) {
	harness.SkipUnlessReal(t)
	harness.SkipUnlessRoot(t, "unshare -m, mount --bind")
	bin := harness.Binary(t)
	root := t.TempDir()
	hostsFile := filepath.Join(root, "etc/hosts")
	if err := os.MkdirAll(filepath.Dir(hostsFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := hostsWithAlias(hostsFile); err != nil {
		t.Fatal(err)
	}
	unset := containerdSpec{bin: "containerd", nodeConfig: "/etc/containerd/config.toml"}
	ctrd, _ := startContainerdSpec(t, hostsFile, root, unset)

	good := harness.Issue(harness.Template{CN: "check CA", CA: true}, nil)
	reg := newDockerRegistry(t)
	if _, err := reg.start(harness.Issue(harness.Template{CN: registryHost, Names: []string{registryHost, "localhost", "127.0.0.1"}}, good).Chain(), asCA(good)); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.push(asCA(good)); err != nil {
		t.Fatal(err)
	}

	manifests := secretManifest(t, asCA(good), reg.name())
	r, err := run(exec.Command(bin, "apply", "-f", manifests, "--host-root", root, "--containerd-version", "1.6.20"))
	if err != nil {
		t.Fatal(err)
	}
	if r.code != 0 || !strings.Contains(r.out, "degraded node: containerd 1.6 reads no hosts.toml: config_path is unset") {
		t.Fatalf("apply on a containerd without config_path: exit %d, want 0 and a node problem naming config_path\n%s", r.code, r.out)
	}
	t.Logf("apply (exit %d):\n%s", r.code, r.out)

	r, err = run(exec.Command(bin, "check", reg.name(), "--host-root", root, "--containerd-version", "1.6.20", "--output", "json"))
	if err != nil {
		t.Fatal(err)
	}
	var out checkOutput
	if err := json.Unmarshal([]byte(r.out), &out); err != nil {
		t.Fatalf("check --output json: %v\n%s", err, r.out)
	}
	t.Logf("check (exit %d):\n%s", r.code, r.out)
	if out.OK || r.code != 1 {
		t.Fatalf("check says ok=%v (exit %d) for a containerd that reads no hosts.toml", out.OK, r.code)
	}
	cdOK, verdict, reason, hint := out.verdict(t, "containerd")
	if !strings.HasPrefix(reason, "no labelled CA is in containerd's trust, as it reads no hosts.toml") || !strings.Contains(hint, "set config_path") {
		t.Fatalf("check's containerd reason %q and hint %q must name the unread hosts.toml and the config_path fix", reason, hint)
	}
	_, _, pullErr := ctrd.pull(reg.name() + "/e2e/img:v1")
	t.Logf("containerd: check %s (%s); %s", verdict, reason, agree(t, "CRI pull", cdOK, verdict, pullErr))
}

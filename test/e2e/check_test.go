package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/harness"
)

// cnOnlyHost is the seed's registry name: a CN-only certificate for it,
// reached through an /etc/hosts line.
const cnOnlyHost = "docker-registry"

// checkOutput is the part of `nodetrust check --output json` this suite reads.
type checkOutput struct {
	OK       bool `json:"ok"`
	Runtimes []struct {
		Runtime   string `json:"runtime"`
		OK        bool   `json:"ok"`
		Dir       string `json:"dir"`
		Endpoints []struct {
			URL     string   `json:"url"`
			CAFiles []string `json:"caFiles"`
			Problem string   `json:"problem"`
			Probe   *struct {
				Verdict string `json:"verdict"`
				Reason  string `json:"reason"`
				Hint    string `json:"hint"`
			} `json:"probe"`
		} `json:"endpoints"`
	} `json:"runtimes"`
}

// verdict is runtime rt's single endpoint verdict, with reason and hint.
func (c checkOutput) verdict(t *testing.T, rt string) (ok bool, verdict, reason, hint string) {
	t.Helper()
	for _, r := range c.Runtimes {
		if r.Runtime != rt {
			continue
		}
		if len(r.Endpoints) != 1 || r.Endpoints[0].Probe == nil {
			t.Fatalf("%s: want one probed endpoint, got %+v", rt, r.Endpoints)
		}
		p := r.Endpoints[0].Probe
		return r.OK, p.Verdict, p.Reason, p.Hint
	}
	t.Fatalf("check reported no %s runtime: %+v", rt, c)
	return false, "", "", ""
}

// pullKinds maps what a Go runtime's pull error says to the check verdicts
// that explain it: the x509 error kind must match, not only "both failed".
var pullKinds = []struct {
	text     string
	verdicts []string
}{
	{"x509: certificate signed by unknown authority", []string{"unknown-authority", "incomplete-chain"}},
	{"x509: certificate relies on legacy Common Name field", []string{"name-not-covered"}},
	{"x509: certificate is valid for", []string{"name-not-covered"}},
	{"x509: certificate is not valid for any names", []string{"name-not-covered"}},
	{"x509: certificate has expired or is not yet valid", []string{"expired", "not-yet-valid"}},
	{"connection refused", []string{"connection-refused"}},
	{"no such host", []string{"dns-failure"}},
}

// pullKind is the verdicts that explain a failed pull's error text.
func pullKind(errText string) []string {
	for _, k := range pullKinds {
		if strings.Contains(errText, k.text) {
			return k.verdicts
		}
	}
	return nil
}

// agree fails t unless check's verdict for one runtime equals the real
// pull's outcome: both ok, or both failed with the same error kind.
func agree(t *testing.T, who string, checkOK bool, verdict string, pullErr error) string {
	t.Helper()
	if pullErr == nil {
		if !checkOK {
			t.Fatalf("%s pull succeeded but check says %s", who, verdict)
		}
		return who + " ok"
	}
	kinds := pullKind(pullErr.Error())
	if checkOK {
		t.Fatalf("%s pull failed (%v) but check says %s", who, pullErr, verdict)
	}
	found := false
	for _, k := range kinds {
		found = found || k == verdict
	}
	if !found {
		t.Fatalf("%s pull failed with %q (kinds %v), check says %s", who, tailString(pullErr.Error(), 160), kinds, verdict)
	}
	return fmt.Sprintf("%s fails: ...%s", who, tailString(pullErr.Error(), 70))
}

// checkCase is one registry situation: what the registry serves, which CA
// the labelled Secret holds, and what check must say.
type checkCase struct {
	name     string
	serve    func() error // (re)start the registry, nil: as it is
	registry string       // as in image references
	caPEM    []byte
	verdict  string
	reason   string // substrings of check's reason and hint
	hint     string
}

// TestCheckMatchesPulls runs `nodetrust check` against real docker-registry
// instances on 127.0.0.1 under alias names, with the files put in place by
// `nodetrust apply`, and asserts that its verdict equals the outcome of a
// real CRI pull through Debian's containerd 1.6 and of skopeo (containers/image)
// in every case.
func TestCheckMatchesPulls(t *testing.T) {
	harness.SkipUnlessReal(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: unshare -m, mount --bind")
	}
	for _, b := range []string{"docker-registry", "containerd", "skopeo", "unshare", "openssl"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (%v): run test/scripts/deps.sh", b, err)
		}
	}
	realHosts, _ := os.ReadFile("/etc/hosts")
	rep := checkReport(t, "check-pulls.txt")
	bin := ""
	rep.Step("build nodetrust (or $NODETRUST_BIN)", func() string {
		bin = harness.Binary(t)
		return bin
	})

	// The node: containerd and containers/image present, its /etc/hosts
	// naming both aliases; the same file is containerd's and skopeo's
	// /etc/hosts in their mount namespaces.
	root := t.TempDir()
	for _, d := range []string{"etc/containerd", "etc/containers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hostsFile := filepath.Join(root, "etc/hosts")
	if err := hostsWithAlias(hostsFile); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(hostsFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "127.0.0.1 %s\n", cnOnlyHost)
	f.Close()
	emptyDir := t.TempDir()

	var ctrd *containerdNode
	rep.Step("containerd 1.6 in unshare -m (/etc/hosts = host root's), config_path in host root", func() string {
		var took time.Duration
		ctrd, took = startContainerd(t, hostsFile, root)
		rep.Note("containerd: %s, pid %d", ctrd.version, ctrd.pid)
		return fmt.Sprintf("%s ready in %.2fs", ctrd.version, took.Seconds())
	})

	good := harness.Issue(harness.Template{CN: "check CA", CA: true}, nil)
	wrong := harness.Issue(harness.Template{CN: "some other CA", CA: true}, nil)
	names := []string{registryHost, cnOnlyHost, "localhost", "127.0.0.1"}
	reg := newDockerRegistry(t)
	rep.Step("registry: docker-registry on 127.0.0.1 signed by the check CA, push e2e/img:v1", func() string {
		if _, err := reg.start(harness.Issue(harness.Template{CN: registryHost, Names: names}, good).Chain(), asCA(good)); err != nil {
			t.Fatal(err)
		}
		dig, err := reg.push(asCA(good))
		if err != nil {
			t.Fatal(err)
		}
		rep.Note("registry: docker-registry %s as %s", reg.loopback(), reg.name())
		return "pushed " + shortID(dig.String())
	})
	with := func(tmpl harness.Template, parent *harness.CA, chain ...*harness.CA) func() error {
		return func() error {
			_, err := reg.start(harness.Issue(tmpl, parent).Chain(chain...), nil)
			return err
		}
	}
	cnOnly := opensslCNOnly(t, cnOnlyHost)
	inter := harness.Issue(harness.Template{CN: "check intermediate CA", CA: true}, good)
	closedPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	port := reg.Port
	cases := []checkCase{
		{name: "the right CA", registry: reg.name(), caPEM: good.PEM, verdict: "verified",
			reason: "anchored at CN=check CA"},
		{name: "the wrong CA", registry: reg.name(), caPEM: wrong.PEM, verdict: "unknown-authority",
			reason: "the labelled CA did not sign this chain: issuer is CN=check CA"},
		{name: "a CN-only self-signed certificate as its own CA (openssl req -x509 -subj /CN=docker-registry)",
			serve:    func() error { _, err := reg.start(cnOnly, nil); return err },
			registry: fmt.Sprintf("%s:%d", cnOnlyHost, port), caPEM: cnOnly.CertPEM, verdict: "name-not-covered",
			hint: "certificate has only CN=docker-registry; Go runtimes ignore the Common Name: reissue with subjectAltName DNS:docker-registry"},
		{name: "a leaf whose intermediate the registry does not send",
			serve:    with(harness.Template{CN: registryHost, Names: names, AIA: "http://pki.nodetrust.test/intermediate.crt"}, inter),
			registry: reg.name(), caPEM: good.PEM, verdict: "incomplete-chain",
			reason: "the issuer of CN=registry.nodetrust.test, CN=check intermediate CA, is missing"},
		{name: "the intermediate sent: the same root verifies",
			serve:    with(harness.Template{CN: registryHost, Names: names}, inter, inter),
			registry: reg.name(), caPEM: good.PEM, verdict: "verified",
			reason: "CN=check intermediate CA ← CN=check CA"},
		{name: "an expired serving certificate",
			serve: with(harness.Template{CN: registryHost, Names: names,
				NotBefore: time.Now().Add(-72 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}, good),
			registry: reg.name(), caPEM: good.PEM, verdict: "expired",
			reason: "serving certificate CN=registry.nodetrust.test expired at"},
		{name: "a closed port", registry: fmt.Sprintf("%s:%d", registryHost, closedPort), caPEM: good.PEM,
			verdict: "connection-refused", reason: fmt.Sprintf("connection refused by 127.0.0.1:%d", closedPort)},
		{name: "an unknown name", registry: fmt.Sprintf("nosuch.nodetrust.test:%d", port), caPEM: good.PEM,
			verdict: "dns-failure", reason: "cannot resolve nosuch.nodetrust.test"},
	}
	manifests := t.TempDir()
	for i, c := range cases {
		rep.Step(fmt.Sprintf("%d. %s → %s", i+1, c.name, c.verdict), func() string {
			if c.serve != nil {
				if err := c.serve(); err != nil {
					t.Fatal(err)
				}
			}
			manifest := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata:
  name: registry-ca
  namespace: %s
  labels: {%s: "true"}
  annotations: {%s: %q}
stringData:
  ca.crt: %q
`, ns, harness.LabelCA, harness.AnnRegistries, c.registry, c.caPEM)
			if err := os.WriteFile(filepath.Join(manifests, "ca.yaml"), []byte(manifest), 0o644); err != nil {
				t.Fatal(err)
			}
			if r, err := run(exec.Command(bin, "apply", "-f", manifests, "--host-root", root)); err != nil || r.code != 0 {
				t.Fatalf("nodetrust apply: exit %d %v\n%s", r.code, err, r.out)
			}
			r, err := run(exec.Command(bin, "check", c.registry, "--host-root", root, "--output", "json"))
			if err != nil {
				t.Fatal(err)
			}
			var out checkOutput
			if err := json.Unmarshal([]byte(r.out), &out); err != nil {
				t.Fatalf("check --output json: %v\n%s", err, r.out)
			}
			if want := map[bool]int{true: 0, false: 1}[out.OK]; r.code != want {
				t.Fatalf("check exit %d with ok=%v\n%s", r.code, out.OK, r.out)
			}
			var details []string
			for _, rt := range []string{"containerd", "containers/image"} {
				_, verdict, reason, hint := out.verdict(t, rt)
				if verdict != c.verdict || !strings.Contains(reason, c.reason) || !strings.Contains(hint, c.hint) {
					t.Fatalf("%s: check says %s: %s (hint %q); want %s with %q, hint %q", rt, verdict, reason, hint, c.verdict, c.reason, c.hint)
				}
				if rt == "containerd" {
					details = append(details, fmt.Sprintf("check: %s (%.70s…)", verdict, reason))
				}
			}
			ref := c.registry + "/e2e/img:v1"
			_, _, pullErr := ctrd.pull(ref)
			cdOK, cdVerdict, _, _ := out.verdict(t, "containerd")
			details = append(details, agree(t, "CRI pull", cdOK, cdVerdict, pullErr))
			sk := skopeo(t, hostsFile, filepath.Join(root, "etc/containers"), emptyDir, ref)
			var skErr error
			if sk.code != 0 {
				skErr = fmt.Errorf("skopeo exit %d: %s", sk.code, sk.out)
			}
			ciOK, ciVerdict, _, _ := out.verdict(t, "containers/image")
			details = append(details, agree(t, "skopeo", ciOK, ciVerdict, skErr))
			details = append(details, agentVerifies(t, root, manifests, c.registry, out.OK))
			return strings.Join(details, "; ")
		})
	}
	rep.Step("host /etc untouched", func() string {
		now, _ := os.ReadFile("/etc/hosts")
		if string(now) != string(realHosts) {
			t.Fatal("the real /etc/hosts changed")
		}
		if m := mountsUnder("/etc/hosts", "/etc/containers", "/etc/docker"); len(m) > 0 {
			t.Fatalf("test mounts visible on the host: %v", m)
		}
		return "/etc/hosts unchanged, no test mounts on the host"
	})
}

// agentVerifies runs `nodetrust agent --source-dir --verify` on the same root
// and manifests until its /metrics has verified reg, and fails t unless the
// agent's verdict (nodetrust_registry_verified) equals check's.
func agentVerifies(t *testing.T, root, manifests, reg string, checkOK bool) string {
	t.Helper()
	a := harness.StartAgent(t, harness.AgentOptions{Node: "check-node", Root: root,
		Extra: []string{"--source-dir", manifests, "--verify", "--verify-interval", "1h"}})
	defer a.Stop()
	line := fmt.Sprintf("nodetrust_registry_verified{registry=%q} ", reg)
	var got string
	ok := harness.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		_, body, err := a.Get("/metrics")
		if err != nil {
			return false
		}
		for _, l := range strings.Split(body, "\n") {
			if v, found := strings.CutPrefix(l, line); found {
				got = v
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("agent --verify: no %s in /metrics after 30 s", line)
	}
	if want := map[bool]string{true: "1", false: "0"}[checkOK]; got != want {
		t.Fatalf("agent --verify says %s%s, check says ok=%v", line, got, checkOK)
	}
	return fmt.Sprintf("agent --verify %s after %.2fs", got, time.Since(a.Started).Seconds())
}

// checkReport is newReport writing to name beside $NODETRUST_E2E_REPORT, so
// the check suites do not overwrite each other's (or the story's) report.
func checkReport(t *testing.T, name string) *report {
	if p := os.Getenv("NODETRUST_E2E_REPORT"); p != "" {
		t.Setenv("NODETRUST_E2E_REPORT", filepath.Join(filepath.Dir(p), name))
	}
	return newReport(t)
}

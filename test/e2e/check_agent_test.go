package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/test/harness"
)

const checkNode = "check-node"

// TestCheckAgentOnAPIServer runs `nodetrust agent --verify` for a Node on
// the real API server with deploy/'s RBAC: the labelled CA is right, then
// wrong, then right again, and the Node's nodetrust.io/state and message
// follow what `nodetrust check` says on the same host root, as does
// `nodetrust status`. (The agent sets no NodeTrustReady condition yet; it
// takes the same state and message when it does.)
func TestCheckAgentOnAPIServer(t *testing.T) {
	harness.SkipUnlessReal(t)
	for _, b := range []string{"docker-registry", "etcd"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (%v): run test/scripts/deps.sh", b, err)
		}
	}
	rep := checkReport(t, "check-agent.txt")
	bin := harness.Binary(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/containerd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := hostsWithAlias(filepath.Join(root, "etc/hosts")); err != nil {
		t.Fatal(err)
	}
	good := harness.Issue(harness.Template{CN: "check CA", CA: true}, nil)
	wrong := harness.Issue(harness.Template{CN: "some other CA", CA: true}, nil)
	reg := newDockerRegistry(t)
	rep.Step("registry signed by the check CA", func() string {
		if _, err := reg.start(harness.Issue(harness.Template{CN: registryHost, Names: []string{registryHost, "127.0.0.1"}}, good).Chain(), asCA(good)); err != nil {
			t.Fatal(err)
		}
		return reg.name()
	})
	var c *harness.Cluster
	var agent *harness.Agent
	rep.Step("kube-apiserver, deploy/, Node, agent --verify", func() string {
		c = harness.NewCluster(t)
		if _, err := c.ApplyDeploy(); err != nil {
			t.Fatal(err)
		}
		c.CreateNode(t, checkNode, map[string]string{"kubernetes.io/hostname": checkNode})
		agent = harness.StartAgent(t, harness.AgentOptions{Kubeconfig: c.AgentKubeconfig(t, t.TempDir()), Node: checkNode,
			Namespaces: ns, Root: root, Extra: []string{"--verify", "--verify-interval", "1h"}})
		took := agent.WaitReady(t, 60*time.Second)
		return fmt.Sprintf("agent ready after %.2fs", took.Seconds())
	})
	secret := harness.Secret(ns, "registry-ca", good.PEM, reg.name())
	for i, s := range []struct {
		name string
		pem  []byte
		ok   bool
	}{{"the right CA", good.PEM, true}, {"the wrong CA", wrong.PEM, false}, {"the right CA again", good.PEM, true}} {
		rep.Step(fmt.Sprintf("%s → Node %s", s.name, map[bool]string{true: "Ready", false: "Degraded"}[s.ok]), func() string {
			secret.Data["ca.crt"] = s.pem
			var err error
			if i == 0 {
				secret, err = c.Admin.CoreV1().Secrets(ns).Create(context.Background(), secret, metav1.CreateOptions{})
			} else {
				secret, err = c.Admin.CoreV1().Secrets(ns).Update(context.Background(), secret, metav1.UpdateOptions{})
			}
			if err != nil {
				t.Fatal(err)
			}
			wantState := map[bool]string{true: harness.StateReady, false: "Degraded"}[s.ok]
			var ann map[string]string
			waited := waitFor(t, "Node "+wantState+" with the new CA", func() (bool, string) {
				ann = nodeAnn(t, c, checkNode)
				filesIn := strings.Contains(readFile(filepath.Join(root, "etc/containerd/certs.d", reg.name(), ownedFile("registry-ca"))), string(s.pem))
				return filesIn && ann[harness.AnnState] == wantState, annLine(ann)
			})
			r, err := run(exec.Command(bin, "check", reg.name(), "--host-root", root, "--output", "json"))
			if err != nil {
				t.Fatal(err)
			}
			var out checkOutput
			if err := json.Unmarshal([]byte(r.out), &out); err != nil {
				t.Fatalf("check: %v\n%s", err, r.out)
			}
			if out.OK != s.ok {
				t.Fatalf("check says ok=%v, want %v:\n%s", out.OK, s.ok, r.out)
			}
			want := ""
			if !s.ok {
				_, verdict, reason, _ := out.verdict(t, "containerd")
				want = fmt.Sprintf("registry %s not verified: containerd: %s: %s", reg.name(), verdict, reason)
			}
			if ann[harness.AnnMessage] != want {
				t.Fatalf("Node message %q; want check's reason %q", ann[harness.AnnMessage], want)
			}
			st, err := run(exec.Command(bin, "status", "--kubeconfig", c.AdminKubeconfig, "--selector", "kubernetes.io/hostname="+checkNode))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(st.out, wantState) || (!s.ok && !strings.Contains(st.out, "not verified")) {
				t.Fatalf("nodetrust status:\n%s", st.out)
			}
			rep.Note("status after %s:\n%s", s.name, st.out)
			return fmt.Sprintf("Node %s after %.2fs, message %q", wantState, waited.Seconds(), ann[harness.AnnMessage])
		})
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

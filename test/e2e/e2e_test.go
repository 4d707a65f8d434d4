package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodetrust/nodetrust/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

const (
	// applyTimeout bounds "a change in the API reaches the node's files".
	applyTimeout = 30 * time.Second
	// hostTrustTimeout bounds a change through the OS trust store: the
	// agent runs the root's update-ca-certificates, 7-22 s measured on a
	// loaded 2-core machine.
	hostTrustTimeout = 2 * time.Minute
	nodeA            = "e2e-node-a"
	nodeB            = "e2e-node-b-debian"
	ns               = harness.AgentNamespace // deploy/'s namespace, RBAC as shipped
	annHostTrust     = "nodetrust.io/host-trust"
	stateFile        = "var/lib/nodetrust/state.json"
)

// seedShape is one kind of Secret a registry CA already lives in.
type seedShape struct {
	name, what string
	build      func(c *ca) *corev1.Secret
	// update rewrites the certificate data with another CA (rotation).
	update func(s *corev1.Secret, c *ca)
}

func shapes(registry string) []seedShape {
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels:      map[string]string{harness.LabelCA: "true"},
			Annotations: map[string]string{harness.AnnRegistries: registry},
		}
	}
	return []seedShape{
		{
			name: "registry-tls", what: "kubernetes.io/tls Secret (tls.crt = CA, tls.key)",
			build: func(c *ca) *corev1.Secret {
				return &corev1.Secret{ObjectMeta: meta("registry-tls"), Type: corev1.SecretTypeTLS,
					Data: map[string][]byte{"tls.crt": c.PEM, "tls.key": c.KeyPEM}}
			},
		},
		{
			name: "registry-ca-kaptain", what: "Opaque Secret with certificate.crt (Kaptain)",
			build: func(c *ca) *corev1.Secret {
				return &corev1.Secret{ObjectMeta: meta("registry-ca-kaptain"), Type: corev1.SecretTypeOpaque,
					Data: map[string][]byte{"certificate.crt": c.PEM}}
			},
		},
		{
			name: "registry-ca-porch", what: "Porch-style Secret with ca.crt and ca.pem",
			build: func(c *ca) *corev1.Secret {
				return &corev1.Secret{ObjectMeta: meta("registry-ca-porch"), Type: corev1.SecretTypeOpaque,
					Data: map[string][]byte{"ca.crt": c.PEM, "ca.pem": c.PEM}}
			},
			update: func(s *corev1.Secret, c *ca) {
				s.Data["ca.crt"], s.Data["ca.pem"] = c.PEM, c.PEM
			},
		},
	}
}

// ownedFile is the file name the contract gives a Secret's CA bundle.
func ownedFile(name string) string { return fmt.Sprintf("nodetrust_secret_%s_%s.crt", ns, name) }

// nodeAnn returns the nodetrust.io/ annotations of a Node.
func nodeAnn(t *testing.T, c *harness.Cluster, node string) map[string]string {
	t.Helper()
	n, err := c.Admin.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node %s: %v", node, err)
	}
	out := map[string]string{}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, "nodetrust.io/") {
			out[k] = v
		}
	}
	return out
}

// waitNode polls node's annotations until cond holds and returns them.
func waitNode(t *testing.T, c *harness.Cluster, node, desc string, cond func(map[string]string) bool) map[string]string {
	t.Helper()
	var last map[string]string
	if !harness.Poll(applyTimeout, 50*time.Millisecond, func() bool {
		last = nodeAnn(t, c, node)
		return cond(last)
	}) {
		t.Fatalf("node %s: %s not reached within %v; nodetrust.io annotations: %v", node, desc, applyTimeout, last)
	}
	return last
}

// readyWith is "state Ready, sources n, applied hash not prev".
func readyWith(n int, prev string) func(map[string]string) bool {
	return func(a map[string]string) bool {
		return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == fmt.Sprint(n) &&
			a[harness.AnnApplied] != "" && a[harness.AnnApplied] != prev
	}
}

func annLine(a map[string]string) string {
	return fmt.Sprintf("state=%s sources=%s applied=%s message=%q", a[harness.AnnState], a[harness.AnnSources],
		a[harness.AnnApplied], a[harness.AnnMessage])
}

// waitFor polls cond (which also returns why not) for up to applyTimeout.
func waitFor(t *testing.T, desc string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var why string
	if !harness.Poll(applyTimeout, 20*time.Millisecond, func() bool {
		var ok bool
		ok, why = cond()
		return ok
	}) {
		t.Fatalf("%s: not within %v: %s", desc, applyTimeout, why)
	}
	return time.Since(start)
}

// checkFiles asserts the contract's file layout for one source on root: the
// CA bundle beside a hosts.toml without server key naming it relatively,
// and in Docker's and containers/image's certs.d.
func checkFiles(t *testing.T, root, reg, secretName string) {
	t.Helper()
	f := ownedFile(secretName)
	for _, d := range []string{harness.ContainerdCertsDir, harness.DockerCertsDir, harness.ContainersCertsDir} {
		if _, err := os.Stat(filepath.Join(root, d, reg, f)); err != nil {
			t.Errorf("contract: %v", err)
		}
	}
	h, err := harness.ReadHostsToml(filepath.Join(root, harness.ContainerdCertsDir, reg, "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if h.Server != "" {
		t.Errorf("contract: generated hosts.toml has server = %q", h.Server)
	}
	if len(h.CA) != 1 || h.CA[0] != f {
		t.Errorf("contract: hosts.toml ca = %q, want [%q]", h.CA, f)
	}
	if hits, err := filesContaining(root, []byte("PRIVATE KEY")); err != nil || len(hits) > 0 {
		t.Fatalf("a private key reached the host root: %v %v", hits, err)
	}
}

func TestNodeStory(t *testing.T) {
	harness.SkipUnlessReal(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: unshare -m, mount --bind, chroot")
	}
	for _, b := range []string{"docker-registry", "containerd", "skopeo", "unshare", "curl", "etcd", "bash"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found (%v): run test/scripts/deps.sh", b, err)
		}
	}
	realHosts, _ := os.ReadFile("/etc/hosts")
	rep := newReport(t)
	bg := context.Background()
	work := t.TempDir()
	hostsFile := filepath.Join(work, "hosts.alias")
	emptyDir := filepath.Join(work, "empty")
	if err := os.Mkdir(emptyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := hostsWithAlias(hostsFile); err != nil {
		t.Fatal(err)
	}

	var (
		ca1, ca2     *ca
		sc1, sc2     harness.Serving
		reg          *dockerRegistry
		ctrd         *containerdNode
		c            *harness.Cluster
		rootA        string
		before       map[string]string
		foreignPath  string
		foreignBytes []byte
		applied      string // node A's nodetrust.io/applied, to see each change land
		agentA       *harness.Agent
		err          error
	)

	rep.Step("build nodetrust (or $NODETRUST_BIN)", func() string {
		return harness.Binary(t)
	})

	rep.Step("registry: fresh CA, docker-registry TLS on 127.0.0.1, push e2e/img:v1", func() string {
		ca1 = newCA("nodetrust e2e CA 1")
		sc1 = ca1.serving()
		reg = newDockerRegistry(t)
		ready, err := reg.start(sc1, ca1)
		if err != nil {
			t.Fatal(err)
		}
		pushStart := time.Now()
		dig, err := reg.push(ca1)
		if err != nil {
			t.Fatal(err)
		}
		rep.Note("registry: docker-registry %s, image %s", reg.loopback(), reg.imageRef())
		return fmt.Sprintf("ready in %.2fs, pushed %s in %.2fs", ready.Seconds(), shortID(dig.String()), time.Since(pushStart).Seconds())
	})

	rep.Step("containerd 1.6 in unshare -m (/etc/hosts alias), CRI config_path in host root", func() string {
		rootA = harness.NewHostRoot(t)
		// Someone else's file, which nodetrust must never touch.
		other := newCA("someone else's CA")
		foreignPath = filepath.Join(rootA, harness.DockerCertsDir, "other.example", "ca.crt")
		foreignBytes = other.PEM
		if err := os.MkdirAll(filepath.Dir(foreignPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(foreignPath, foreignBytes, 0o644); err != nil {
			t.Fatal(err)
		}
		var took time.Duration
		ctrd, took = startContainerd(t, hostsFile, rootA)
		rep.Note("containerd: %s, pid %d", ctrd.version, ctrd.pid)
		return fmt.Sprintf("%s CRI ready in %.2fs, pid %d", ctrd.version, took.Seconds(), ctrd.pid)
	})

	rep.Step("kube-apiserver + etcd (test/cluster), kubectl apply -k deploy/", func() string {
		start := time.Now()
		c = harness.NewCluster(t)
		up := time.Since(start)
		if _, err := c.ApplyDeploy(); err != nil {
			t.Fatal(err)
		}
		rep.Note("kube-apiserver %s (etcd ready %v, /readyz %v)", harness.K8sVersion, c.EtcdReady.Round(time.Millisecond), c.APIReady.Round(time.Millisecond))
		return fmt.Sprintf("cluster up in %.2fs, deploy/ applied in %.2fs", up.Seconds(), (time.Since(start) - up).Seconds())
	})

	rep.Step("Node "+nodeA+" + agent (deploy/ ServiceAccount token) ready; snapshot host root", func() string {
		c.CreateNode(t, nodeA, map[string]string{"kubernetes.io/hostname": nodeA})
		kcfg := c.AgentKubeconfig(t, t.TempDir())
		agentA = harness.StartAgent(t, harness.AgentOptions{Kubeconfig: kcfg, Node: nodeA, Namespaces: ns, Root: rootA})
		ready := agentA.WaitReady(t, 60*time.Second)
		ann := waitNode(t, c, nodeA, "Ready with 0 sources", readyWith(0, ""))
		applied = ann[harness.AnnApplied]
		if before, err = snapshotTree(rootA); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("/readyz after %.2fs; %s; %d paths in host root", ready.Seconds(), annLine(ann), len(before))
	})

	rep.Step("before: CRI pull fails with x509 unknown authority", func() string {
		return ctrd.mustPullX509(t, reg.imageRef(), "before any source")
	})

	skopeoContainers := func() runResult {
		return skopeo(t, hostsFile, filepath.Join(rootA, "etc/containers"), emptyDir, reg.imageRef())
	}
	skopeoDocker := func() runResult {
		return skopeo(t, hostsFile, emptyDir, filepath.Join(rootA, "etc/docker"), reg.imageRef())
	}
	skopeoFails := func(when string) string {
		var details []string
		for _, s := range []struct {
			name string
			run  func() runResult
		}{{"/etc/containers", skopeoContainers}, {"/etc/docker", skopeoDocker}} {
			r := s.run()
			if r.code == 0 || !strings.Contains(r.out, x509Unknown) {
				t.Fatalf("%s: skopeo inspect with %s bound: exit %d, want failure with %q:\n%s", when, s.name, r.code, x509Unknown, r.out)
			}
			details = append(details, fmt.Sprintf("%s exit %d (%.2fs)", s.name, r.code, r.took.Seconds()))
		}
		return "skopeo x509: " + strings.Join(details, ", ")
	}
	skopeoOK := func(when string, run func() runResult, dir string) string {
		r := run()
		if r.code != 0 {
			t.Fatalf("%s: skopeo inspect --tls-verify=true with only %s bound: exit %d:\n%s", when, dir, r.code, r.out)
		}
		if !strings.Contains(r.out, `"Architecture"`) {
			t.Fatalf("%s: skopeo inspect output has no Architecture:\n%s", when, r.out)
		}
		return fmt.Sprintf("skopeo ok in %.2fs", r.took.Seconds())
	}

	rep.Step("before: skopeo fails (/etc/containers, /etc/docker bound from host root)", func() string {
		return skopeoFails("before any source")
	})

	var current *corev1.Secret
	for i, sh := range shapes(reg.name()) {
		if i > 0 {
			prev := current
			rep.Step(fmt.Sprintf("delete %s: files gone, CRI pull fails x509 again", prev.Name), func() string {
				if err := c.Admin.CoreV1().Secrets(ns).Delete(bg, prev.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				gone := waitFor(t, "certs.d/"+reg.name()+" removed", func() (bool, string) { return harness.RegistryDirsGone(rootA, reg.name()) })
				ann := waitNode(t, c, nodeA, "Ready with 0 sources", readyWith(0, applied))
				applied = ann[harness.AnnApplied]
				return fmt.Sprintf("files gone after %.2fs; %s", gone.Seconds(), ctrd.mustPullX509(t, reg.imageRef(), "after deleting "+prev.Name))
			})
		}
		rep.Step(fmt.Sprintf("create %s: %s", sh.name, sh.what), func() string {
			current = sh.build(ca1)
			start := time.Now()
			if _, err := c.Admin.CoreV1().Secrets(ns).Create(bg, current, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			onDisk := waitFor(t, "CA 1 trusted for "+reg.name()+" by all three runtimes' files", func() (bool, string) {
				return harness.TrustedEverywhere(rootA, reg.name(), sc1.Cert)
			})
			ann := waitNode(t, c, nodeA, "Ready with 1 source", readyWith(1, applied))
			annotated := time.Since(start)
			applied = ann[harness.AnnApplied]
			checkFiles(t, rootA, reg.name(), sh.name)
			return fmt.Sprintf("files on disk after %.2fs, Node annotated after %.2fs (%s)", onDisk.Seconds(), annotated.Seconds(), annLine(ann))
		})
		rep.Step(fmt.Sprintf("%s: CRI pull ok, containerd not restarted", sh.name), func() string {
			return ctrd.mustPull(t, reg.imageRef(), "with "+sh.name)
		})
		rep.Step(fmt.Sprintf("%s: skopeo via /etc/containers/certs.d (docker dir empty)", sh.name), func() string {
			return skopeoOK("with "+sh.name, skopeoContainers, "/etc/containers")
		})
		rep.Step(fmt.Sprintf("%s: skopeo via /etc/docker/certs.d alone (containers dir empty)", sh.name), func() string {
			return skopeoOK("with "+sh.name, skopeoDocker, "/etc/docker")
		})
	}
	porch := shapes(reg.name())[2]

	rep.Step("rotate: registry restarted with a cert from new CA 2 → pull and skopeo fail x509", func() string {
		ca2 = newCA("nodetrust e2e CA 2")
		sc2 = ca2.serving()
		ready, err := reg.start(sc2, ca2)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("registry restarted in %.2fs; %s; %s", ready.Seconds(),
			ctrd.mustPullX509(t, reg.imageRef(), "after rotating the registry to CA 2"), skopeoFails("after rotation"))
	})

	rep.Step("rotate: "+porch.name+" updated to CA 2 → agent applied", func() string {
		s, err := c.Admin.CoreV1().Secrets(ns).Get(bg, porch.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		porch.update(s, ca2)
		start := time.Now()
		if _, err := c.Admin.CoreV1().Secrets(ns).Update(bg, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		onDisk := waitFor(t, "CA 2 trusted and CA 1 not", func() (bool, string) {
			if ok, why := harness.TrustedEverywhere(rootA, reg.name(), sc2.Cert); !ok {
				return false, why
			}
			return harness.TrustedNowhere(rootA, reg.name(), sc1.Cert)
		})
		ann := waitNode(t, c, nodeA, "Ready with 1 source, new hash", readyWith(1, applied))
		applied = ann[harness.AnnApplied]
		checkFiles(t, rootA, reg.name(), porch.name)
		return fmt.Sprintf("files on disk after %.2fs, Node annotated after %.2fs (%s)", onDisk.Seconds(), time.Since(start).Seconds(), annLine(ann))
	})

	rep.Step("rotate: CRI pull ok, skopeo ok, containerd not restarted", func() string {
		return ctrd.mustPull(t, reg.imageRef(), "after rotation") + "; " +
			skopeoOK("after rotation", skopeoContainers, "/etc/containers") + "; " +
			skopeoOK("after rotation", skopeoDocker, "/etc/docker")
	})

	// ------------------------------------------------------- host trust store
	var debRoot string
	var debBefore map[string]string
	url := "https://" + reg.name() + "/v2/"
	rep.Step("host trust: Debian root (debian-root.sh); curl in chroot fails with exit 60", func() string {
		debRoot = filepath.Join(t.TempDir(), "root")
		start := time.Now()
		if err := harness.ExtractDebianRoot(debRoot); err != nil {
			t.Fatal(err)
		}
		extracted := time.Since(start)
		hosts := filepath.Join(debRoot, "etc/hosts")
		old, _ := os.ReadFile(hosts)
		if len(old) > 0 && !bytes.HasSuffix(old, []byte("\n")) {
			old = append(old, '\n')
		}
		if err := os.WriteFile(hosts, append(old, []byte("127.0.0.1 "+registryHost+"\n")...), 0o644); err != nil {
			t.Fatal(err)
		}
		if debBefore, err = contentTree(debRoot); err != nil {
			t.Fatal(err)
		}
		r := curlInRoot(t, debRoot, url)
		if r.code != 60 {
			t.Fatalf("curl %s in the Debian root before host trust: exit %d, want 60:\n%s", url, r.code, r.out)
		}
		return fmt.Sprintf("root ready in %.2fs; curl exit 60: %s", extracted.Seconds(), firstLine(r.out))
	})

	var appliedB string
	var agentB *harness.Agent
	rep.Step("host trust: Node "+nodeB+" + agent on the Debian root ready", func() string {
		c.CreateNode(t, nodeB, map[string]string{"kubernetes.io/hostname": nodeB})
		kcfg := c.AgentKubeconfig(t, t.TempDir())
		agentB = harness.StartAgent(t, harness.AgentOptions{Kubeconfig: kcfg, Node: nodeB, Namespaces: ns, Root: debRoot})
		ready := agentB.WaitReady(t, 60*time.Second)
		ann := waitNode(t, c, nodeB, "Ready with 1 source", readyWith(1, ""))
		appliedB = ann[harness.AnnApplied]
		return fmt.Sprintf("/readyz after %.2fs; %s", ready.Seconds(), annLine(ann))
	})

	anchorGlob := filepath.Join(debRoot, "usr/local/share/ca-certificates", "nodetrust_secret_"+ns+"_"+porch.name+"_*.crt")
	rep.Step("host trust: "+porch.name+" annotated host-trust=true → curl in chroot ok", func() string {
		syncsBefore := len(agentB.SyncLogs())
		start := time.Now()
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"true"}}}`, annHostTrust)
		if _, err := c.Admin.CoreV1().Secrets(ns).Patch(bg, porch.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		w := watchHostTrust(t, c, start, debRoot, anchorGlob, url, true, readyWith(1, appliedB))
		appliedB = w.ann[harness.AnnApplied]
		if w.nodeEarly() {
			t.Errorf("node %s was annotated Ready (%s) %.2fs before curl trusted the CA: Ready before the trust store refresh finished",
				nodeB, annLine(w.ann), (w.curlAt - w.nodeAt).Seconds())
		}
		// Node A has no os-release: host trust is unsupported there, a warning
		// (README: "reported as a warning", never Degraded); its files stay.
		annA := waitNode(t, c, nodeA, "still Ready", func(a map[string]string) bool {
			return a[harness.AnnState] == harness.StateReady && a[harness.AnnSources] == "1"
		})
		applied = annA[harness.AnnApplied]
		if ok, why := harness.TrustedEverywhere(rootA, reg.name(), sc2.Cert); !ok {
			t.Fatalf("node A after host-trust: %s", why)
		}
		// Observation, not an assertion: does node A's agent surface the
		// "host trust is unsupported" warning anywhere (log, /metrics)?
		_, metrics, _ := agentA.Metrics()
		surfaced := fmt.Sprintf("warning in agent A's log: %v, in /metrics: %v",
			strings.Contains(agentA.Log(), "unsupported"), strings.Contains(metrics, "unsupported") || strings.Contains(metrics, "warning"))
		return fmt.Sprintf("after the patch: anchor %.2fs, curl ok %.2fs (body %q), Node B annotated %.2fs (%s); agent B syncs %s; node A (no os-release) %s, %s (%.2fs total)",
			w.anchorAt.Seconds(), w.curlAt.Seconds(), w.last.out, w.nodeAt.Seconds(), annLine(w.ann),
			syncSummary(agentB, syncsBefore), annLine(annA), surfaced, time.Since(start).Seconds())
	})

	// ----------------------------------------------------------------- delete
	var deletedAt time.Time
	var syncsAtDelete int
	rep.Step("delete "+porch.name+" → node A: CRI pull x509, skopeo x509, tree as before", func() string {
		syncsAtDelete = len(agentB.SyncLogs())
		start := time.Now()
		deletedAt = start
		if err := c.Admin.CoreV1().Secrets(ns).Delete(bg, porch.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		gone := waitFor(t, "certs.d/"+reg.name()+" removed", func() (bool, string) { return harness.RegistryDirsGone(rootA, reg.name()) })
		ann := waitNode(t, c, nodeA, "Ready with 0 sources", readyWith(0, applied))
		annotated := time.Since(start)
		pull := ctrd.mustPullX509(t, reg.imageRef(), "after deleting the Secret")
		sk := skopeoFails("after deleting the Secret")
		after, err := snapshotTree(rootA)
		if err != nil {
			t.Fatal(err)
		}
		ignored := []string{}
		diffs := diffTrees(before, after, func(p string) bool {
			_, existed := before[p]
			// The ownership record and the directories holding it.
			if p == stateFile || (!existed && strings.HasPrefix(stateFile, p+"/") && strings.HasPrefix(after[p], "dir ")) {
				ignored = append(ignored, p)
				return true
			}
			return false
		})
		if len(diffs) > 0 {
			t.Fatalf("host root after deletion differs from before the first apply:\n  %s", strings.Join(diffs, "\n  "))
		}
		if b, err := os.ReadFile(foreignPath); err != nil || !bytes.Equal(b, foreignBytes) {
			t.Fatalf("foreign file %s changed: %v", foreignPath, err)
		}
		return fmt.Sprintf("files gone after %.2fs (Node %s after %.2fs); %s; %s; tree identical to before (%d paths, ignored %v), foreign file intact",
			gone.Seconds(), ann[harness.AnnState], annotated.Seconds(), pull, sk, len(after), ignored)
	})

	rep.Step("delete → Debian root: anchor gone, curl exit 60, trust store as before", func() string {
		w := watchHostTrust(t, c, deletedAt, debRoot, anchorGlob, url, false, readyWith(0, appliedB))
		if w.nodeEarly() {
			t.Errorf("node %s was annotated (%s) %.2fs before curl stopped trusting the CA", nodeB, annLine(w.ann), (w.curlAt - w.nodeAt).Seconds())
		}
		after, err := contentTree(debRoot)
		if err != nil {
			t.Fatal(err)
		}
		diffs := diffTrees(debBefore, after, func(p string) bool {
			_, existed := debBefore[p]
			return p == stateFile || (!existed && strings.HasPrefix(stateFile, p+"/"))
		})
		if len(diffs) > 0 {
			t.Fatalf("Debian root after deletion differs from before (content):\n  %s", strings.Join(diffs, "\n  "))
		}
		return fmt.Sprintf("since the delete: anchor gone ≤%.2fs, curl exit 60 %.2fs, Node B annotated %.2fs (%s); agent B syncs %s; %d paths as before (by content)",
			w.anchorAt.Seconds(), w.curlAt.Seconds(), w.nodeAt.Seconds(), annLine(w.ann),
			syncSummary(agentB, syncsAtDelete), len(after))
	})

	rep.Step("containerd never restarted, never failed to read a hosts.toml; host /etc untouched", func() string {
		ctrd.sameProcess(t)
		// containerd 1.6 falls back to *.crt files when hosts.toml does
		// not decode, so a pull can pass with a hosts.toml it rejected.
		if log, err := os.ReadFile(ctrd.proc.LogPath); err != nil || bytes.Contains(log, []byte("failed to decode hosts.toml")) {
			t.Fatalf("containerd rejected a hosts.toml nodetrust wrote (or its log is unreadable: %v)", err)
		}
		now, _ := os.ReadFile("/etc/hosts")
		if !bytes.Equal(now, realHosts) {
			t.Fatalf("the real /etc/hosts changed")
		}
		if m := mountsUnder("/etc/hosts", "/etc/containers", "/etc/docker", work); len(m) > 0 {
			t.Fatalf("mounts leaked into the host's namespace: %v", m)
		}
		sum := sha256.Sum256(realHosts)
		return fmt.Sprintf("containerd pid %d since start; /etc/hosts sha256 %x unchanged, no test mounts on the host", ctrd.pid, sum[:6])
	})
}

// trustWatch is when (since it started) each effect of a host-trust change
// was first seen on a node with a Debian root.
type trustWatch struct {
	anchorAt, curlAt, nodeAt time.Duration
	nodeIter, curlIter       int // polling rounds
	ann                      map[string]string
	last                     runResult
}

// nodeEarly is true when the Node showed the new state in an earlier
// polling round than curl did.
func (w trustWatch) nodeEarly() bool { return w.nodeIter < w.curlIter }

// watchHostTrust polls, in one loop, the anchor file, curl inside the root
// and the Node's annotations until all three show trust (on) or its absence.
// Times are since start (the API change), so an effect already there when
// the watch begins counts at the watch's first round: an upper bound.
func watchHostTrust(t *testing.T, c *harness.Cluster, start time.Time, root, anchorGlob, url string, on bool, nodeDone func(map[string]string) bool) trustWatch {
	t.Helper()
	var w trustWatch
	const unseen = time.Duration(-1)
	w.anchorAt, w.curlAt, w.nodeAt = unseen, unseen, unseen
	wantCode := 60
	if on {
		wantCode = 0
	}
	iter := 0
	ok := harness.Poll(hostTrustTimeout, 20*time.Millisecond, func() bool {
		iter++
		// The Node first, then curl: a Node annotated in the same round as
		// curl changing is not "annotated before the trust store changed".
		if w.nodeAt == unseen {
			if a := nodeAnn(t, c, nodeB); nodeDone(a) {
				w.nodeAt, w.ann, w.nodeIter = time.Since(start), a, iter
			}
		}
		if w.curlAt == unseen {
			w.last = curlInRoot(t, root, url)
			if w.last.code == wantCode {
				w.curlAt, w.curlIter = time.Since(start), iter
			}
		}
		if w.anchorAt == unseen {
			anchors, _ := filepath.Glob(anchorGlob)
			if (len(anchors) == 1) == on && len(anchors) <= 1 {
				w.anchorAt = time.Since(start)
			}
		}
		return w.anchorAt != unseen && w.curlAt != unseen && w.nodeAt != unseen
	})
	if !ok {
		anchors, _ := filepath.Glob(anchorGlob)
		t.Fatalf("host trust %v not reached within %v: anchors %v (seen after %v), curl exit %d %q (want %d, seen after %v), node %s %v (seen after %v)",
			on, hostTrustTimeout, anchors, w.anchorAt, w.last.code, firstLine(w.last.out), wantCode, w.curlAt,
			nodeB, nodeAnn(t, c, nodeB), w.nodeAt)
	}
	return w
}

// syncSummary lists the agent's "sync" log lines from index from on:
// written/removed files and duration of each.
func syncSummary(a *harness.Agent, from int) string {
	logs := a.SyncLogs()
	if from > len(logs) {
		from = len(logs)
	}
	var parts []string
	for _, l := range logs[from:] {
		d := "?"
		if v, ok := l["duration"].(float64); ok {
			d = fmt.Sprintf("%.2fs", time.Duration(v).Seconds())
		} else if v, ok := l["duration"].(string); ok {
			d = v
		}
		parts = append(parts, fmt.Sprintf("[%v written=%v removed=%v %s]", l["state"], l["written"], l["removed"], d))
	}
	return strings.Join(parts, "")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

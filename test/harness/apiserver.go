package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// clusterPKI writes ca.crt, apiserver.crt/.key (also used as the client CA),
// sa.key/sa.pub and tokens.csv into dir.
func clusterPKI(dir, adminToken string) error {
	ca := NewCA("nodetrust-test-cluster-ca")
	srv := ca.Serving("kube-apiserver", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local", "127.0.0.1", "10.96.0.1")
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	for _, w := range []struct {
		name string
		pem  []byte
		mode os.FileMode
	}{
		{"ca.crt", ca.PEM, 0o644},
		{"apiserver.crt", srv.CertPEM, 0o644},
		{"apiserver.key", srv.KeyPEM, 0o600},
		{"sa.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}), 0o600},
		{"sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}), 0o644},
	} {
		if err := os.WriteFile(filepath.Join(dir, w.name), w.pem, w.mode); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(adminToken+`,admin,1000,"system:masters"`+"\n"), 0o600)
}

// Cluster is etcd + kube-apiserver on 127.0.0.1 with free ports, all state in Dir.
type Cluster struct {
	Dir             string
	Server          string // https://127.0.0.1:port
	CAPEM           []byte
	AdminToken      string
	AdminKubeconfig string
	AdminConfig     *rest.Config
	Admin           *kubernetes.Clientset

	// Timings of the last start, for the README.
	EtcdReady, APIReady time.Duration

	apiPort, etcdPort, etcdPeerPort, etcdMetricsPort int

	mu        sync.Mutex
	etcd      *Proc
	apiserver *Proc
	extra     []*Proc
	apiStarts int
}

// StartCluster starts etcd and kube-apiserver in a new temporary directory.
// Callers must Stop it.
func StartCluster() (*Cluster, error) {
	for _, b := range []string{K8sBin("kube-apiserver"), K8sBin("kubectl")} {
		if err := needBinary(b); err != nil {
			return nil, err
		}
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		return nil, fmt.Errorf("etcd not found (%v): run test/scripts/deps.sh (Debian etcd-server)", err)
	}
	dir, err := os.MkdirTemp("", "nodetrust-cluster-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, AdminToken: RandHex(16)}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	if err := clusterPKI(dir, c.AdminToken); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if c.CAPEM, err = os.ReadFile(filepath.Join(dir, "ca.crt")); err != nil {
		return nil, err
	}
	if err := c.admin(); err != nil {
		return nil, err
	}
	if err := c.startEtcd(); err != nil {
		return nil, err
	}
	if err := c.StartAPIServer(); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// admin picks c's ports and makes its admin client and kubeconfig.
func (c *Cluster) admin() error {
	ports := make([]int, 4)
	for i := range ports {
		var err error
		if ports[i], err = FreePort(); err != nil {
			return err
		}
	}
	c.apiPort, c.etcdPort, c.etcdPeerPort, c.etcdMetricsPort = ports[0], ports[1], ports[2], ports[3]
	c.Server = fmt.Sprintf("https://127.0.0.1:%d", c.apiPort)
	c.AdminConfig = &rest.Config{
		Host:            c.Server,
		BearerToken:     c.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM},
		QPS:             100,
		Burst:           200,
	}
	var err error
	if c.Admin, err = kubernetes.NewForConfig(c.AdminConfig); err != nil {
		return err
	}
	c.AdminKubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	return WriteKubeconfig(c.AdminKubeconfig, c.Server, c.CAPEM, c.AdminToken, "")
}

func (c *Cluster) startEtcd() error {
	start := time.Now()
	client := fmt.Sprintf("http://127.0.0.1:%d", c.etcdPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", c.etcdPeerPort)
	p, err := StartProc("etcd", filepath.Join(c.Dir, "etcd.log"), "etcd",
		"--name", "t",
		"--data-dir", filepath.Join(c.Dir, "etcd-data"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "t="+peer,
		"--listen-metrics-urls", fmt.Sprintf("http://127.0.0.1:%d", c.etcdMetricsPort),
	)
	if err != nil {
		return err
	}
	c.etcd = p
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if done, werr := p.Exited(); done {
			return fmt.Errorf("etcd exited: %v\n%s", werr, p.Tail(3000))
		}
		resp, err := http.Get(client + "/health")
		if err == nil {
			body := new(bytes.Buffer)
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(body.String(), `"true"`) {
				c.EtcdReady = time.Since(start)
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("etcd not healthy after 30 s:\n%s", p.Tail(3000))
}

// StartAPIServer starts kube-apiserver (again, on the same port and etcd)
// and waits for /readyz.
func (c *Cluster) StartAPIServer() error {
	c.mu.Lock()
	c.apiStarts++
	n := c.apiStarts
	c.mu.Unlock()
	start := time.Now()
	d := c.Dir
	p, err := StartProc("kube-apiserver", filepath.Join(d, fmt.Sprintf("kube-apiserver-%d.log", n)), K8sBin("kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", c.etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", c.apiPort),
		"--cert-dir="+filepath.Join(d, "apiserver-certs"),
		"--tls-cert-file="+filepath.Join(d, "apiserver.crt"),
		"--tls-private-key-file="+filepath.Join(d, "apiserver.key"),
		"--client-ca-file="+filepath.Join(d, "ca.crt"),
		"--token-auth-file="+filepath.Join(d, "tokens.csv"),
		"--service-account-issuer="+c.Server,
		"--service-account-key-file="+filepath.Join(d, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(d, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/24",
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true", // the DaemonSet's pod is privileged
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.apiserver = p
	c.mu.Unlock()
	return c.waitReady(p, start)
}

// waitReady waits up to 90 s until the API server p answers /readyz,
// recording how long it took since start in c.APIReady.
func (c *Cluster) waitReady(p *Proc, start time.Time) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: mustPool(c.CAPEM)}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if done, werr := p.Exited(); done {
			return fmt.Errorf("kube-apiserver exited: %v\n%s", werr, p.Tail(4000))
		}
		req, _ := http.NewRequest("GET", c.Server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+c.AdminToken)
		resp, err := hc.Do(req)
		if err == nil {
			b := new(bytes.Buffer)
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				c.APIReady = time.Since(start)
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b.String())
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after 90 s (last: %s):\n%s", last, p.Tail(4000))
}

// StopAPIServer stops kube-apiserver (etcd keeps running): SIGTERM, and
// SIGKILL after 5 s (with clients holding watches, its graceful shutdown
// takes longer than that). It reports whether it had to kill.
func (c *Cluster) StopAPIServer() (killed bool, err error) {
	c.mu.Lock()
	p := c.apiserver
	c.apiserver = nil
	c.mu.Unlock()
	if p == nil {
		return false, errors.New("kube-apiserver not running")
	}
	_, _, killed = p.Stop(5 * time.Second)
	return killed, nil
}

// APIServerLog returns the path of the current kube-apiserver log.
func (c *Cluster) APIServerLog() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiserver == nil {
		return ""
	}
	return c.apiserver.LogPath
}

// AddProc registers a process to stop with the cluster (controllers, kwok).
func (c *Cluster) AddProc(p *Proc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.extra = append(c.extra, p)
}

// Stop stops every process and removes Dir (kept with NODETRUST_KEEP=1).
func (c *Cluster) Stop() {
	c.mu.Lock()
	procs := append([]*Proc{}, c.extra...)
	if c.apiserver != nil {
		procs = append(procs, c.apiserver)
	}
	if c.etcd != nil {
		procs = append(procs, c.etcd)
	}
	c.extra, c.apiserver, c.etcd = nil, nil, nil
	c.mu.Unlock()
	for _, p := range procs {
		p.Stop(5 * time.Second)
	}
	if os.Getenv("NODETRUST_KEEP") == "1" {
		fmt.Fprintf(os.Stderr, "NODETRUST_KEEP=1: cluster state kept in %s\n", c.Dir)
		return
	}
	_ = os.RemoveAll(c.Dir)
}

// NewCluster starts a private cluster for t, stopped on cleanup; on failure
// the component logs' tails are printed.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	start := time.Now()
	c, err := StartCluster()
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Logf("cluster up in %v (etcd %v, kube-apiserver /readyz %v) at %s", time.Since(start).Round(time.Millisecond),
		c.EtcdReady.Round(time.Millisecond), c.APIReady.Round(time.Millisecond), c.Server)
	t.Cleanup(func() {
		if t.Failed() {
			if l := c.APIServerLog(); l != "" {
				t.Logf("kube-apiserver log tail:\n%s", tailFile(l, 3000))
			}
		}
		c.Stop()
	})
	return c
}

// WriteKubeconfig writes a kubeconfig for a bearer token.
func WriteKubeconfig(path, server string, caPEM []byte, token, namespace string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "user", Namespace: namespace}
	cfg.CurrentContext = "test"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Kubectl runs kubectl with the admin kubeconfig.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	cmd := exec.Command(K8sBin("kubectl"), append([]string{"--kubeconfig", c.AdminKubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ApplyDeploy runs `kubectl apply -k deploy/` and returns its output.
func (c *Cluster) ApplyDeploy() (string, error) {
	out, err := c.Kubectl("apply", "-k", DeployDir())
	if err != nil {
		return out, fmt.Errorf("kubectl apply -k %s: %v\n%s", DeployDir(), err, out)
	}
	return out, nil
}

// ServiceAccountToken returns a TokenRequest token for namespace/name.
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name string, ttl time.Duration) (string, error) {
	secs := int64(ttl / time.Second)
	tr, err := c.Admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("TokenRequest for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// AgentKubeconfig writes (into dir) a kubeconfig holding a token of the
// agent's ServiceAccount from deploy/, and returns its path.
func (c *Cluster) AgentKubeconfig(t testing.TB, dir string) string {
	t.Helper()
	tok, err := c.ServiceAccountToken(context.Background(), AgentNamespace, AgentServiceAccount, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "agent.kubeconfig")
	if err := WriteKubeconfig(p, c.Server, c.CAPEM, tok, AgentNamespace); err != nil {
		t.Fatal(err)
	}
	return p
}

// AgentClient is a clientset authenticated as the agent's ServiceAccount.
func (c *Cluster) AgentClient(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	tok, err := c.ServiceAccountToken(context.Background(), AgentNamespace, AgentServiceAccount, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: c.Server, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM}})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// Tenant creates a fresh namespace in which the agent's ServiceAccount has
// exactly the namespaced permissions deploy/ grants it in nodetrust-system:
// every Role bound to it there is copied, with its binding. Tests that share
// a cluster run their agents with --namespaces <tenant> so they do not see
// each other's sources or Events.
func (c *Cluster) Tenant(t testing.TB, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns := prefix + "-" + RandHex(3)
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	rbs, err := c.Admin.RbacV1().RoleBindings(AgentNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	copied := 0
	for _, rb := range rbs.Items {
		bound := false
		for _, s := range rb.Subjects {
			if s.Kind == "ServiceAccount" && s.Name == AgentServiceAccount && (s.Namespace == AgentNamespace || s.Namespace == "") {
				bound = true
			}
		}
		if !bound {
			continue
		}
		if rb.RoleRef.Kind == "Role" {
			role, err := c.Admin.RbacV1().Roles(AgentNamespace).Get(ctx, rb.RoleRef.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("role %s bound by %s: %v", rb.RoleRef.Name, rb.Name, err)
			}
			nr := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: ns}, Rules: role.Rules}
			if _, err := c.Admin.RbacV1().Roles(ns).Create(ctx, nr, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
		nrb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: rb.Name, Namespace: ns},
			RoleRef:    rb.RoleRef,
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: AgentServiceAccount, Namespace: AgentNamespace}},
		}
		if _, err := c.Admin.RbacV1().RoleBindings(ns).Create(ctx, nrb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		copied++
	}
	if copied == 0 {
		t.Fatalf("deploy/ binds no Role to ServiceAccount %s/%s in %s", AgentNamespace, AgentServiceAccount, AgentNamespace)
	}
	t.Cleanup(func() {
		_ = c.Admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	return ns
}

// CreateNode creates a Node object (no kubelet behind it).
func (c *Cluster) CreateNode(t testing.TB, name string, labels map[string]string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	got, err := c.Admin.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = c.Admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return got
}

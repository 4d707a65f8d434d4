// Package cluster runs nodetrust's agent against a real kube-apiserver (built
// from Go modules by test/scripts/k8s-build.sh) backed by Debian's etcd. The
// agent runs as local processes, one per (API-only) Node object, each with its
// own host root in a temporary directory; it authenticates with a
// ServiceAccount token from TokenRequest, so the RBAC in deploy/ is what is
// exercised. See README.md.
package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
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

// Versions built by test/scripts/k8s-build.sh; keep in step with it.
const (
	K8sVersion  = "v1.34.4"
	KwokVersion = "v0.7.0"

	// AgentNamespace and AgentServiceAccount are what deploy/ creates.
	AgentNamespace      = "nodetrust-system"
	AgentServiceAccount = "nodetrust"
)

// Real reports whether the real-component tests are enabled.
func Real() bool { return os.Getenv("NODETRUST_REAL") == "1" }

// SkipUnlessReal skips t unless NODETRUST_REAL=1.
func SkipUnlessReal(t testing.TB) {
	t.Helper()
	if !Real() {
		t.Skip("real API server tests: set NODETRUST_REAL=1 (after test/scripts/k8s-build.sh)")
	}
}

// RepoRoot is the nodetrust repository root (this module lives in test/cluster).
func RepoRoot() string {
	abs, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	return abs
}

// DebianRoot extracts a fresh Debian bookworm root into dir with
// test/scripts/debian-root.sh, which builds it once (debootstrap) and caches
// it; the error carries the script's output.
func DebianRoot(dir string) error {
	script := filepath.Join(RepoRoot(), "test", "scripts", "debian-root.sh")
	if out, err := exec.Command("bash", script, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("debian-root.sh %s: %v\n%s", dir, err, out)
	}
	return nil
}

func cacheDir() string {
	if d := os.Getenv("NODETRUST_CACHE"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "nodetrust")
}

// K8sBin returns the path of a Kubernetes binary (kube-apiserver, kubectl,
// kube-controller-manager, kube-scheduler): $NODETRUST_K8S_BIN/<name> or the
// k8s-build.sh cache.
func K8sBin(name string) string {
	dir := os.Getenv("NODETRUST_K8S_BIN")
	if dir == "" {
		dir = filepath.Join(cacheDir(), "k8s", K8sVersion, "bin")
	}
	return filepath.Join(dir, name)
}

// KwokBin returns the kwok binary: $NODETRUST_KWOK_BIN or the k8s-build.sh cache.
func KwokBin() string {
	if b := os.Getenv("NODETRUST_KWOK_BIN"); b != "" {
		return b
	}
	return filepath.Join(cacheDir(), "k8s", "kwok-"+KwokVersion, "bin", "kwok")
}

func needBinary(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s missing (%v): run test/scripts/k8s-build.sh first", path, err)
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ----------------------------------------------------------------- processes

// Proc is a child process whose combined output goes to a log file.
type Proc struct {
	Name    string
	LogPath string
	Args    []string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// StartProc starts bin with args, output appended to logPath.
func StartProc(name, logPath, bin string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group, so a stray signal to the test does not hit it first
	// and so it can never outlive us unnoticed as part of our group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, Args: append([]string{bin}, args...), cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has exited, and its wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns the wait
// error (nil for exit 0), how long the exit took, and whether it had to kill.
func (p *Proc) Stop(grace time.Duration) (err error, took time.Duration, killed bool) {
	start := time.Now()
	select {
	case <-p.done:
		return p.err, 0, false
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err, time.Since(start), false
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return p.err, time.Since(start), true
}

// Tail returns the last n bytes of the process log.
func (p *Proc) Tail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ----------------------------------------------------------------------- PKI

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// clusterPKI writes ca.crt, apiserver.crt/.key (also used as the client CA),
// sa.key/sa.pub and tokens.csv into dir.
func clusterPKI(dir, adminToken string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "nodetrust-test-cluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	for _, w := range []struct {
		name, typ string
		der       []byte
		mode      os.FileMode
	}{
		{"ca.crt", "CERTIFICATE", caDER, 0o644},
		{"apiserver.crt", "CERTIFICATE", srvDER, 0o644},
		{"apiserver.key", "EC PRIVATE KEY", srvKeyDER, 0o600},
		{"sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey), 0o600},
		{"sa.pub", "PUBLIC KEY", saPub, 0o644},
	} {
		if err := writePEM(filepath.Join(dir, w.name), w.typ, w.der, w.mode); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(adminToken+`,admin,1000,"system:masters"`+"\n"), 0o600)
}

// ------------------------------------------------------------------- cluster

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
	c := &Cluster{Dir: dir, AdminToken: randHex(16)}
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
	ports := make([]int, 4)
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
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
	if c.Admin, err = kubernetes.NewForConfig(c.AdminConfig); err != nil {
		return nil, err
	}
	c.AdminKubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := WriteKubeconfig(c.AdminKubeconfig, c.Server, c.CAPEM, c.AdminToken, ""); err != nil {
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

func mustPool(pemData []byte) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemData) {
		panic("no certificates in CA PEM")
	}
	return p
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

// ------------------------------------------------------------------- deploy/

// DeployDir is the repository's kustomize base.
func DeployDir() string { return filepath.Join(RepoRoot(), "deploy") }

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
	ns := prefix + "-" + randHex(3)
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

package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/nodetrust/nodetrust/test/harness"
)

// registry is Debian's docker-registry serving TLS on 127.0.0.1:port; it
// restarts on the same port and storage with another serving certificate.
type registry struct {
	dir    string
	port   int
	proc   *harness.Proc
	starts int
}

func newRegistry(t *testing.T) *registry {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &registry{dir: t.TempDir(), port: port}
	t.Cleanup(func() {
		if r.proc != nil {
			r.proc.Stop(10 * time.Second)
		}
	})
	return r
}

// ref is an image reference on this registry, by its alias name.
func (r *registry) ref(repo string) string {
	return fmt.Sprintf("%s:%d/%s", registryHost, r.port, repo)
}

// serve (re)starts the registry with sc and waits until it serves /v2/
// verified by ca.
func (r *registry) serve(t *testing.T, sc harness.Serving, ca *harness.CA) {
	t.Helper()
	if r.proc != nil {
		r.proc.Stop(10 * time.Second)
	}
	r.starts++
	cert := filepath.Join(r.dir, fmt.Sprintf("tls-%d.crt", r.starts))
	key := filepath.Join(r.dir, fmt.Sprintf("tls-%d.key", r.starts))
	cfg := filepath.Join(r.dir, fmt.Sprintf("config-%d.yml", r.starts))
	for f, b := range map[string][]byte{cert: sc.CertPEM, key: sc.KeyPEM, cfg: []byte(fmt.Sprintf(`version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: %s}}
http:
  addr: 127.0.0.1:%d
  secret: node-test-not-a-secret
  tls: {certificate: %s, key: %s}
`, filepath.Join(r.dir, "storage"), r.port, cert, key))} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p, err := harness.StartProc("docker-registry", filepath.Join(r.dir, "registry.log"), "docker-registry", "serve", cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.proc = p
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: registryHost}}}
	defer hc.CloseIdleConnections()
	var last string
	if !harness.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/v2/", r.port))
		if err != nil {
			last = err.Error()
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		t.Fatalf("docker-registry not serving (last: %s)\n%s", last, p.Tail(2000))
	}
}

// push copies the image in a docker-archive tarball to repo on this
// registry, trusting ca.
func (r *registry) push(t *testing.T, tarPath, repo string, ca *harness.CA) {
	t.Helper()
	img, err := tarball.ImageFromPath(tarPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(fmt.Sprintf("127.0.0.1:%d/%s", r.port, repo), name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := remote.Write(ref, img, remote.WithTransport(tr), remote.WithContext(ctx)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

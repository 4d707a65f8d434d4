package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/nodetrust/nodetrust/test/harness"
)

// dockerRegistry is Debian's docker-registry (distribution 2.8) serving TLS
// on 127.0.0.1:port, its storage in dir. It can be restarted with another
// serving certificate on the same port and storage.
type dockerRegistry struct {
	dir    string
	port   int
	proc   *harness.Proc
	starts int
}

// name is the registry as written in image references (the alias host).
func (r *dockerRegistry) name() string { return fmt.Sprintf("%s:%d", registryHost, r.port) }

// loopback is the registry's address for the push from this process.
func (r *dockerRegistry) loopback() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }

func newDockerRegistry(t *testing.T) *dockerRegistry {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &dockerRegistry{dir: t.TempDir(), port: port}
	if err := os.MkdirAll(filepath.Join(r.dir, "storage"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.proc == nil {
			return
		}
		r.proc.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("---- docker-registry log tail (%s) ----\n%s", r.proc.LogPath, r.proc.Tail(4000))
		}
	})
	return r
}

// start (re)starts the registry serving sc, trusted by c for readiness (nil:
// readiness without verification, for certificates that must fail).
func (r *dockerRegistry) start(sc harness.Serving, c *ca) (time.Duration, error) {
	if r.proc != nil {
		if err, _, killed := r.proc.Stop(10 * time.Second); killed {
			return 0, fmt.Errorf("docker-registry did not stop on SIGTERM (%v)", err)
		}
		r.proc = nil
	}
	r.starts++
	certFile := filepath.Join(r.dir, fmt.Sprintf("server-%d.crt", r.starts))
	keyFile := filepath.Join(r.dir, fmt.Sprintf("server-%d.key", r.starts))
	if err := os.WriteFile(certFile, sc.CertPEM, 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(keyFile, sc.KeyPEM, 0o600); err != nil {
		return 0, err
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
  secret: nodetrust-e2e-not-a-secret
  tls:
    certificate: %s
    key: %s
`, filepath.Join(r.dir, "storage"), r.port, certFile, keyFile)
	cfgFile := filepath.Join(r.dir, fmt.Sprintf("config-%d.yml", r.starts))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		return 0, err
	}
	start := time.Now()
	p, err := harness.StartProc("docker-registry", filepath.Join(r.dir, "registry.log"), "docker-registry", "serve", cfgFile)
	if err != nil {
		return 0, err
	}
	r.proc = p
	tlsConfig := &tls.Config{InsecureSkipVerify: true} // c is nil: a certificate meant to fail
	if c != nil {
		tlsConfig = &tls.Config{RootCAs: c.pool(), ServerName: registryHost}
	}
	hc := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsConfig, Proxy: nil},
	}
	defer hc.CloseIdleConnections()
	var last string
	ok := harness.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		if done, werr := p.Exited(); done {
			last = fmt.Sprintf("exited: %v", werr)
			return true
		}
		resp, err := hc.Get("https://" + r.loopback() + "/v2/")
		if err != nil {
			last = err.Error()
			return false
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK
	})
	if done, _ := p.Exited(); done || !ok {
		return 0, fmt.Errorf("docker-registry not serving https://%s/v2/ (last: %s)\n%s", r.loopback(), last, p.Tail(3000))
	}
	return time.Since(start), nil
}

// push writes a small random image (one layer) as e2e/img:v1, addressed as
// 127.0.0.1:port and trusting only c, and returns its digest.
func (r *dockerRegistry) push(c *ca) (v1.Hash, error) {
	img, err := random.Image(2048, 1)
	if err != nil {
		return v1.Hash{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return v1.Hash{}, err
	}
	ref, err := name.ParseReference(r.loopback()+"/e2e/img:v1", name.StrictValidation)
	if err != nil {
		return v1.Hash{}, err
	}
	tr := &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: c.pool()},
		DialContext:     (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := remote.Write(ref, img, remote.WithTransport(tr), remote.WithContext(ctx)); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return img.Digest()
}

// imageRef is the reference the node pulls.
func (r *dockerRegistry) imageRef() string { return r.name() + "/e2e/img:v1" }

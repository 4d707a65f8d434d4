package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Registry is Debian's docker-registry (distribution 2.8) serving TLS on
// 127.0.0.1:Port, its storage in a directory of the test. It can be
// restarted with another serving certificate on the same port and storage.
type Registry struct {
	// Port is the registry's port on 127.0.0.1.
	Port int

	host   string // the alias name in image references
	dir    string
	proc   *Proc
	starts int
}

// NewRegistry picks the registry's port; image references name it host:Port.
// It is stopped when t ends, with its log's tail when t failed.
func NewRegistry(t testing.TB, host string) *Registry {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{Port: port, host: host, dir: t.TempDir()}
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

// Name is the registry as written in image references (the alias host).
func (r *Registry) Name() string { return fmt.Sprintf("%s:%d", r.host, r.Port) }

// Loopback is the registry's address for a push from this process.
func (r *Registry) Loopback() string { return fmt.Sprintf("127.0.0.1:%d", r.Port) }

// Start (re)starts the registry serving sc and waits until it serves /v2/,
// verified by ca (nil: readiness without verification, for certificates
// that must fail). It returns how long that took.
func (r *Registry) Start(sc Serving, ca *CA) (time.Duration, error) {
	if r.proc != nil {
		if err, _, killed := r.proc.Stop(10 * time.Second); killed {
			return 0, fmt.Errorf("docker-registry did not stop on SIGTERM (%v)", err)
		}
		r.proc = nil
	}
	cfgFile, err := r.writeConfig(sc)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	p, err := StartProc("docker-registry", filepath.Join(r.dir, "registry.log"), "docker-registry", "serve", cfgFile)
	if err != nil {
		return 0, err
	}
	r.proc = p
	tlsConfig := &tls.Config{InsecureSkipVerify: true} // ca is nil: a certificate meant to fail
	if ca != nil {
		tlsConfig = &tls.Config{RootCAs: ca.pool(), ServerName: r.host}
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig, Proxy: nil}}
	defer hc.CloseIdleConnections()
	var last string
	ok := Poll(30*time.Second, 50*time.Millisecond, func() bool {
		if done, werr := p.Exited(); done {
			last = fmt.Sprintf("exited: %v", werr)
			return true
		}
		resp, err := hc.Get("https://" + r.Loopback() + "/v2/")
		if err != nil {
			last = err.Error()
			return false
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK
	})
	if done, _ := p.Exited(); done || !ok {
		return 0, fmt.Errorf("docker-registry not serving https://%s/v2/ (last: %s)\n%s", r.Loopback(), last, p.Tail(3000))
	}
	return time.Since(start), nil
}

// writeConfig writes sc and the registry's config for the next start.
func (r *Registry) writeConfig(sc Serving) (string, error) {
	r.starts++
	certFile := filepath.Join(r.dir, fmt.Sprintf("server-%d.crt", r.starts))
	keyFile := filepath.Join(r.dir, fmt.Sprintf("server-%d.key", r.starts))
	if err := os.WriteFile(certFile, sc.CertPEM, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(keyFile, sc.KeyPEM, 0o600); err != nil {
		return "", err
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
  secret: nodetrust-test-not-a-secret
  tls:
    certificate: %s
    key: %s
`, filepath.Join(r.dir, "storage"), r.Port, certFile, keyFile)
	cfgFile := filepath.Join(r.dir, fmt.Sprintf("config-%d.yml", r.starts))
	return cfgFile, os.WriteFile(cfgFile, []byte(cfg), 0o644)
}

// Push writes img to repo ("path:tag") at 127.0.0.1:Port, trusting only ca.
func (r *Registry) Push(img v1.Image, repo string, ca *CA) error {
	ref, err := name.ParseReference(r.Loopback()+"/"+repo, name.StrictValidation)
	if err != nil {
		return err
	}
	tr := &http.Transport{
		Proxy:           nil,
		TLSClientConfig: &tls.Config{RootCAs: ca.pool()},
		DialContext:     (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := remote.Write(ref, img, remote.WithTransport(tr), remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// pool is a cert pool holding only ca.
func (ca *CA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

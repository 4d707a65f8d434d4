package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Label and annotation keys of the contract.
const (
	LabelCA            = "nodetrust.io/ca"
	AnnRegistries      = "nodetrust.io/registries"
	AnnNodeSelector    = "nodetrust.io/node-selector"
	AnnState           = "nodetrust.io/state"
	AnnApplied         = "nodetrust.io/applied"
	AnnSources         = "nodetrust.io/sources"
	AnnMessage         = "nodetrust.io/message"
	AnnSyncedAt        = "nodetrust.io/synced-at"
	StateReady         = "Ready"
	StateDegraded      = "Degraded"
	ContainerdCertsDir = "etc/containerd/certs.d"
	DockerCertsDir     = "etc/docker/certs.d"
	ContainersCertsDir = "etc/containers/certs.d"
)

// CA is a test certificate authority that can sign registry serving certificates.
type CA struct {
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
	// KeyPEM is the CA's private key, for "private key in tls.crt" rejections.
	KeyPEM []byte
}

// Serving is a serving certificate with its key, for a registry's TLS.
type Serving struct {
	Cert            *x509.Certificate
	CertPEM, KeyPEM []byte
}

// NewCA makes a CA valid for a day.
func NewCA(cn string) *CA {
	s, key := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, nil)
	return &CA{Cert: s.Cert, PEM: s.CertPEM, key: key, KeyPEM: s.KeyPEM}
}

// Leaf signs a serving certificate for registry reg ("host" or "host:port").
func (ca *CA) Leaf(reg string) *x509.Certificate {
	return ca.Serving(RegistryHost(reg)).Cert
}

// Serving signs a serving certificate for names, each a DNS name or an IP
// address; the first is its common name.
func (ca *CA) Serving(names ...string) Serving {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	s, _ := issue(tmpl, ca.Cert, ca.key)
	return s
}

// issue signs tmpl, valid for a day, with a new key: by parent's key, or
// itself when parent is nil. It panics on failure, which only a broken
// crypto/rand causes.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (Serving, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, big.NewInt(1<<62)); err != nil {
		panic(err)
	}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		panic(err)
	}
	return Serving{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}, key
}

// RegistryHost strips the port (and IPv6 brackets) from a registry name.
func RegistryHost(reg string) string {
	if h, _, err := net.SplitHostPort(reg); err == nil {
		return h
	}
	return strings.Trim(reg, "[]")
}

// Secret builds a labelled source Secret with ca.crt = caPEM.
func Secret(ns, name string, caPEM []byte, registries string) *corev1.Secret {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels:      map[string]string{LabelCA: "true"},
			Annotations: map[string]string{},
		},
		Data: map[string][]byte{"ca.crt": caPEM},
	}
	if registries != "" {
		s.Annotations[AnnRegistries] = registries
	}
	return s
}

func loadPool(files []string) (*x509.CertPool, int, error) {
	pool := x509.NewCertPool()
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, 0, err
		}
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				return nil, 0, fmt.Errorf("%s holds a %q PEM block", f, blk.Type)
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, 0, fmt.Errorf("%s: %v", f, err)
			}
			pool.AddCert(c)
			n++
		}
	}
	return pool, n, nil
}

func verifyLeaf(pool *x509.CertPool, leaf *x509.Certificate) error {
	opts := x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if len(leaf.IPAddresses) > 0 {
		opts.DNSName = leaf.IPAddresses[0].String()
	} else if len(leaf.DNSNames) > 0 {
		opts.DNSName = leaf.DNSNames[0]
	}
	_, err := leaf.Verify(opts)
	return err
}

// certsDirTrust judges a docker-style certs.d/R directory: every *.crt is a
// root (moby's ReadCertsDirectory and containers/image's SetupCertificates).
func certsDirTrust(dir string, leaf *x509.Certificate) error {
	files, _ := filepath.Glob(filepath.Join(dir, "*.crt"))
	if len(files) == 0 {
		return fmt.Errorf("no *.crt in %s", dir)
	}
	pool, _, err := loadPool(files)
	if err != nil {
		return err
	}
	return verifyLeaf(pool, leaf)
}

// HostsToml is the part of containerd's hosts.toml the tests look at.
type HostsToml struct {
	Server string
	CA     []string
	Raw    map[string]any
}

// ReadHostsToml parses certs.d/R/hosts.toml (ca may be a string or a list).
func ReadHostsToml(path string) (*HostsToml, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	raw := map[string]any{}
	if err := toml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	h := &HostsToml{Raw: raw}
	if s, ok := raw["server"].(string); ok {
		h.Server = s
	}
	switch v := raw["ca"].(type) {
	case string:
		h.CA = []string{v}
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s: ca entry %v is not a string", path, e)
			}
			h.CA = append(h.CA, s)
		}
	case nil:
	default:
		return nil, fmt.Errorf("%s: ca has type %T", path, v)
	}
	return h, nil
}

// containerdTrust judges certs.d/R/hosts.toml: its top-level ca files, by
// relative path, must make leaf verify.
func containerdTrust(dir string, leaf *x509.Certificate) error {
	h, err := ReadHostsToml(filepath.Join(dir, "hosts.toml"))
	if err != nil {
		return err
	}
	if len(h.CA) == 0 {
		return fmt.Errorf("%s/hosts.toml has no ca", dir)
	}
	var files []string
	for _, c := range h.CA {
		if filepath.IsAbs(c) {
			return fmt.Errorf("%s/hosts.toml: ca %q is absolute (contract: relative)", dir, c)
		}
		files = append(files, filepath.Join(dir, c))
	}
	pool, _, err := loadPool(files)
	if err != nil {
		return err
	}
	return verifyLeaf(pool, leaf)
}

// Trust reports, per runtime, nil when the files under root make leaf
// trusted for registry reg, else why not.
func Trust(root, reg string, leaf *x509.Certificate) map[string]error {
	return map[string]error{
		"containerd": containerdTrust(filepath.Join(root, ContainerdCertsDir, reg), leaf),
		"docker":     certsDirTrust(filepath.Join(root, DockerCertsDir, reg), leaf),
		"containers": certsDirTrust(filepath.Join(root, ContainersCertsDir, reg), leaf),
	}
}

// TrustedEverywhere is true when all three runtimes trust leaf for reg.
func TrustedEverywhere(root, reg string, leaf *x509.Certificate) (bool, string) {
	res := Trust(root, reg, leaf)
	var bad []string
	for _, k := range sortedKeys(res) {
		if res[k] != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", k, res[k]))
		}
	}
	return len(bad) == 0, strings.Join(bad, "; ")
}

// TrustedNowhere is true when no runtime trusts leaf for reg.
func TrustedNowhere(root, reg string, leaf *x509.Certificate) (bool, string) {
	res := Trust(root, reg, leaf)
	var good []string
	for _, k := range sortedKeys(res) {
		if res[k] == nil {
			good = append(good, k)
		}
	}
	return len(good) == 0, "still trusted by " + strings.Join(good, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// RegistryDirsGone is true when no runtime has a certs.d/reg directory.
func RegistryDirsGone(root, reg string) (bool, string) {
	var left []string
	for _, d := range []string{ContainerdCertsDir, DockerCertsDir, ContainersCertsDir} {
		p := filepath.Join(root, d, reg)
		if _, err := os.Lstat(p); err == nil {
			ents, _ := os.ReadDir(p)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			left = append(left, fmt.Sprintf("%s %v", filepath.Join(d, reg), names))
		}
	}
	return len(left) == 0, "left: " + strings.Join(left, "; ")
}

// FileInfo is what a snapshot records per path.
type FileInfo struct {
	Mode    fs.FileMode
	Size    int64
	ModTime time.Time
	Ino     uint64
}

// Snapshot records every path under root (mtime, size, mode, inode).
func Snapshot(root string) (map[string]FileInfo, error) {
	out := map[string]FileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == lockFile {
			return nil // names its holder: it changes with each process that takes it
		}
		fi := FileInfo{Mode: info.Mode(), Size: info.Size(), ModTime: info.ModTime()}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			fi.Ino = st.Ino
		}
		out[rel] = fi
		return nil
	})
	// The lock's directory, while it holds nothing else, exists only while
	// some nodetrust holds the lock.
	alone := true
	for k := range out {
		if strings.HasPrefix(k, lockDir+"/") {
			alone = false
		}
	}
	if alone {
		delete(out, lockDir)
	}
	return out, err
}

// The host root's lock (SPEC §5), relative to the root.
const (
	lockDir  = "var/lib/nodetrust"
	lockFile = lockDir + "/lock"
)

// DiffSnapshots lists every difference between two snapshots.
func DiffSnapshots(a, b map[string]FileInfo) []string {
	var diffs []string
	for _, k := range sortedKeys(a) {
		bv, ok := b[k]
		if !ok {
			diffs = append(diffs, "removed "+k)
			continue
		}
		av := a[k]
		if av.Mode != bv.Mode || av.Size != bv.Size || !av.ModTime.Equal(bv.ModTime) || av.Ino != bv.Ino {
			diffs = append(diffs, fmt.Sprintf("changed %s: %+v -> %+v", k, av, bv))
		}
	}
	for _, k := range sortedKeys(b) {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, "added "+k)
		}
	}
	return diffs
}

// WaitSettled polls snapshots of root until nothing changed for quiet (the
// agent finishes a sync after the files a test looks at: the ownership
// record is written last). It returns the settled snapshot.
func WaitSettled(root string, quiet, timeout time.Duration) (map[string]FileInfo, error) {
	deadline := time.Now().Add(timeout)
	prev, err := Snapshot(root)
	if err != nil {
		return nil, err
	}
	since := time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		cur, err := Snapshot(root)
		if err != nil {
			return nil, err
		}
		if len(DiffSnapshots(prev, cur)) > 0 {
			prev, since = cur, time.Now()
			continue
		}
		if time.Since(since) >= quiet {
			return cur, nil
		}
	}
	return nil, fmt.Errorf("%s kept changing for %v", root, timeout)
}

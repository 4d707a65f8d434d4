package harness

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

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

package loaders

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
	"github.com/stretchr/testify/require"
)

// registries every source in TestRuntimesTrustAppliedSources is annotated
// with (written with a space, which nodetrust must ignore).
const registriesAnnotation = registryPort + ", " + registryHost

var annotatedRegistries = []string{registryPort, registryHost}

// requireOnlyCertificates requires content to be PEM CERTIFICATE blocks only.
func requireOnlyCertificates(t *testing.T, name, content string) {
	t.Helper()
	rest := []byte(content)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		require.Equalf(t, "CERTIFICATE", block.Type, "%s holds a %s block", name, block.Type)
		_, err := x509.ParseCertificate(block.Bytes)
		require.NoErrorf(t, err, "%s: certificate %d", name, n)
		n++
	}
	require.Positivef(t, n, "%s holds no certificate", name)
}

// requireLayout checks the SPEC §2 shape of what was written for registry:
// containerd hosts.toml without server and a top-level ca of relative file
// names beside it; the same CA files (nFiles, one per source) in Docker's and
// containers/image's certs.d.
func requireLayout(t *testing.T, root, registry string, nFiles int) {
	t.Helper()
	cdDir := filepath.Join(root, "etc/containerd/certs.d", registry)
	raw, err := os.ReadFile(filepath.Join(cdDir, "hosts.toml"))
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, toml.Unmarshal(raw, &doc), "hosts.toml:\n%s", raw)
	require.NotContains(t, doc, "server", "generated hosts.toml must not set server:\n%s", raw)
	caList, ok := doc["ca"].([]any)
	require.Truef(t, ok, "top-level ca must be an array, got %T:\n%s", doc["ca"], raw)
	crts := crtFiles(t, cdDir)
	require.Len(t, crts, nFiles, "one CA file per source in %s", cdDir)
	var caNames []string
	for _, entry := range caList {
		s, ok := entry.(string)
		require.Truef(t, ok, "ca entry %v is %T", entry, entry)
		require.Falsef(t, filepath.IsAbs(s), "ca entry %q must be relative", s)
		require.Equalf(t, ".", filepath.Dir(filepath.Clean(s)), "ca entry %q must be beside hosts.toml", s)
		caNames = append(caNames, filepath.Clean(s))
	}
	crtNames := sortedKeys(crts)
	require.ElementsMatch(t, crtNames, caNames, "ca list vs CA files beside hosts.toml")
	wantCD := append([]string{"hosts.toml"}, crtNames...)
	sort.Strings(wantCD)
	require.Equal(t, wantCD, dirNames(t, cdDir), "files in %s", cdDir)
	for name, content := range crts {
		requireOnlyCertificates(t, name, content)
	}
	for _, d := range []string{"etc/docker/certs.d", "etc/containers/certs.d"} {
		dir := filepath.Join(root, d, registry)
		require.Equal(t, crtNames, dirNames(t, dir), "files in %s", dir)
		require.Equal(t, crts, crtFiles(t, dir), "%s must hold the same CA files as %s", dir, cdDir)
	}
}

// requireTrust requires that each runtime's loader trusts (or, with
// trusted=false, does not trust) every leaf for registryHost on registry.
func requireTrust(t *testing.T, root, registry string, trusted bool, leaves ...*x509.Certificate) {
	t.Helper()
	for _, rt := range runtimes {
		tlsc := rt.upstreamTLS(t, root, registry)
		require.Falsef(t, tlsc.InsecureSkipVerify, "%s skips verification for %s", rt.name, registry)
		for i, leaf := range leaves {
			err := verifyLeaf(leaf, tlsc.RootCAs, registryHost)
			if trusted {
				require.NoErrorf(t, err, "%s: leaf %d (issuer %q) for %s not trusted", rt.name, i, leaf.Issuer.CommonName, registry)
			} else {
				require.Errorf(t, err, "%s: leaf %d (issuer %q) for %s still trusted", rt.name, i, leaf.Issuer.CommonName, registry)
			}
		}
	}
}

// requireGone requires that no runtime has a certs.d entry for registry.
func requireGone(t *testing.T, root, registry string) {
	t.Helper()
	for _, d := range []string{"etc/containerd/certs.d", "etc/docker/certs.d", "etc/containers/certs.d"} {
		_, err := os.Lstat(filepath.Join(root, d, registry))
		require.Truef(t, os.IsNotExist(err), "%s/%s still exists after removal (err=%v); tree:\n%s", d, registry, err, treeListing(t, root))
	}
}

func TestRuntimesTrustAppliedSources(t *testing.T) {
	type built struct {
		src    source
		leaves []*x509.Certificate // must verify after apply, not after removal
	}
	cases := []struct {
		name   string
		json   bool // write the source as a JSON file instead of a YAML stream
		source func(t *testing.T) built
	}{
		{
			name: "kubernetes.io/tls Secret with tls.crt and tls.key",
			source: func(t *testing.T) built {
				ca := newCA(t, "tls-secret CA")
				return built{
					src: source{
						kind: "Secret", secretType: "kubernetes.io/tls", namespace: "registry-system", name: "registry-tls",
						labelled: true, registries: registriesAnnotation,
						data: map[string][]byte{"tls.crt": ca.pem, "tls.key": ca.keyPEM},
					},
					leaves: []*x509.Certificate{ca.leaf(t, registryHost)},
				}
			},
		},
		{
			name: "Opaque Secret with certificate.crt in stringData",
			source: func(t *testing.T) built {
				ca := newCA(t, "kaptain-style CA")
				return built{
					src: source{
						kind: "Secret", secretType: "Opaque", namespace: "kommander", name: "registry-cert",
						labelled: true, registries: registriesAnnotation,
						stringData: map[string]string{"certificate.crt": string(ca.pem)},
					},
					leaves: []*x509.Certificate{ca.leaf(t, registryHost)},
				}
			},
		},
		{
			// Two different CAs so that both keys are proven to be read.
			name: "Secret with ca.crt and ca.pem (JSON manifest)",
			json: true,
			source: func(t *testing.T) built {
				caCrt, caPem := newCA(t, "porch ca.crt CA"), newCA(t, "porch ca.pem CA")
				return built{
					src: source{
						kind: "Secret", secretType: "kubernetes.io/tls", namespace: "porch-system", name: "porch-ca",
						labelled: true, registries: registriesAnnotation,
						data: map[string][]byte{"ca.crt": caCrt.pem, "ca.pem": caPem.pem},
					},
					leaves: []*x509.Certificate{caCrt.leaf(t, registryHost), caPem.leaf(t, registryHost)},
				}
			},
		},
		{
			name: "ConfigMap with ca.crt",
			source: func(t *testing.T) built {
				ca := newCA(t, "configmap CA")
				return built{
					src: source{
						kind: "ConfigMap", namespace: "kube-system", name: "registry-ca",
						labelled: true, registries: registriesAnnotation,
						data: map[string][]byte{"ca.crt": ca.pem},
					},
					leaves: []*x509.Certificate{ca.leaf(t, registryHost)},
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := tc.source(t)
			stranger := newCA(t, "stranger CA").leaf(t, registryHost)
			unrelated := unrelatedSecret(t)
			root := newHostRoot(t)

			var applied string
			if tc.json {
				applied = writeManifestDir(t, map[string]string{
					"source.json":    b.src.json(t),
					"unrelated.yaml": unrelated.yaml(),
				})
			} else {
				applied = writeManifestDir(t, map[string]string{
					"sources.yaml": yamlStream(unrelated.yaml(), b.src.yaml()),
				})
			}
			emptySet := writeManifestDir(t, map[string]string{"unrelated.yaml": unrelated.yaml()})

			mustApply(t, applied, root)
			t.Logf("after apply:\n%s", treeListing(t, root))
			requireNoPrivateKey(t, root)
			for _, reg := range annotatedRegistries {
				requireLayout(t, root, reg, 1)
				requireTrust(t, root, reg, true, b.leaves...)
				requireTrust(t, root, reg, false, stranger)
			}

			t.Run("re-apply writes nothing", func(t *testing.T) {
				// The lock file names its holder, so each run rewrites it.
				const lock = "var/lib/nodetrust/lock"
				before := snapshot(t, root)
				delete(before, lock)
				mustApply(t, applied, root)
				after := snapshot(t, root)
				delete(after, lock)
				require.Equal(t, before, after)
			})

			mustApply(t, emptySet, root)
			requireNoPrivateKey(t, root)
			for _, reg := range annotatedRegistries {
				requireGone(t, root, reg)
				requireTrust(t, root, reg, false, b.leaves...)
			}
		})
	}
}

// A Secret and a ConfigMap with the same namespace/name for one registry:
// both CAs are trusted, each source removes only its own file.
func TestRuntimesTrustEverySourceOfARegistry(t *testing.T) {
	secretCA, cmCA := newCA(t, "secret CA"), newCA(t, "configmap CA")
	secretLeaf, cmLeaf := secretCA.leaf(t, registryHost), cmCA.leaf(t, registryHost)
	secret := source{
		kind: "Secret", secretType: "Opaque", namespace: "team-a", name: "registry-ca",
		labelled: true, registries: registryPort,
		data: map[string][]byte{"ca.crt": secretCA.pem},
	}
	cm := source{
		kind: "ConfigMap", namespace: "team-a", name: "registry-ca",
		labelled: true, registries: registryPort,
		data: map[string][]byte{"ca.crt": cmCA.pem},
	}
	root := newHostRoot(t)

	mustApply(t, writeManifestDir(t, map[string]string{"all.yaml": yamlStream(secret.yaml(), cm.yaml())}), root)
	requireLayout(t, root, registryPort, 2)
	requireTrust(t, root, registryPort, true, secretLeaf, cmLeaf)

	mustApply(t, writeManifestDir(t, map[string]string{"cm.yaml": cm.yaml()}), root)
	requireLayout(t, root, registryPort, 1)
	requireTrust(t, root, registryPort, true, cmLeaf)
	requireTrust(t, root, registryPort, false, secretLeaf)

	mustApply(t, writeManifestDir(t, map[string]string{"secret.yaml": secret.yaml()}), root)
	requireLayout(t, root, registryPort, 1)
	requireTrust(t, root, registryPort, true, secretLeaf)
	requireTrust(t, root, registryPort, false, cmLeaf)

	mustApply(t, t.TempDir(), root)
	requireGone(t, root, registryPort)
	requireTrust(t, root, registryPort, false, secretLeaf, cmLeaf)
}

// An operator's own hosts.toml (a mirror in front of the registry) is merged:
// containerd still uses the mirror with its own CA, the upstream gets
// nodetrust's CA in addition to the operator's, and removal restores the
// directory byte for byte.
func TestContainerdMergesOperatorHostsToml(t *testing.T) {
	const mirrorHost = "mirror.example"
	outside := t.TempDir() // an absolute ca path outside certs.d
	variants := []struct {
		name      string
		hostsToml string // the operator's file, written before nodetrust runs
		opCA      string // where the operator's upstream CA is stored: "" (none), "beside", "outside"
	}{
		{name: "server and ca string", opCA: "beside", hostsToml: `# Operator-managed: pull through the mirror first.
server = "https://` + registryPort + `"
ca = "operator-upstream.crt"

[host."https://` + mirrorHost + `"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.crt"
`},
		{name: "server and ca list", opCA: "beside", hostsToml: `server = "https://` + registryPort + `"
ca = ["operator-upstream.crt"]

[host."https://` + mirrorHost + `"]
  capabilities = ["pull", "resolve"]
  ca = ["mirror-ca.crt"]
  [host."https://` + mirrorHost + `".header]
    x-mirror = "operator"
`},
		{name: "absolute ca path", opCA: "outside", hostsToml: `server = "https://` + registryPort + `"
ca = ["` + filepath.Join(outside, "operator-upstream.crt") + `"]

[host."https://` + mirrorHost + `"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.crt"
`},
		{name: "no top-level ca", opCA: "", hostsToml: `server = "https://` + registryPort + `"

[host."https://` + mirrorHost + `"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.crt"
`},
		{name: "no server key", opCA: "beside", hostsToml: `ca = "operator-upstream.crt"

[host."https://` + mirrorHost + `"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.crt"
`},
	}
	loaders := []struct {
		name  string
		hosts func(t *testing.T, root, registry string) []hostView
	}{
		{"containerd-v2", containerdV2Hosts},
		{"containerd-1.7", containerd17Hosts},
	}

	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			ntCA, opCA, mirrorCA := newCA(t, "nodetrust-applied CA"), newCA(t, "operator upstream CA"), newCA(t, "mirror CA")
			ntLeaf, opLeaf, mirrorLeaf := ntCA.leaf(t, registryHost), opCA.leaf(t, registryHost), mirrorCA.leaf(t, mirrorHost)

			root := newHostRoot(t)
			dir := filepath.Join(root, "etc/containerd/certs.d", registryPort)
			require.NoError(t, os.MkdirAll(dir, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(v.hostsToml), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "mirror-ca.crt"), mirrorCA.pem, 0o644))
			switch v.opCA {
			case "beside":
				require.NoError(t, os.WriteFile(filepath.Join(dir, "operator-upstream.crt"), opCA.pem, 0o644))
			case "outside":
				require.NoError(t, os.WriteFile(filepath.Join(outside, "operator-upstream.crt"), opCA.pem, 0o644))
			}
			original := contents(snapshot(t, dir))

			// Sanity: the fixture is what containerd expects before nodetrust runs.
			for _, l := range loaders {
				hosts := l.hosts(t, root, registryPort)
				require.Len(t, hosts, 2, "%s: fixture hosts %v", l.name, hosts)
				require.Error(t, verifyLeaf(ntLeaf, upstream(t, hosts, registryPort).tls.RootCAs, registryHost))
			}

			src := source{
				kind: "Secret", secretType: "Opaque", namespace: "registry-system", name: "registry-ca",
				labelled: true, registries: registryPort,
				data: map[string][]byte{"ca.crt": ntCA.pem},
			}
			applied := writeManifestDir(t, map[string]string{"source.yaml": src.yaml()})
			mustApply(t, applied, root)
			merged, err := os.ReadFile(filepath.Join(dir, "hosts.toml"))
			require.NoError(t, err)
			t.Logf("merged hosts.toml:\n%s", merged)
			requireNoPrivateKey(t, root)

			for path, content := range original {
				if path == "hosts.toml" || strings.HasSuffix(path, "/") {
					continue
				}
				got, err := os.ReadFile(filepath.Join(dir, path))
				require.NoError(t, err, "operator file %s", path)
				require.Equal(t, content, string(got), "operator file %s changed", path)
			}

			for _, l := range loaders {
				t.Run(l.name, func(t *testing.T) {
					hosts := l.hosts(t, root, registryPort)
					require.Len(t, hosts, 2, "hosts after merge: %v", hosts)
					mirror := hosts[0]
					require.Equal(t, mirrorHost, mirror.host, "first host must stay the mirror: %v", hosts)
					require.Equal(t, "https", mirror.scheme)
					require.False(t, mirror.tls.InsecureSkipVerify)
					require.NoError(t, verifyLeaf(mirrorLeaf, mirror.tls.RootCAs, mirrorHost), "mirror CA no longer trusted for the mirror")
					require.Error(t, verifyLeaf(ntLeaf, mirror.tls.RootCAs, registryHost), "nodetrust CA leaked into the mirror's [host] section")

					up := upstream(t, hosts, registryPort)
					require.False(t, up.tls.InsecureSkipVerify)
					require.NoError(t, verifyLeaf(ntLeaf, up.tls.RootCAs, registryHost), "nodetrust CA not trusted for the upstream")
					if v.opCA != "" {
						require.NoError(t, verifyLeaf(opLeaf, up.tls.RootCAs, registryHost), "operator's upstream CA no longer trusted")
					}
				})
			}

			// Docker and containers/image get the CA as usual.
			for _, rt := range runtimes[2:] {
				tlsc := rt.upstreamTLS(t, root, registryPort)
				require.NoError(t, verifyLeaf(ntLeaf, tlsc.RootCAs, registryHost), rt.name)
			}

			t.Run("re-apply keeps the merge stable", func(t *testing.T) {
				mustApply(t, applied, root)
				again, err := os.ReadFile(filepath.Join(dir, "hosts.toml"))
				require.NoError(t, err)
				require.Equal(t, string(merged), string(again))
			})

			mustApply(t, t.TempDir(), root)
			require.Equal(t, original, contents(snapshot(t, dir)), "operator directory after removal")
			for _, l := range loaders {
				hosts := l.hosts(t, root, registryPort)
				require.Len(t, hosts, 2, "%s: hosts after removal %v", l.name, hosts)
				up := upstream(t, hosts, registryPort)
				require.Error(t, verifyLeaf(ntLeaf, up.tls.RootCAs, registryHost), "%s: nodetrust CA still trusted after removal", l.name)
				if v.opCA != "" {
					require.NoError(t, verifyLeaf(opLeaf, up.tls.RootCAs, registryHost), "%s: operator CA lost after removal", l.name)
				}
			}
			for _, d := range []string{"etc/docker/certs.d", "etc/containers/certs.d"} {
				_, err := os.Lstat(filepath.Join(root, d, registryPort))
				require.True(t, os.IsNotExist(err), "%s/%s left behind", d, registryPort)
			}
		})
	}
}

// SPEC §2: when the operator edits a merged hosts.toml, removal takes out only
// nodetrust's entries and keeps the edit. containerd must still load the file:
// a ca entry left pointing at a deleted CA file makes ConfigureHosts fail,
// which breaks every pull from the registry.
func TestContainerdKeepsOperatorEditsAfterMerge(t *testing.T) {
	const mirrorHost, mirror2Host = "mirror.example", "mirror2.example"
	ntCA, opCA, mirrorCA := newCA(t, "nodetrust-applied CA"), newCA(t, "operator upstream CA"), newCA(t, "mirror CA")
	ntLeaf, opLeaf, mirrorLeaf := ntCA.leaf(t, registryHost), opCA.leaf(t, registryHost), mirrorCA.leaf(t, mirrorHost)

	root := newHostRoot(t)
	dir := filepath.Join(root, "etc/containerd/certs.d", registryPort)
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(`server = "https://`+registryPort+`"
ca = "operator-upstream.crt"

[host."https://`+mirrorHost+`"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.crt"
`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "mirror-ca.crt"), mirrorCA.pem, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "operator-upstream.crt"), opCA.pem, 0o644))

	src := source{
		kind: "ConfigMap", namespace: "registry-system", name: "registry-ca",
		labelled: true, registries: registryPort,
		data: map[string][]byte{"ca.crt": ntCA.pem},
	}
	mustApply(t, writeManifestDir(t, map[string]string{"source.yaml": src.yaml()}), root)

	// The operator adds a second mirror to the merged file.
	f, err := os.OpenFile(filepath.Join(dir, "hosts.toml"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("\n[host.\"https://" + mirror2Host + "\"]\n  capabilities = [\"pull\"]\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	edited, err := os.ReadFile(filepath.Join(dir, "hosts.toml"))
	require.NoError(t, err)

	mustApply(t, t.TempDir(), root)
	after, err := os.ReadFile(filepath.Join(dir, "hosts.toml"))
	require.NoError(t, err)
	t.Logf("edited merged hosts.toml:\n%s\nafter removal:\n%s", edited, after)
	require.NotContains(t, string(after), "nodetrust_", "nodetrust entries left in the edited hosts.toml")
	require.Equal(t, []string{"hosts.toml", "mirror-ca.crt", "operator-upstream.crt"}, dirNames(t, dir))

	for _, l := range []struct {
		name  string
		hosts func(t *testing.T, root, registry string) []hostView
	}{{"containerd-v2", containerdV2Hosts}, {"containerd-1.7", containerd17Hosts}} {
		t.Run(l.name, func(t *testing.T) {
			hosts := l.hosts(t, root, registryPort)
			require.Len(t, hosts, 3, "hosts after removal: %v", hosts)
			require.Equal(t, mirrorHost, hosts[0].host)
			require.Equal(t, mirror2Host, hosts[1].host, "operator's edit lost")
			require.NoError(t, verifyLeaf(mirrorLeaf, hosts[0].tls.RootCAs, mirrorHost))
			up := upstream(t, hosts, registryPort)
			require.NoError(t, verifyLeaf(opLeaf, up.tls.RootCAs, registryHost), "operator CA lost")
			require.Error(t, verifyLeaf(ntLeaf, up.tls.RootCAs, registryHost), "nodetrust CA still trusted")
		})
	}
}

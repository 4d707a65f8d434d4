package source_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/registry"
	"github.com/nodetrust/nodetrust/pkg/source"
)

var (
	now = time.Now()
	ctx = context.Background()
)

func secret(ann map[string]string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ca", Labels: map[string]string{source.LabelCA: "true"}, Annotations: ann},
		Data:       data,
	}
}

func TestFromSecretSeedShapes(t *testing.T) {
	ca := certstest.NewCA(t, "Seed CA")
	reg := map[string]string{source.AnnotationRegistries: "harbor.local:5443"}
	tests := map[string]*corev1.Secret{
		"kubernetes.io/tls (tls.key ignored)": secret(reg, map[string][]byte{"tls.crt": ca.CertPEM(), "tls.key": ca.KeyPEM(t)}),
		"Kaptain certificate.crt":             secret(reg, map[string][]byte{"certificate.crt": ca.CertPEM()}),
		"Porch ca.crt and ca.pem":             secret(reg, map[string][]byte{"ca.crt": ca.CertPEM(), "ca.pem": ca.CertPEM(), "config.json": []byte("{}")}),
		"ca-bundle.crt":                       secret(reg, map[string][]byte{"ca-bundle.crt": ca.CertPEM()}),
		"stringData":                          {ObjectMeta: secret(reg, nil).ObjectMeta, StringData: map[string]string{"custom.pem": string(ca.CertPEM())}},
	}
	for name, s := range tests {
		t.Run(name, func(t *testing.T) {
			src, err := source.FromSecret(s, now)
			require.NoError(t, err)
			require.Equal(t, source.ID{Kind: "Secret", Namespace: "ns", Name: "ca"}, src.ID)
			require.Equal(t, []registry.Host{"harbor.local:5443"}, src.Registries)
			require.Len(t, src.Certs, 1, "deduplicated")
			require.Equal(t, ca.Cert.Raw, src.Certs[0].Raw)
			require.Empty(t, src.Warnings)
		})
	}
}

func TestFromConfigMap(t *testing.T) {
	ca := certstest.NewCA(t, "CM CA")
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ca", Annotations: map[string]string{
			source.AnnotationRegistries: " a.example , b.example:5000 ", source.AnnotationHostTrust: "true",
			source.AnnotationNodeSelector: "pool=gpu"}},
		BinaryData: map[string][]byte{"der.crt": ca.Cert.Raw},
	}
	src, err := source.FromConfigMap(cm, now)
	require.NoError(t, err)
	require.Equal(t, "ConfigMap", src.Kind)
	require.Equal(t, []registry.Host{"a.example", "b.example:5000"}, src.Registries)
	require.True(t, src.HostTrust)
	require.True(t, src.Matches(labels.Set{"pool": "gpu"}))
	require.False(t, src.Matches(labels.Set{"pool": "cpu"}))
}

func TestRejections(t *testing.T) {
	ca := certstest.NewCA(t, "CA")
	good := map[string][]byte{"ca.crt": ca.CertPEM()}
	reg := func(v string) map[string]string { return map[string]string{source.AnnotationRegistries: v} }
	tests := map[string]struct {
		s    *corev1.Secret
		want string
	}{
		"path in registry":     {secret(reg("r.example/x"), good), `annotation nodetrust.io/registries: registry "r.example/x": must not contain a path or slash`},
		"traversal":            {secret(reg("a.example, .."), good), `registry "..": must not contain ".."`},
		"scheme":               {secret(reg("https://r.example"), good), "must not include a scheme"},
		"empty entry":          {secret(reg("a.example,,b"), good), "empty entry"},
		"bad port":             {secret(reg("r:99999"), good), "outside 1-65535"},
		"unbracketed ipv6":     {secret(reg("fd00::1"), good), "must be bracketed"},
		"private key":          {secret(nil, map[string][]byte{"ca.crt": append(ca.CertPEM(), ca.KeyPEM(t)...)}), `key "ca.crt": PEM block 2 is "PRIVATE KEY", not CERTIFICATE`},
		"key in a pem key":     {secret(nil, map[string][]byte{"ca.crt": ca.CertPEM(), "key.pem": ca.KeyPEM(t)}), `key "key.pem": PEM block 1 is "PRIVATE KEY"`},
		"nothing parses":       {secret(nil, map[string][]byte{"ca.crt": []byte("not a cert"), "tls.crt": nil}), `keys "ca.crt", "tls.crt": no certificate parses`},
		"no certificate key":   {secret(nil, map[string][]byte{"tls.key": ca.KeyPEM(t)}), "no certificate key"},
		"too big":              {secret(nil, map[string][]byte{"ca.crt": ca.CertPEM(), "pad.pem": make([]byte, source.MaxCertBytes)}), "more than the 1048576 allowed"},
		"host-trust not bool":  {secret(map[string]string{source.AnnotationHostTrust: "yes"}, good), `annotation nodetrust.io/host-trust: "yes" is not`},
		"selector":             {secret(map[string]string{source.AnnotationNodeSelector: "a in (b"}, good), "annotation nodetrust.io/node-selector"},
		"name with underscore": {&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a_b"}, Data: good}, `metadata.name "a_b"`},
		"namespace with dot":   {&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "a.b", Name: "x"}, Data: good}, `metadata.namespace "a.b"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := source.FromSecret(tc.s, now)
			var rej *source.Rejection
			require.ErrorAs(t, err, &rej)
			require.ErrorContains(t, err, tc.want)
			require.True(t, strings.HasPrefix(err.Error(), "Secret "+tc.s.Namespace+"/"+tc.s.Name+": "), err.Error())
		})
	}
}

func TestWarnings(t *testing.T) {
	expired := certstest.Issue(t, certstest.Template{CommonName: "old", IsCA: true, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, nil)
	cnOnly := certstest.Issue(t, certstest.Template{CommonName: "registry.example", IsCA: true}, nil)
	ca := certstest.NewCA(t, "Registry CA")
	leaf := certstest.Issue(t, certstest.Template{CommonName: "registry.example", DNSNames: []string{"registry.example"}}, &ca)
	tests := map[string]struct {
		ann  map[string]string
		pem  []byte
		want []string
	}{
		"expired applies with a warning": {map[string]string{source.AnnotationRegistries: "r"}, expired.CertPEM(), []string{"expired at"}},
		"CN-only serving cert": {map[string]string{source.AnnotationRegistries: "registry.example:5000"}, cnOnly.CertPEM(),
			[]string{"does not list registry.example in its subjectAltNames; Go-based runtimes ignore the Common Name"}},
		"nothing to install": {nil, certstest.NewCA(t, "x").CertPEM(), []string{"nothing to install"}},
		"a leaf labelled as the CA": {map[string]string{source.AnnotationRegistries: "registry.example"}, leaf.CertPEM(),
			[]string{`certificate "CN=registry.example" is not a CA (no basicConstraints CA:TRUE)`}},
		"a registry's tls Secret: its leaf beside the CA that signed it": {map[string]string{source.AnnotationRegistries: "registry.example"},
			append(leaf.CertPEM(), ca.CertPEM()...), nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			src, err := source.FromSecret(secret(tc.ann, map[string][]byte{"ca.crt": tc.pem}), now)
			require.NoError(t, err)
			require.Len(t, src.Warnings, len(tc.want))
			for i, w := range tc.want {
				require.Contains(t, src.Warnings[i], w)
			}
		})
	}
}

func TestStoredRoundTrip(t *testing.T) {
	ca := certstest.NewCA(t, "CA")
	src, err := source.FromSecret(secret(map[string]string{
		source.AnnotationRegistries: "r:1", source.AnnotationHostTrust: "true", source.AnnotationNodeSelector: "a=b"},
		map[string][]byte{"ca.crt": ca.CertPEM()}), now)
	require.NoError(t, err)
	back, err := src.Store().Source()
	require.NoError(t, err)
	require.Equal(t, src.ID, back.ID)
	require.Equal(t, src.Registries, back.Registries)
	require.Equal(t, src.HostTrust, back.HostTrust)
	require.Equal(t, src.NodeSelector.String(), back.NodeSelector.String())
	require.Equal(t, src.Certs[0].Raw, back.Certs[0].Raw)
}

func TestReadPath(t *testing.T) {
	ca := certstest.NewCA(t, "CA")
	b64 := base64.StdEncoding.EncodeToString(ca.CertPEM())
	indented := "    " + strings.ReplaceAll(strings.TrimSpace(string(ca.CertPEM())), "\n", "\n    ")
	dir := t.TempDir()
	files := map[string]string{
		"multi.yaml": fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: tls, namespace: registry, labels: {nodetrust.io/ca: "true"}, annotations: {nodetrust.io/registries: "r:5000"}}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
---
# a comment-only document, then an empty one
---
apiVersion: v1
kind: Secret
metadata: {name: unlabelled}
data: {ca.crt: %s}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, labels: {nodetrust.io/ca: "true"}}
data:
  ca.crt: |
%s
`, b64, base64.StdEncoding.EncodeToString(ca.KeyPEM(t)), b64, indented),
		"list.json": fmt.Sprintf(`{"apiVersion":"v1","kind":"List","items":[
{"apiVersion":"v1","kind":"Secret","metadata":{"name":"in-list","namespace":"a","labels":{"nodetrust.io/ca":"true"}},"stringData":{"ca.pem":%q}},
{"apiVersion":"v1","kind":"Secret","metadata":{"name":"bad-b64","namespace":"a","labels":{"nodetrust.io/ca":"true"}},"data":{"ca.crt":"!!!"}},
{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"ignored"}}]}`, string(ca.CertPEM())),
		"other.yml":    `{apiVersion: v2, kind: Secret, metadata: {name: wrong-version, labels: {nodetrust.io/ca: "true"}}}`,
		".hidden.yaml": "not: [valid",
		"notes.txt":    "not: [valid",
	}
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}

	set, err := source.ReadPath(ctx, dir, now)
	require.NoError(t, err)
	require.True(t, set.Complete(), "%v", set.Errors)
	var ids []string
	for _, s := range set.Sources {
		ids = append(ids, s.ID.String())
	}
	require.Equal(t, []string{"ConfigMap default/cm", "Secret a/in-list", "Secret registry/tls"}, ids)
	require.Len(t, set.Rejected, 1)
	require.Equal(t, "Secret a/bad-b64", set.Rejected[0].ID.String())
	require.Contains(t, set.Rejected[0].Reason, "base64")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "broken.yaml"), []byte("a: [b\n"), 0o644))
	set, err = source.ReadPath(ctx, dir, now)
	require.NoError(t, err)
	require.False(t, set.Complete())
	require.ErrorContains(t, set.Errors[0], "broken.yaml: document 1")
	require.Len(t, set.Sources, 3, "the readable files still count")

	_, err = source.ReadPath(ctx, filepath.Join(dir, "missing"), now)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestReadPathDuplicateRejected(t *testing.T) {
	ca := certstest.NewCA(t, "CA")
	doc := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: x, labels: {nodetrust.io/ca: \"true\"}}\ndata: {ca.crt: %q}\n", string(ca.CertPEM()))
	p := filepath.Join(t.TempDir(), "dup.yaml")
	require.NoError(t, os.WriteFile(p, []byte(doc+"---\n"+doc), 0o644))
	set, err := source.ReadPath(ctx, p, now)
	require.NoError(t, err)
	require.Empty(t, set.Sources)
	require.Len(t, set.Rejected, 1)
	require.Contains(t, set.Rejected[0].Error(), "ConfigMap x/cm: defined twice")
}

package chart

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodetrust/nodetrust/test/harness"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// bundle is the part of trust-manager's Bundle (v1alpha1) that decides the
// target ConfigMap.
type bundle struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Sources []map[string]any `json:"sources"`
		Target  struct {
			ConfigMap struct {
				Key      string `json:"key"`
				Metadata struct {
					Labels      map[string]string `json:"labels"`
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			} `json:"configMap"`
			NamespaceSelector metav1.LabelSelector `json:"namespaceSelector"`
		} `json:"target"`
	} `json:"spec"`
}

// targetConfigMap is the ConfigMap trust-manager writes for b into ns with
// the bundle data: named like the Bundle, the data under the target key,
// the target metadata's labels and annotations plus its own bundle label
// and hash annotation, owned by the Bundle.
func targetConfigMap(b bundle, ns, data string) *corev1.ConfigMap {
	labels := map[string]string{"trust.cert-manager.io/bundle": b.Name}
	for k, v := range b.Spec.Target.ConfigMap.Metadata.Labels {
		labels[k] = v
	}
	sum := sha256.Sum256([]byte(data))
	annotations := map[string]string{"trust.cert-manager.io/hash": hex.EncodeToString(sum[:])}
	for k, v := range b.Spec.Target.ConfigMap.Metadata.Annotations {
		annotations[k] = v
	}
	yes := true
	return &corev1.ConfigMap{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{
			Name: b.Name, Namespace: ns, Labels: labels, Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "trust.cert-manager.io/v1alpha1", Kind: "Bundle",
				Name: b.Name, UID: "82562ddb-fd38-486a-9003-4833141a836c", Controller: &yes, BlockOwnerDeletion: &yes}},
		},
		Data: map[string]string{b.Spec.Target.ConfigMap.Key: data},
		// trust-manager's optional JKS/PKCS#12 formats, under their own keys.
		BinaryData: map[string][]byte{"trust-bundle.p12": {0x30, 0x82, 0x01}},
	}
}

// TestTrustManagerBundle: the ConfigMap trust-manager writes from
// examples/trust-manager/bundle.yaml (two CAs in one PEM bundle, as
// trust-manager joins them) is a nodetrust source: `nodetrust apply` makes
// containerd, Docker and containers/image trust both CAs for both
// registries of the annotation; without the copied label it is ignored.
func TestTrustManagerBundle(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(RepoRoot(), "examples", "trust-manager", "bundle.yaml"))
	require.NoError(t, err)
	var b bundle
	require.NoError(t, yaml.UnmarshalStrict(raw, &b))
	require.Equal(t, "trust.cert-manager.io/v1alpha1", b.APIVersion)
	require.Equal(t, AgentNamespace, b.Spec.Target.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"])

	caA, caB := harness.NewCA("bundle-ca-a"), harness.NewCA("bundle-ca-b")
	data := strings.TrimSpace(string(caA.PEM)) + "\n" + strings.TrimSpace(string(caB.PEM)) + "\n"
	bin := harness.Binary(t)
	apply := func(t *testing.T, cm *corev1.ConfigMap) (root, out string) {
		t.Helper()
		dir, root := t.TempDir(), harness.NewHostRoot(t)
		y, err := yaml.Marshal(cm)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "configmap.yaml"), y, 0o644))
		o, err := exec.Command(bin, "apply", "-f", dir, "--host-root", root).CombinedOutput()
		require.NoError(t, err, "%s\n%s", y, o)
		return root, string(o)
	}

	t.Run("labelled", func(t *testing.T) {
		root, out := apply(t, targetConfigMap(b, AgentNamespace, data))
		require.Contains(t, out, "1 sources applied, 0 rejected")
		regs := strings.Split(b.Spec.Target.ConfigMap.Metadata.Annotations["nodetrust.io/registries"], ",")
		require.Len(t, regs, 2)
		for _, reg := range regs {
			for _, ca := range []*harness.CA{caA, caB} {
				ok, why := harness.TrustedEverywhere(root, reg, ca.Leaf(reg))
				require.True(t, ok, "%s via %s: %s", reg, ca.Cert.Subject.CommonName, why)
			}
			ok, _ := harness.TrustedEverywhere(root, reg, harness.NewCA("other").Leaf(reg))
			require.False(t, ok, "an unrelated CA")
		}
	})
	t.Run("without the copied label", func(t *testing.T) {
		cm := targetConfigMap(b, AgentNamespace, data)
		delete(cm.Labels, "nodetrust.io/ca")
		root, out := apply(t, cm)
		require.Contains(t, out, "0 sources applied")
		ok, _ := harness.TrustedNowhere(root, "registry.example.com", caA.Leaf("registry.example.com"))
		require.True(t, ok)
	})
}

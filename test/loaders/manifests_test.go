package loaders

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// source is a Secret or ConfigMap manifest fed to `nodetrust apply`.
type source struct {
	kind       string // "Secret" or "ConfigMap"
	secretType string // Secret only, e.g. "kubernetes.io/tls", "Opaque"
	namespace  string
	name       string
	labelled   bool              // carries nodetrust.io/ca: "true"
	registries string            // nodetrust.io/registries annotation, verbatim ("" = none)
	data       map[string][]byte // Secret: base64-encoded data; ConfigMap: plain data
	stringData map[string]string // Secret only
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func blockScalar(b *strings.Builder, indent, s string) {
	b.WriteString("|\n")
	for line := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(indent + line + "\n")
	}
}

// yaml renders the source as one YAML document (no leading separator).
func (s source) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: %s\nmetadata:\n  name: %s\n  namespace: %s\n", s.kind, s.name, s.namespace)
	if s.labelled {
		b.WriteString("  labels:\n    nodetrust.io/ca: \"true\"\n")
	}
	if s.registries != "" {
		fmt.Fprintf(&b, "  annotations:\n    nodetrust.io/registries: %q\n", s.registries)
	}
	if s.kind == "Secret" && s.secretType != "" {
		fmt.Fprintf(&b, "type: %s\n", s.secretType)
	}
	if len(s.data) > 0 {
		b.WriteString("data:\n")
		for _, k := range sortedKeys(s.data) {
			if s.kind == "Secret" {
				fmt.Fprintf(&b, "  %s: %s\n", k, base64.StdEncoding.EncodeToString(s.data[k]))
			} else {
				fmt.Fprintf(&b, "  %s: ", k)
				blockScalar(&b, "    ", string(s.data[k]))
			}
		}
	}
	if len(s.stringData) > 0 {
		b.WriteString("stringData:\n")
		for _, k := range sortedKeys(s.stringData) {
			fmt.Fprintf(&b, "  %s: ", k)
			blockScalar(&b, "    ", s.stringData[k])
		}
	}
	return b.String()
}

// json renders the source as a JSON object (as `kubectl get -o json` would).
func (s source) json(t *testing.T) string {
	t.Helper()
	meta := map[string]any{"name": s.name, "namespace": s.namespace}
	if s.labelled {
		meta["labels"] = map[string]string{"nodetrust.io/ca": "true"}
	}
	if s.registries != "" {
		meta["annotations"] = map[string]string{"nodetrust.io/registries": s.registries}
	}
	obj := map[string]any{"apiVersion": "v1", "kind": s.kind, "metadata": meta}
	if s.kind == "Secret" && s.secretType != "" {
		obj["type"] = s.secretType
	}
	if len(s.data) > 0 {
		d := map[string]string{}
		for k, v := range s.data {
			if s.kind == "Secret" {
				d[k] = base64.StdEncoding.EncodeToString(v)
			} else {
				d[k] = string(v)
			}
		}
		obj["data"] = d
	}
	if len(s.stringData) > 0 {
		obj["stringData"] = s.stringData
	}
	out, err := json.MarshalIndent(obj, "", "  ")
	require.NoError(t, err)
	return string(out) + "\n"
}

// unrelatedSecret is an unlabelled Secret holding a private key; nodetrust
// must ignore it. A manifest set containing only it is the "empty" set.
func unrelatedSecret(t *testing.T) source {
	return source{
		kind: "Secret", secretType: "kubernetes.io/tls", namespace: "default", name: "not-a-ca",
		registries: registryPort, // annotated but not labelled
		data: map[string][]byte{
			"tls.crt": newCA(t, "unrelated").pem,
			"tls.key": newCA(t, "unrelated-key").keyPEM,
		},
	}
}

// writeManifestDir creates a fresh directory with the given files (name -> content).
func writeManifestDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	return dir
}

// yamlStream joins documents into one multi-document YAML stream.
func yamlStream(docs ...string) string {
	return "---\n" + strings.Join(docs, "---\n")
}

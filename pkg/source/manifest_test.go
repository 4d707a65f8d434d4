package source_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/nodetrust/nodetrust/pkg/certs/certstest"
	"github.com/nodetrust/nodetrust/pkg/hostfs"
	"github.com/nodetrust/nodetrust/pkg/hostfs/hostfstest"
	"github.com/nodetrust/nodetrust/pkg/reconcile"
	"github.com/nodetrust/nodetrust/pkg/source"
)

// goodManifest is the source each malformed case breaks.
const goodManifest = `apiVersion: v1
kind: Secret
metadata:
  name: reg
  namespace: ns
  labels:
    nodetrust.io/ca: "true"
  annotations:
    nodetrust.io/registries: r.example:5000
data:
  ca.crt: CERT
`

// goodSource returns goodManifest holding ca, and ca's base64 PEM.
func goodSource(ca certstest.Pair) (manifest, b64 string) {
	b64 = base64.StdEncoding.EncodeToString(ca.CertPEM())
	return strings.Replace(goodManifest, "CERT", b64, 1), b64
}

// TestMalformedManifestKeepsLastApplied applies a good source, then a
// malformed version of it: the object is rejected (or, without a usable
// name, the input is incomplete) with a message naming the file, the object
// and the key; its CA files stay; the report is not OK (apply exits 1).
func TestMalformedManifestKeepsLastApplied(t *testing.T) {
	ca := certstest.NewCA(t, "CA")
	good, b64 := goodSource(ca)
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	require.NoError(t, err)
	keyAsCert := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	edit := func(old, new string) string {
		require.Contains(t, good, old)
		return strings.Replace(good, old, new, 1)
	}
	const rej = "rejected Secret ns/reg: FILE: document 1: "
	tests := map[string]struct {
		manifest string
		want     string // FILE stands for the manifest's path
	}{
		"unquoted label value": {edit(`nodetrust.io/ca: "true"`, `nodetrust.io/ca: true`),
			rej + "metadata.labels[nodetrust.io/ca]: must be a string, not the boolean true (quote the value in YAML)"},
		"label value yes": {edit(`nodetrust.io/ca: "true"`, `nodetrust.io/ca: yes`),
			rej + "metadata.labels[nodetrust.io/ca]: must be a string, not the boolean true (quote the value in YAML)"},
		"labels not a map": {edit("  labels:\n    nodetrust.io/ca: \"true\"\n", "  labels: [nodetrust.io/ca]\n"),
			rej + "metadata.labels: must be an object, not a list"},
		"misspelt labels": {edit("  labels:", "  label:"), rej + "metadata.label: unknown field"},
		"non-map metadata": {edit(good[strings.Index(good, "metadata:"):strings.Index(good, "\ndata:")+1], "metadata: reg\n"),
			"unreadable FILE: document 1: Secret without a usable metadata.name: metadata: must be an object, not a string"},
		"name not a string": {edit("name: reg", "name: 42"),
			"unreadable FILE: document 1: Secret without a usable metadata.name: metadata.name: must be a string, not the number 42 (quote the value in YAML)"},
		"unknown top-level field": {good + "spec: {replicas: 1}\n", rej + "spec: unknown field"},
		"unknown metadata field":  {edit("  namespace: ns\n", "  namespace: ns\n  nmae: x\n"), rej + "metadata.nmae: unknown field"},
		"data value a number":     {edit("ca.crt: ", "ca.crt: 42 #"), rej + "data[ca.crt]: must be a base64 string, not the number 42"},
		"data a list":             {edit("data:\n  ca.crt: ", "data: #\n- "), rej + "data: must be an object, not a list"},
		"stringData value a map": {edit("data:\n  ca.crt: ", "stringData:\n  ca.pem: {a: b}\n  x: "),
			rej + "stringData[ca.pem]: must be a string, not an object"},
		"annotation not a string": {edit("  annotations:\n", "  annotations:\n    nodetrust.io/host-trust: true\n"),
			rej + "metadata.annotations[nodetrust.io/host-trust]: must be a string, not the boolean true (quote the value in YAML)"},
		"immutable a string": {good + "immutable: \"true\"\n", rej + "immutable: must be true or false, not a string"},
		"bad timestamp":      {edit("  name: reg\n", "  name: reg\n  creationTimestamp: yesterday\n"), rej + `metadata.creationTimestamp: parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006"`},
		"no kind":            {edit("kind: Secret\n", ""), "unreadable FILE: document 1: no kind (a string) to say what the object is"},
		"no apiVersion":      {edit("apiVersion: v1\n", ""), "unreadable FILE: document 1: no apiVersion (a string) to say what the object is"},
		"duplicate key":      {good + "  ca.crt: " + b64 + "\n", rej + `duplicate key, which Kubernetes refuses: line 12: key "ca.crt" already set in map`},
		"bad base64": {edit("ca.crt: ", "ca.crt: QUJ*"),
			rej + "data[ca.crt]: is not valid base64 (illegal base64 data at input byte 3); use stringData for plain text"},
		"JSON duplicate field": {`{"apiVersion":"v1","kind":"Secret","apiVersion":"v1","metadata":{"name":"reg","namespace":"ns","labels":{"nodetrust.io/ca":"true"}}}`,
			rej + `duplicate field "apiVersion"`},
		"list item label a boolean": {`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Secret","metadata":{"name":"reg","namespace":"ns","labels":{"nodetrust.io/ca":true}}}]}`,
			"rejected Secret ns/reg: FILE: document 1 items[0]: metadata.labels[nodetrust.io/ca]: must be a string, not the boolean true (quote the value in YAML)"},
		"private key typed CERTIFICATE": {edit("ca.crt: ", "ca.crt: "+keyAsCert+" #"),
			`rejected Secret ns/reg: key "ca.crt": PEM block 1 is labelled "CERTIFICATE" but holds a private key, not a certificate (a private key is never distributed)`},
		"port with a leading zero": {edit("r.example:5000", "r.example:05000"),
			`rejected Secret ns/reg: annotation nodetrust.io/registries: registry "r.example:05000": port "05000" has a leading zero; image references spell a port without one: write 5000`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			hostfstest.MkdirAll(t, dir, "etc/docker", "etc/containerd")
			root, err := hostfs.Open(dir)
			require.NoError(t, err)
			t.Cleanup(func() { root.Close() })
			file := filepath.Join(t.TempDir(), "ca.yaml")

			require.NoError(t, os.WriteFile(file, []byte(good), 0o644))
			rep := syncFile(t, root, file)
			require.True(t, rep.OK(), "%v %v", rep.Rejected, rep.InputErrors)
			require.NotEmpty(t, rep.Written)
			applied := hostfstest.Tree(t, dir, "var")

			require.NoError(t, os.WriteFile(file, []byte(tc.manifest), 0o644))
			rep = syncFile(t, root, file)
			var got []string
			for _, r := range rep.Rejected {
				got = append(got, "rejected "+r.Error())
			}
			for _, e := range rep.InputErrors {
				got = append(got, "unreadable "+e.Error())
			}
			require.Equal(t, []string{strings.ReplaceAll(tc.want, "FILE", file)}, got)
			require.False(t, rep.OK())
			require.Empty(t, rep.Removed)
			require.Empty(t, rep.Written)
			require.Equal(t, []source.ID{{Kind: "Secret", Namespace: "ns", Name: "reg"}}, rep.Kept)
			require.Equal(t, applied, hostfstest.Tree(t, dir, "var"), "the CA files stay")
		})
	}
}

func syncFile(t *testing.T, root *hostfs.Root, file string) reconcile.Report {
	t.Helper()
	set, err := source.ReadPath(context.Background(), file, now)
	require.NoError(t, err)
	rep, err := reconcile.Sync(context.Background(), root, set, reconcile.Options{})
	require.NoError(t, err)
	return rep
}

// TestReadPathRefusesNonRegularFiles: a FIFO, socket or device, in the
// directory or given itself, is refused without blocking, naming the file;
// the set is incomplete and the regular files still count.
func TestReadPathRefusesNonRegularFiles(t *testing.T) {
	good, _ := goodSource(certstest.NewCA(t, "CA"))
	fifo := func(t *testing.T, p string) { require.NoError(t, unix.Mkfifo(p, 0o644)) }
	socket := func(t *testing.T, p string) {
		l, err := net.Listen("unix", p)
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
	}
	tests := map[string]struct {
		make func(t *testing.T, p string)
		what string
	}{
		"FIFO":   {fifo, "a named pipe (FIFO)"},
		"socket": {socket, "a socket"},
		"device": {func(t *testing.T, p string) { require.NoError(t, os.Symlink("/dev/zero", p)) }, "a device"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(good), 0o644))
			odd := filepath.Join(dir, "b.yaml")
			tc.make(t, odd)
			want := odd + ": is " + tc.what + ", not a regular manifest file; refused"

			for _, path := range []string{dir, odd} {
				set := readWithin(t, path, 5*time.Second)
				require.False(t, set.Complete())
				require.Len(t, set.Errors, 1)
				require.EqualError(t, set.Errors[0], want)
				require.True(t, set.Files[odd].Unreadable)
				if path == dir {
					require.Len(t, set.Sources, 1, "the regular file still counts")
				}
			}
		})
	}
}

// readWithin reads path and fails the test if that blocks.
func readWithin(t *testing.T, path string, limit time.Duration) source.Set {
	t.Helper()
	type result struct {
		set source.Set
		err error
	}
	done := make(chan result, 1)
	go func() {
		set, err := source.ReadPath(context.Background(), path, now)
		done <- result{set, err}
	}()
	select {
	case r := <-done:
		require.NoError(t, r.err)
		return r.set
	case <-time.After(limit):
		t.Fatalf("reading %s blocked for %s", path, limit)
		return source.Set{}
	}
}

func TestReadPathHonoursContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.yaml")
	require.NoError(t, os.WriteFile(p, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"), 0o644))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := source.ReadPath(ctx, p, now)
	require.ErrorIs(t, err, context.Canceled)
}

// TestReadPathAcceptsServerOutput: strict decoding accepts everything
// `kubectl get -o yaml` prints for a Secret and a ConfigMap.
func TestReadPathAcceptsServerOutput(t *testing.T) {
	_, b64 := goodSource(certstest.NewCA(t, "CA"))
	list := `apiVersion: v1
items:
- apiVersion: v1
  data:
    ca.crt: ` + b64 + `
  immutable: false
  kind: Secret
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"v1","kind":"Secret"}
      nodetrust.io/registries: r.example:5000
    creationTimestamp: "2026-11-30T10:00:00Z"
    finalizers: [example.com/keep]
    generation: 1
    labels:
      nodetrust.io/ca: "true"
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:data:
          .: {}
          f:ca.crt: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2026-11-30T10:00:00Z"
    name: reg
    namespace: ns
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: ConfigMap
      name: owner
      uid: 0b9c1f6e-1111-4a8e-9c4e-2d2d2d2d2d2d
    resourceVersion: "4242"
    uid: 5f0e3a1c-2222-4b7d-8e2f-3c3c3c3c3c3c
  type: Opaque
- apiVersion: v1
  binaryData: {der.crt: ` + b64 + `}
  data: {ca.pem: "", note: text}
  kind: ConfigMap
  metadata: {name: cm, namespace: ns, labels: {nodetrust.io/ca: "true"}, deletionGracePeriodSeconds: 30}
kind: List
metadata:
  resourceVersion: ""
`
	p := filepath.Join(t.TempDir(), "get.yaml")
	require.NoError(t, os.WriteFile(p, []byte(list), 0o644))
	set, err := source.ReadPath(context.Background(), p, now)
	require.NoError(t, err)
	require.True(t, set.Complete(), "%v", set.Errors)
	require.Empty(t, set.Rejected)
	require.Len(t, set.Sources, 2)
	info, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, source.FileRead{Bytes: len(list), ModTime: info.ModTime(), Objects: 2}, set.Files[p])

	// The API's own typed list leaves kind and apiVersion out of its items.
	raw := `{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[` +
		`{"metadata":{"name":"raw","namespace":"ns","labels":{"nodetrust.io/ca":"true"}},"data":{"ca.crt":"` + b64 + `"},"type":"Opaque"}]}`
	require.NoError(t, os.WriteFile(p, []byte(raw), 0o644))
	set, err = source.ReadPath(context.Background(), p, now)
	require.NoError(t, err)
	require.True(t, set.Complete(), "%v", set.Errors)
	require.Len(t, set.Sources, 1)
	require.Equal(t, source.ID{Kind: "Secret", Namespace: "ns", Name: "raw"}, set.Sources[0].ID)
}

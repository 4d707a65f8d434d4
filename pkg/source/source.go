// Package source turns labelled Secrets and ConfigMaps into validated CA
// sources. It owns the nodetrust.io label and annotation keys and every rule
// of what a source may contain; a source that breaks a rule is rejected with
// a reason naming the object and the offending key or annotation.
package source

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nodetrust/nodetrust/pkg/certs"
	"github.com/nodetrust/nodetrust/pkg/registry"
)

// Label and annotation keys of the external contract.
const (
	LabelCA                = "nodetrust.io/ca"
	AnnotationRegistries   = "nodetrust.io/registries"
	AnnotationHostTrust    = "nodetrust.io/host-trust"
	AnnotationNodeSelector = "nodetrust.io/node-selector"
)

// MaxCertBytes bounds the certificate data of one source.
const MaxCertBytes = 1 << 20

// Kinds of objects a source can come from.
const (
	KindSecret    = "Secret"
	KindConfigMap = "ConfigMap"
)

// ID identifies a source. A Secret and a ConfigMap of the same
// namespace/name are different sources.
type ID struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// String returns "Kind namespace/name".
func (id ID) String() string { return id.Kind + " " + id.Namespace + "/" + id.Name }

// Less orders IDs by kind, namespace and name.
func (id ID) Less(o ID) bool {
	if id.Kind != o.Kind {
		return id.Kind < o.Kind
	}
	if id.Namespace != o.Namespace {
		return id.Namespace < o.Namespace
	}
	return id.Name < o.Name
}

// Source is a validated CA source.
type Source struct {
	ID
	Registries   []registry.Host
	HostTrust    bool
	NodeSelector labels.Selector // nil when the source applies to every node
	Certs        []certs.Cert    // deduplicated and sorted
	Warnings     []string
}

// Matches reports whether the source applies to a node with nodeLabels.
func (s Source) Matches(nodeLabels labels.Set) bool {
	return s.NodeSelector == nil || s.NodeSelector.Matches(nodeLabels)
}

// Rejection explains why a source was not applied.
type Rejection struct {
	ID     ID
	Reason string
}

func (r *Rejection) Error() string { return r.ID.String() + ": " + r.Reason }

// Labelled reports whether an object's labels select it as a source.
func Labelled(objLabels map[string]string) bool { return objLabels[LabelCA] == "true" }

// FromSecret validates a Secret. stringData, when present, wins over data
// for the same key, as the API server would merge it.
func FromSecret(s *corev1.Secret, now time.Time) (Source, error) {
	data := make(map[string][]byte, len(s.Data)+len(s.StringData))
	for k, v := range s.Data {
		data[k] = v
	}
	for k, v := range s.StringData {
		data[k] = []byte(v)
	}
	return build(ID{KindSecret, s.Namespace, s.Name}, s.Annotations, data, now)
}

// FromConfigMap validates a ConfigMap (data and binaryData).
func FromConfigMap(cm *corev1.ConfigMap, now time.Time) (Source, error) {
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	return build(ID{KindConfigMap, cm.Namespace, cm.Name}, cm.Annotations, data, now)
}

// IsCertKey reports whether a data key holds certificates: ca.crt, ca.pem,
// ca-bundle.crt, certificate.crt, tls.crt and any other *.crt or *.pem.
func IsCertKey(key string) bool {
	return strings.HasSuffix(key, ".crt") || strings.HasSuffix(key, ".pem")
}

func build(id ID, ann map[string]string, data map[string][]byte, now time.Time) (Source, error) {
	reject := func(format string, args ...any) (Source, error) {
		return Source{}, &Rejection{ID: id, Reason: fmt.Sprintf(format, args...)}
	}
	if errs := validation.IsDNS1123Label(id.Namespace); len(errs) > 0 {
		return reject("metadata.namespace %q: %s", id.Namespace, errs[0])
	}
	if errs := validation.IsDNS1123Subdomain(id.Name); len(errs) > 0 {
		return reject("metadata.name %q: %s", id.Name, errs[0])
	}
	src := Source{ID: id}
	if raw, ok := ann[AnnotationRegistries]; ok && strings.TrimSpace(raw) != "" {
		hosts, err := registry.ParseList(raw)
		if err != nil {
			return reject("annotation %s: %v", AnnotationRegistries, err)
		}
		src.Registries = hosts
	}
	if raw, ok := ann[AnnotationHostTrust]; ok {
		v, err := strconv.ParseBool(strings.TrimSpace(raw))
		if err != nil {
			return reject("annotation %s: %q is not \"true\" or \"false\"", AnnotationHostTrust, raw)
		}
		src.HostTrust = v
	}
	if raw := strings.TrimSpace(ann[AnnotationNodeSelector]); raw != "" {
		sel, err := labels.Parse(raw)
		if err != nil {
			return reject("annotation %s: %v", AnnotationNodeSelector, err)
		}
		src.NodeSelector = sel
	}
	if err := readCerts(&src, data); err != nil {
		return reject("%s", err)
	}
	src.Warnings = append(src.Warnings, warnings(src, now)...)
	return src, nil
}

// readCerts parses every certificate key, in key order for stable messages.
func readCerts(src *Source, data map[string][]byte) error {
	keys := make([]string, 0, len(data))
	total := 0
	for k, v := range data {
		if IsCertKey(k) {
			keys = append(keys, k)
			total += len(v)
		}
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return fmt.Errorf("no certificate key (ca.crt, ca.pem, tls.crt, certificate.crt or another *.crt/*.pem key)")
	}
	if total > MaxCertBytes {
		return fmt.Errorf("certificate data is %d bytes, more than the %d allowed", total, MaxCertBytes)
	}
	var all []certs.Cert
	for _, k := range keys {
		found, skipped, err := certs.Parse(data[k])
		if err != nil {
			return fmt.Errorf("key %q: %w", k, err)
		}
		for _, s := range skipped {
			src.Warnings = append(src.Warnings, fmt.Sprintf("key %q: %s; skipped", k, s))
		}
		all = append(all, found...)
	}
	if len(all) == 0 {
		return fmt.Errorf("keys %s: no certificate parses", strings.Join(quote(keys), ", "))
	}
	src.Certs = certs.Normalize(all)
	return nil
}

func warnings(src Source, now time.Time) []string {
	var out []string
	if len(src.Registries) == 0 && !src.HostTrust {
		out = append(out, fmt.Sprintf("no %s annotation and %s is not \"true\": nothing to install", AnnotationRegistries, AnnotationHostTrust))
	}
	for _, c := range src.Certs {
		if p := certs.ValidityProblem(c, now); p != "" {
			out = append(out, p)
		}
		if !c.IsCA && !issuedByOneOf(c, src.Certs) {
			out = append(out, fmt.Sprintf("certificate %q is not a CA (no basicConstraints CA:TRUE): trusted as it is, it verifies only a registry that serves exactly this certificate, and breaks at its renewal; label the CA that issued it instead", c.Subject.String()))
		}
		for _, r := range src.Registries {
			if certs.ServingCertMismatch(c, r.Hostname()) {
				out = append(out, fmt.Sprintf("self-signed certificate %q does not list %s in its subjectAltNames; Go-based runtimes ignore the Common Name, so pulls from %s will still fail with an x509 error", c.Subject.String(), r.Hostname(), r))
			}
		}
	}
	return out
}

func quote(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}

// issuedByOneOf reports whether a CA among all issued c: a registry's own
// kubernetes.io/tls Secret holds its serving certificate (tls.crt) beside
// the CA that signed it (ca.crt), and then the leaf is harmless.
func issuedByOneOf(c certs.Cert, all []certs.Cert) bool {
	for _, ca := range all {
		if ca.IsCA && bytes.Equal(ca.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(ca.Certificate) == nil {
			return true
		}
	}
	return false
}

package source

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// Set is the desired set of sources read from the API or from manifests.
type Set struct {
	Sources  []Source
	Rejected []*Rejection
	// Errors lists input that could not be read at all (a file that does
	// not parse, a failed API list). Then the set is incomplete and nothing
	// may be removed on its account.
	Errors []error
}

// Complete reports whether every input was read.
func (s Set) Complete() bool { return len(s.Errors) == 0 }

// ManifestExtensions are the file endings read from a manifest directory.
var ManifestExtensions = []string{".yaml", ".yml", ".json"}

// ReadPath reads a manifest file, or every manifest file directly inside a
// directory (not recursive, like kubectl apply -f DIR; names starting with
// "." are skipped). A missing path is returned as an error; anything
// unreadable inside it lands in Set.Errors.
func ReadPath(path string, now time.Time) (Set, error) {
	info, err := os.Stat(path)
	if err != nil {
		return Set{}, err
	}
	files := []string{path}
	if info.IsDir() {
		if files, err = manifestFiles(path); err != nil {
			return Set{}, err
		}
	}
	r := reader{now: now, seen: map[ID]string{}}
	for _, f := range files {
		r.readFile(f)
	}
	return r.set(), nil
}

func manifestFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || e.IsDir() {
			continue
		}
		for _, ext := range ManifestExtensions {
			if strings.HasSuffix(name, ext) {
				files = append(files, filepath.Join(dir, name))
				break
			}
		}
	}
	sort.Strings(files)
	return files, nil
}

type reader struct {
	now      time.Time
	sources  map[ID]Source
	rejected map[ID]*Rejection
	seen     map[ID]string // where each ID was first defined
	errs     []error
}

func (r *reader) readFile(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		r.errs = append(r.errs, err)
		return
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for doc := 1; ; doc++ {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			r.errs = append(r.errs, fmt.Errorf("%s: document %d: %w", path, doc, err))
			return
		}
		if obj != nil {
			r.object(fmt.Sprintf("%s#%d", path, doc), &unstructured.Unstructured{Object: obj})
		}
	}
}

// object handles one decoded object: a List is flattened, labelled Secrets
// and ConfigMaps become sources, everything else is ignored.
func (r *reader) object(where string, u *unstructured.Unstructured) {
	if u.IsList() {
		err := u.EachListItem(func(item runtime.Object) error {
			r.object(where, item.(*unstructured.Unstructured))
			return nil
		})
		if err != nil {
			r.errs = append(r.errs, fmt.Errorf("%s: %w", where, err))
		}
		return
	}
	kind := u.GetKind()
	if (kind != KindSecret && kind != KindConfigMap) || u.GetAPIVersion() != "v1" || !Labelled(u.GetLabels()) {
		return
	}
	id := ID{Kind: kind, Namespace: u.GetNamespace(), Name: u.GetName()}
	if id.Namespace == "" {
		id.Namespace = "default"
		u.SetNamespace("default")
	}
	if first, dup := r.seen[id]; dup {
		r.reject(&Rejection{ID: id, Reason: fmt.Sprintf("defined twice (%s and %s)", first, where)})
		return
	}
	r.seen[id] = where
	src, err := fromUnstructured(u, r.now)
	var rej *Rejection
	switch {
	case errors.As(err, &rej):
		r.reject(rej)
	case err != nil:
		r.reject(&Rejection{ID: id, Reason: err.Error()})
	default:
		r.add(src)
	}
}

func fromUnstructured(u *unstructured.Unstructured, now time.Time) (Source, error) {
	if u.GetKind() == KindSecret {
		var s corev1.Secret
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s); err != nil {
			return Source{}, err
		}
		return FromSecret(&s, now)
	}
	var cm corev1.ConfigMap
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &cm); err != nil {
		return Source{}, err
	}
	return FromConfigMap(&cm, now)
}

func (r *reader) add(s Source) {
	if r.sources == nil {
		r.sources = map[ID]Source{}
	}
	r.sources[s.ID] = s
}

func (r *reader) reject(rej *Rejection) {
	if r.rejected == nil {
		r.rejected = map[ID]*Rejection{}
	}
	delete(r.sources, rej.ID)
	r.rejected[rej.ID] = rej
}

func (r *reader) set() Set {
	s := Set{Errors: r.errs}
	for _, src := range r.sources {
		s.Sources = append(s.Sources, src)
	}
	for _, rej := range r.rejected {
		s.Rejected = append(s.Rejected, rej)
	}
	s.Sort()
	return s
}

// Sort orders sources and rejections by ID.
func (s *Set) Sort() {
	sort.Slice(s.Sources, func(i, j int) bool { return s.Sources[i].ID.Less(s.Sources[j].ID) })
	sort.Slice(s.Rejected, func(i, j int) bool { return s.Rejected[i].ID.Less(s.Rejected[j].ID) })
}

package source

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Set is the desired set of sources read from the API or from manifests.
type Set struct {
	Sources  []Source
	Rejected []*Rejection
	// Errors lists input that could not be read at all (a file that does
	// not parse, a failed API list). Then the set is incomplete and nothing
	// may be removed on its account.
	Errors []error
	// Files says what ReadPath found in each manifest file it read; nil
	// for a set from the API.
	Files map[string]FileRead
}

// FileRead is what reading one manifest file found.
type FileRead struct {
	Bytes   int       // the length read
	ModTime time.Time // when it was last written, as read
	// Objects counts the labelled Secrets and ConfigMaps in the file, valid
	// or rejected, and those that may be labelled but are unreadable.
	Objects int
	// Unreadable: the file, or part of it, could not be read (Set.Errors
	// says why).
	Unreadable bool
}

// Complete reports whether every input was read.
func (s Set) Complete() bool { return len(s.Errors) == 0 }

// ManifestExtensions are the file endings read from a manifest directory.
var ManifestExtensions = []string{".yaml", ".yml", ".json"}

// ReadPath reads a manifest file, or every manifest file directly inside a
// directory (not recursive, like kubectl apply -f DIR; names starting with
// "." are skipped). A missing path is returned as an error, and so is ctx
// ending; anything unreadable inside it lands in Set.Errors: a file that
// is not a regular file (a FIFO, socket or device is refused, never opened
// for a blocking read), a document that does not parse, and a labelled
// Secret or ConfigMap too malformed to say which object it is.
//
// Objects are decoded as strictly as the API server decodes them: an
// unknown field, a value of the wrong type, a duplicate key or invalid
// base64 rejects the object, naming the file, the document and the field.
func ReadPath(ctx context.Context, path string, now time.Time) (Set, error) {
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
	r := reader{now: now, seen: map[ID]string{}, files: map[string]FileRead{}}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return Set{}, err
		}
		r.readFile(ctx, f)
	}
	if err := ctx.Err(); err != nil { // a read cut short
		return Set{}, err
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

// readRegular reads a regular file. Anything else is refused before a read
// could block: the path is checked, then opened non-blocking (a FIFO's open
// would wait for a writer) and checked again on the open file. A file that
// changes while it is read is an error, not a half-written manifest.
func readRegular(ctx context.Context, path string) ([]byte, fs.FileInfo, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, nil, notRegular(path, info.Mode())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !before.Mode().IsRegular() {
		return nil, nil, notRegular(path, before.Mode())
	}
	var buf bytes.Buffer
	chunk := make([]byte, 64<<10)
	for {
		if err := ctx.Err(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		n, err := f.Read(chunk)
		buf.Write(chunk[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
	}
	after, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) || int64(buf.Len()) != after.Size() {
		return nil, nil, fmt.Errorf("%s: changed while it was read (a write in progress)", path)
	}
	return buf.Bytes(), after, nil
}

func notRegular(path string, mode fs.FileMode) error {
	what := "not a regular file"
	switch {
	case mode&fs.ModeNamedPipe != 0:
		what = "a named pipe (FIFO)"
	case mode&fs.ModeSocket != 0:
		what = "a socket"
	case mode&fs.ModeDevice != 0:
		what = "a device"
	case mode.IsDir():
		what = "a directory"
	}
	return fmt.Errorf("%s: is %s, not a regular manifest file; refused", path, what)
}

type reader struct {
	now      time.Time
	sources  map[ID]Source
	rejected map[ID]*Rejection
	seen     map[ID]string // where each ID was first defined
	errs     []error
	files    map[string]FileRead
	file     string // being read
}

func (r *reader) readFile(ctx context.Context, path string) {
	r.file = path
	r.files[path] = FileRead{}
	data, info, err := readRegular(ctx, path)
	if err != nil {
		r.inputError(err)
		return
	}
	r.update(func(f *FileRead) { f.Bytes, f.ModTime = len(data), info.ModTime() })
	isJSON := utilyaml.IsJSONBuffer(data)
	docs, err := splitDocuments(data, isJSON)
	if isJSON && err != nil { // YAML in flow style: {a: b}
		isJSON = false
		docs, err = splitDocuments(data, false)
	}
	for i, doc := range docs {
		where := fmt.Sprintf("%s: document %d", path, i+1)
		obj, strictErr, err := decodeDocument(doc, isJSON)
		if err != nil {
			r.inputError(fmt.Errorf("%s: %w", where, err))
			continue
		}
		if obj != nil {
			r.object(where, obj, strictErr)
		}
	}
	if err != nil {
		r.inputError(fmt.Errorf("%s: document %d: %w", path, len(docs)+1, err))
	}
}

// splitDocuments splits a YAML stream at "---" lines, or a JSON stream into
// its values.
func splitDocuments(data []byte, isJSON bool) ([][]byte, error) {
	var docs [][]byte
	if isJSON {
		dec := json.NewDecoder(bytes.NewReader(data))
		for {
			var doc json.RawMessage
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				return docs, nil
			}
			if err != nil {
				return docs, err
			}
			docs = append(docs, doc)
		}
	}
	yr := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := yr.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, err
		}
		docs = append(docs, doc)
	}
}

// decodeDocument decodes one document into JSON values (integers as
// int64). A duplicate key is a strictErr: the object is still returned, so
// that it can be rejected by name. obj is nil for an empty document.
func decodeDocument(doc []byte, isJSON bool) (obj map[string]any, strictErr, err error) {
	var v any
	if isJSON {
		strict, err := sigsjson.UnmarshalStrict(doc, &v, sigsjson.DisallowDuplicateFields)
		if err != nil {
			return nil, nil, err
		}
		if len(strict) > 0 {
			strictErr = errors.Join(strict...)
		}
	} else {
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			dupErr := err
			if js, err = yaml.YAMLToJSON(doc); err != nil {
				return nil, nil, err
			}
			strictErr = duplicateKeys(dupErr)
		}
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &v); err != nil {
			return nil, nil, err
		}
	}
	switch v := v.(type) {
	case nil:
		return nil, nil, nil
	case map[string]any:
		return v, strictErr, nil
	default:
		return nil, nil, fmt.Errorf("is %s, not an object", describe(v))
	}
}

// duplicateKeys rewords the strict decoding error of a YAML document that
// decodes only when duplicate keys are allowed.
func duplicateKeys(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:")
	return fmt.Errorf("duplicate key, which Kubernetes refuses: %s", strings.Join(strings.Fields(msg), " "))
}

// object handles one decoded object: a List is flattened, labelled Secrets
// and ConfigMaps become sources, everything else is ignored.
func (r *reader) object(where string, obj map[string]any, strictErr error) {
	kind, _ := obj["kind"].(string)
	apiVersion, _ := obj["apiVersion"].(string)
	if kind == "" || apiVersion == "" {
		r.inputError(fmt.Errorf("%s: %s", where, typeMetaProblem(obj)))
		return
	}
	if items, ok := obj["items"]; ok && strings.HasSuffix(kind, "List") {
		r.list(where, obj, items, strictErr)
		return
	}
	if (kind != KindSecret && kind != KindConfigMap) || apiVersion != "v1" {
		if strictErr != nil {
			r.inputError(fmt.Errorf("%s: %w", where, strictErr))
		}
		return
	}
	r.candidate(where, kind, obj, strictErr)
}

func typeMetaProblem(obj map[string]any) string {
	var missing []string
	for _, k := range []string{"apiVersion", "kind"} {
		if s, ok := obj[k].(string); !ok || s == "" {
			missing = append(missing, k)
		}
	}
	return fmt.Sprintf("no %s (a string) to say what the object is", strings.Join(missing, " and no "))
}

// typedListItem gives an item of a typed list (SecretList, as the API
// returns it) the kind and apiVersion the list implies, where it has none.
func typedListItem(item map[string]any, list map[string]any) {
	kind, apiVersion := list["kind"].(string), list["apiVersion"]
	if kind == "List" {
		return
	}
	if _, ok := item["kind"]; !ok {
		item["kind"] = strings.TrimSuffix(kind, "List")
	}
	if _, ok := item["apiVersion"]; !ok {
		item["apiVersion"] = apiVersion
	}
}

func (r *reader) list(where string, listType map[string]any, items any, strictErr error) {
	if strictErr != nil {
		r.inputError(fmt.Errorf("%s: %w", where, strictErr))
	}
	list, ok := items.([]any)
	if !ok {
		r.inputError(fmt.Errorf("%s: items must be a list, not %s", where, describe(items)))
		return
	}
	for i, item := range list {
		itemWhere := fmt.Sprintf("%s items[%d]", where, i)
		obj, ok := item.(map[string]any)
		if !ok {
			r.inputError(fmt.Errorf("%s: must be an object, not %s", itemWhere, describe(item)))
			continue
		}
		typedListItem(obj, listType)
		r.object(itemWhere, obj, nil)
	}
}

// identify reads what it can of an object's ID from its raw form; named:
// metadata.name is a non-empty string and the namespace a string.
func identify(kind string, obj map[string]any) (id ID, named bool) {
	meta, ok := obj["metadata"].(map[string]any)
	if !ok {
		return ID{Kind: kind}, false
	}
	name, named := meta["name"].(string)
	id = ID{Kind: kind, Namespace: "default", Name: name}
	switch ns := meta["namespace"].(type) {
	case nil:
	case string:
		if ns != "" {
			id.Namespace = ns
		}
	default:
		named = false
	}
	return id, named && name != ""
}

// candidate handles a v1 Secret or ConfigMap. One that breaks strict
// decoding is rejected by its ID, which keeps its last applied version,
// even when it looks unlabelled: a misspelt "labels" must not read as "no
// longer a source". Without a usable ID it makes the set incomplete.
func (r *reader) candidate(where, kind string, obj map[string]any, strictErr error) {
	typ := reflect.TypeFor[corev1.Secret]()
	if kind == KindConfigMap {
		typ = reflect.TypeFor[corev1.ConfigMap]()
	}
	var check fieldCheck
	check.value("", obj, typ)
	var problems fieldErrors
	if strictErr != nil {
		problems = append(problems, strictErr.Error())
	}
	if err := check.err(); err != nil {
		problems = append(problems, err.Error())
	}
	var bad error
	if len(problems) > 0 {
		bad = problems
	}
	var src Source
	var err error
	if bad == nil {
		var labelled bool
		if src, labelled, err = fromObject(kind, obj, r.now); !labelled {
			return // not a source
		}
	}
	r.update(func(f *FileRead) { f.Objects++ })
	id, named := identify(kind, obj)
	if bad != nil && !named {
		r.inputError(fmt.Errorf("%s: %s without a usable metadata.name: %w", where, kind, bad))
		return
	}
	if first, dup := r.seen[id]; dup {
		r.reject(&Rejection{ID: id, Reason: fmt.Sprintf("defined twice (%s and %s)", first, where)})
		return
	}
	r.seen[id] = where
	var rej *Rejection
	switch {
	case bad != nil:
		r.reject(&Rejection{ID: id, Reason: fmt.Sprintf("%s: %v", where, bad)})
	case errors.As(err, &rej):
		r.reject(rej)
	case err != nil:
		r.reject(&Rejection{ID: id, Reason: fmt.Sprintf("%s: %v", where, err)})
	default:
		r.add(src)
	}
}

// fromObject decodes an object that passed the strict check; labelled
// says whether it is a source at all.
func fromObject(kind string, obj map[string]any, now time.Time) (src Source, labelled bool, err error) {
	var s corev1.Secret
	var cm corev1.ConfigMap
	target, meta := any(&s), &s.ObjectMeta
	if kind == KindConfigMap {
		target, meta = &cm, &cm.ObjectMeta
	}
	raw, err := json.Marshal(obj)
	if err == nil {
		err = json.Unmarshal(raw, target)
	}
	if err != nil {
		return Source{}, true, err
	}
	if !Labelled(meta.Labels) {
		return Source{}, false, nil
	}
	if meta.Namespace == "" {
		meta.Namespace = "default"
	}
	if kind == KindSecret {
		src, err = FromSecret(&s, now)
	} else {
		src, err = FromConfigMap(&cm, now)
	}
	return src, true, err
}

func (r *reader) update(f func(*FileRead)) {
	fr := r.files[r.file]
	f(&fr)
	r.files[r.file] = fr
}

func (r *reader) inputError(err error) {
	r.errs = append(r.errs, err)
	r.update(func(f *FileRead) { f.Unreadable = true })
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
	s := Set{Errors: r.errs, Files: r.files}
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

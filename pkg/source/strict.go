package source

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// fieldCheck checks a decoded JSON value against the Go type the API server
// would decode it into, the way its strict field validation does: an unknown
// field or a value of the wrong type is a problem, named by its field path
// (metadata.labels[nodetrust.io/ca]). Every problem is collected, so one
// message lists all of them.
type fieldCheck struct {
	problems []string
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func (c *fieldCheck) add(path, format string, args ...any) {
	c.problems = append(c.problems, path+": "+fmt.Sprintf(format, args...))
}

// err returns the problems found, sorted by path, or nil.
func (c *fieldCheck) err() error {
	if len(c.problems) == 0 {
		return nil
	}
	sort.Strings(c.problems)
	return fieldErrors(c.problems)
}

// fieldErrors lists the problems of one object.
type fieldErrors []string

func (e fieldErrors) Error() string { return strings.Join(e, "; ") }

// value checks v, a value decoded from JSON (map[string]any, []any, string,
// bool, int64, float64 or nil), against t. null is accepted anywhere, as
// encoding/json accepts it.
func (c *fieldCheck) value(path string, v any, t reflect.Type) {
	if v == nil {
		return
	}
	if t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(unmarshalerType) {
		c.unmarshaler(path, v, t) // metav1.Time, FieldsV1
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		c.value(path, v, t.Elem())
	case reflect.Struct:
		c.object(path, v, t)
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			c.add(path, "must be an object, not %s", describe(v))
			return
		}
		for k, val := range m {
			c.value(path+"["+k+"]", val, t.Elem())
		}
	case reflect.Slice:
		c.slice(path, v, t)
	case reflect.String:
		if _, ok := v.(string); !ok {
			c.add(path, "must be a string, not %s%s", describe(v), quoteHint(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			c.add(path, "must be true or false, not %s", describe(v))
		}
	case reflect.Int, reflect.Int32, reflect.Int64:
		if _, ok := v.(int64); !ok {
			c.add(path, "must be an integer, not %s", describe(v))
		}
	case reflect.Interface:
	default:
		c.add(path, "cannot be checked (Go type %s)", t)
	}
}

func (c *fieldCheck) object(path string, v any, t reflect.Type) {
	m, ok := v.(map[string]any)
	if !ok {
		c.add(path, "must be an object, not %s", describe(v))
		return
	}
	fields := jsonFields(t)
	for k, val := range m {
		p := k
		if path != "" {
			p = path + "." + k
		}
		ft, known := fields[k]
		if !known {
			c.add(p, "unknown field")
			continue
		}
		c.value(p, val, ft)
	}
}

func (c *fieldCheck) slice(path string, v any, t reflect.Type) {
	if t.Elem().Kind() == reflect.Uint8 { // []byte: base64 in JSON
		s, ok := v.(string)
		if !ok {
			c.add(path, "must be a base64 string, not %s", describe(v))
			return
		}
		if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			c.add(path, "is not valid base64 (%v); use stringData for plain text", err)
		}
		return
	}
	items, ok := v.([]any)
	if !ok {
		c.add(path, "must be a list, not %s", describe(v))
		return
	}
	for i, item := range items {
		c.value(fmt.Sprintf("%s[%d]", path, i), item, t.Elem())
	}
}

// unmarshaler checks a type with its own JSON decoding by running it.
func (c *fieldCheck) unmarshaler(path string, v any, t reflect.Type) {
	raw, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(raw, reflect.New(t).Interface())
	}
	if err != nil {
		c.add(path, "%v", err)
	}
}

// jsonFields maps the JSON names of t's fields to their types, with inline
// structs (TypeMeta, ObjectMeta's embedded parts) flattened.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || (!f.IsExported() && !f.Anonymous):
			continue
		case name == "" && (f.Anonymous || strings.Contains(opts, "inline")) && f.Type.Kind() == reflect.Struct:
			for k, ft := range jsonFields(f.Type) {
				out[k] = ft
			}
			continue
		case name == "":
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func describe(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	case int64, float64:
		return fmt.Sprintf("the number %v", v)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// quoteHint tells how to write a YAML scalar that was read as a boolean or
// number where a string is required.
func quoteHint(v any) string {
	switch v.(type) {
	case bool, int64, float64:
		return " (quote the value in YAML)"
	}
	return ""
}

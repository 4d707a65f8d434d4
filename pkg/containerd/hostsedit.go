package containerd

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// hostsDoc is where the ca lists and [host] entries of a hosts.toml are,
// as byte offsets, for minimal edits.
type hostsDoc struct {
	// cas by table: "" for the top level, the URL for a host entry.
	cas map[string]*caValue
	// hosts: every [host."URL"] entry, by URL, in file order in urls.
	hosts map[string]hostPos
	urls  []string
	// firstTable is the offset of the first table header's line, where
	// top-level keys go; len(data) without tables.
	firstTable int
	// hostTable is the end of a [host] header line, or -1.
	hostTable int
	hasHost   bool
}

type hostPos struct {
	kind      hostKind
	headerEnd int    // kindTable: after the [host."URL"] line
	indent    string // of that header
	lastEnd   int    // kindDotted, kindInHost: after the line of its last key
}

type hostKind int

const (
	kindTable  hostKind = iota // [host."URL"]
	kindDotted                 // host."URL".key = … at the top level
	kindInHost                 // "URL".key = … below [host]
	kindInline                 // an inline table: not edited
)

// caValue is one ca key: a string, or an array of strings.
type caValue struct {
	lineStart, end int // the key's line start and the value's end
	open           int // the array's '[' (arrays only)
	str            *elem
	elems          []elem
	array, marked  bool
}

type elem struct {
	start, end int
	value      string
}

// scanHosts parses data and records the positions edits need.
func scanHosts(data []byte) (*hostsDoc, error) {
	doc := &hostsDoc{cas: map[string]*caValue{}, hosts: map[string]hostPos{}, firstTable: len(data), hostTable: -1}
	err := walkTOML(data, "hosts.toml does not parse",
		func(h tomlHeader) { doc.header(data, h) },
		func(full []string, tableLen int, e *unstable.Node) error {
			return doc.keyValue(data, full, tableLen, e)
		})
	if err != nil {
		return nil, err
	}
	return doc, nil
}

// header records a table header: where top-level keys go, and the [host]
// tables.
func (d *hostsDoc) header(data []byte, h tomlHeader) {
	if h.lineStart < d.firstTable {
		d.firstTable = beforeBlankLines(data, h.lineStart)
	}
	if h.array {
		return
	}
	key := h.key
	if len(key) > 0 && key[0] == "host" {
		d.hasHost = true
	}
	switch {
	case len(key) == 1 && key[0] == "host":
		d.hostTable = h.end
	case len(key) == 2 && key[0] == "host":
		d.addHost(key[1], hostPos{kind: kindTable, headerEnd: h.end, indent: h.indent})
	}
}

// keyValue records a key of the top level or of a [host] entry; full is
// its whole key, tableLen how much of it its table's header gives.
func (d *hostsDoc) keyValue(data []byte, full []string, tableLen int, e *unstable.Node) error {
	if len(full) == 0 || full[0] != "host" {
		if len(full) == 1 && full[0] == "ca" {
			cv, err := caOf(data, e, "top-level ca")
			if err != nil {
				return err
			}
			d.cas[""] = cv
		}
		return nil
	}
	d.hasHost = true
	switch {
	case len(full) == 1: // host = { … }
		return errors.New("hosts.toml: host is an inline table; nodetrust merges only [host.\"…\"] layouts")
	case len(full) == 2 && e.Value().Kind == unstable.InlineTable:
		d.addHost(full[1], hostPos{kind: kindInline})
	case len(full) == 2:
	default:
		return d.hostKey(data, full, tableLen, e)
	}
	return nil
}

// hostKey records a key of the [host] entry full[1] written as a dotted
// key (host."URL".key at the top level, "URL".key below [host]).
func (d *hostsDoc) hostKey(data []byte, full []string, tableLen int, e *unstable.Node) error {
	kind := kindDotted
	if tableLen == 1 {
		kind = kindInHost
	}
	if tableLen < 2 {
		d.addHost(full[1], hostPos{kind: kind})
		pos := d.hosts[full[1]]
		if pos.kind == kind { // its keys stay together: ca goes after the last
			pos.lastEnd = lineEnd(data, int(e.Raw.Offset+e.Raw.Length))
			d.hosts[full[1]] = pos
		}
	}
	if len(full) == 3 && full[2] == "ca" {
		cv, err := caOf(data, e, fmt.Sprintf("ca of [host.%q]", full[1]))
		if err != nil {
			return err
		}
		d.cas[full[1]] = cv
	}
	return nil
}

func (d *hostsDoc) addHost(url string, pos hostPos) {
	if _, ok := d.hosts[url]; ok {
		return
	}
	d.hosts[url] = pos
	d.urls = append(d.urls, url)
}

// caOf reads the value of a ca key/value expression.
func caOf(data []byte, e *unstable.Node, name string) (*caValue, error) {
	start, end := int(e.Raw.Offset), int(e.Raw.Offset+e.Raw.Length)
	cv := &caValue{lineStart: bytes.LastIndexByte(data[:start], '\n') + 1, end: end}
	cv.marked = strings.HasSuffix(strings.TrimRight(string(data[end:lineEnd(data, end)]), "\r\n"), markAdded)
	v := e.Value()
	switch v.Kind {
	case unstable.String:
		cv.str = &elem{start: int(v.Raw.Offset), end: int(v.Raw.Offset + v.Raw.Length), value: string(v.Data)}
		return cv, nil
	case unstable.Array:
		cv.array = true
		cv.open = start + bytes.IndexByte(data[start:end], '[')
		it := v.Children()
		for it.Next() {
			n := it.Node()
			switch n.Kind {
			case unstable.Comment:
				continue
			case unstable.String:
				cv.elems = append(cv.elems, elem{start: int(n.Raw.Offset), end: int(n.Raw.Offset + n.Raw.Length), value: string(n.Data)})
			default:
				return nil, fmt.Errorf("hosts.toml: %s holds a %s, want strings", name, strings.ToLower(n.Kind.String()))
			}
		}
		return cv, nil
	default:
		return nil, fmt.Errorf("hosts.toml: %s is a %s, want a string or a list of strings", name, strings.ToLower(v.Kind.String()))
	}
}

func (cv *caValue) has(f string) bool {
	if cv.str != nil {
		return cv.str.value == f
	}
	for _, e := range cv.elems {
		if e.value == f {
			return true
		}
	}
	return false
}

// textEdit replaces data[at:end] (an insert when end == at) with text.
type textEdit struct {
	at, end int
	text    string
}

func applyEdits(data []byte, edits []textEdit) []byte {
	// Back to front, so offsets stay valid; of two inserts at one offset,
	// the one listed first ends up first.
	order := make([]int, len(edits))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := edits[order[i]], edits[order[j]]
		if a.at != b.at {
			return a.at > b.at
		}
		return order[i] > order[j]
	})
	sorted := make([]textEdit, len(edits))
	for i, k := range order {
		sorted[i] = edits[k]
	}
	edits = sorted
	out := append([]byte(nil), data...)
	for _, e := range edits {
		end := max(e.end, e.at)
		out = append(out[:e.at], append([]byte(e.text), out[end:]...)...)
	}
	return out
}

func quoteList(files []string) string {
	q := make([]string, len(files))
	for i, f := range files {
		q[i] = strconv.Quote(f)
	}
	return strings.Join(q, ", ")
}

// addCA returns the edits that add files to the ca of table (nil: the top
// level; {"host", URL}: that entry).
func (d *hostsDoc) addCA(data []byte, table []string, files []string) ([]textEdit, error) {
	key := ""
	if table != nil {
		key = table[1]
	}
	cv := d.cas[key]
	var missing []string
	for _, f := range files {
		if (cv == nil || !cv.has(f)) && !contains(missing, f) {
			missing = append(missing, f)
		}
	}
	switch {
	case len(missing) == 0:
		return nil, nil
	case cv != nil && cv.str != nil:
		raw := string(data[cv.str.start:cv.str.end])
		return []textEdit{{at: cv.str.start, end: cv.str.end, text: "[" + raw + ", " + quoteList(missing) + "]"}}, nil
	case cv != nil && len(cv.elems) > 0:
		return []textEdit{{at: cv.elems[len(cv.elems)-1].end, text: ", " + quoteList(missing)}}, nil
	case cv != nil:
		return []textEdit{{at: cv.open + 1, text: quoteList(missing)}}, nil
	}
	line := "ca = [" + quoteList(missing) + "] " + markAdded + "\n"
	if table == nil {
		return []textEdit{{at: d.firstTable, text: withNewline(data[:d.firstTable]) + line}}, nil
	}
	pos := d.hosts[key]
	switch pos.kind {
	case kindTable:
		return []textEdit{{at: pos.headerEnd, text: withNewline(data[:pos.headerEnd]) + pos.indent + "  " + line}}, nil
	case kindDotted: // after its last key, so the hosts keep their order
		return []textEdit{{at: pos.lastEnd, text: withNewline(data[:pos.lastEnd]) + "host." + strconv.Quote(key) + "." + line}}, nil
	case kindInHost:
		return []textEdit{{at: pos.lastEnd, text: withNewline(data[:pos.lastEnd]) + strconv.Quote(key) + "." + line}}, nil
	default:
		return nil, fmt.Errorf("hosts.toml: host %q is an inline table; nodetrust merges only [host.\"…\"] layouts", key)
	}
}

// drop returns the edits that take the files in drop out of cv, by the
// smallest cut: each run of dropped entries goes with the separator before
// it (or after it, for a run at the start), so the rest of the list keeps
// its layout and comments; the line goes when nodetrust added it and
// nothing else is left in it.
func (cv *caValue) drop(data []byte, drop map[string]bool) []textEdit {
	if cv.str != nil || !cv.array {
		return nil // nodetrust only ever adds to lists
	}
	n := len(cv.elems)
	var edits []textEdit
	kept := 0
	for i := 0; i < n; {
		if !drop[cv.elems[i].value] {
			kept++
			i++
			continue
		}
		j := i
		for j+1 < n && drop[cv.elems[j+1].value] {
			j++
		}
		start := bytes.LastIndexByte(data[:cv.elems[i].start], '\n') + 1
		end := lineEnd(data, cv.elems[j].end)
		ownLines := start > cv.open && len(bytes.TrimSpace(data[start:cv.elems[i].start])) == 0 &&
			restIsSeparator(data[cv.elems[j].end:end])
		switch {
		case ownLines && end <= cv.end: // the entries' own lines, as an editor would
			edits = append(edits, textEdit{at: start, end: end})
		case i > 0:
			edits = append(edits, textEdit{at: cv.elems[i-1].end, end: cv.elems[j].end})
		case j+1 < n:
			edits = append(edits, textEdit{at: cv.elems[i].start, end: cv.elems[j+1].start})
		}
		i = j + 1
	}
	switch {
	case kept == n:
		return nil
	case kept == 0 && cv.marked:
		return []textEdit{{at: cv.lineStart, end: lineEnd(data, cv.end)}}
	case kept == 0:
		return []textEdit{{at: cv.open, end: cv.end, text: "[]"}}
	}
	return edits
}

// dropMarkedLines removes a "[host]" header nodetrust added when no key
// follows it before the next table.
func dropMarkedLines(data []byte) []byte {
	lines := strings.SplitAfter(string(data), "\n")
	var out []string
	for i, line := range lines {
		if strings.TrimSpace(line) == "[host] "+markAdded && nextIsTable(lines[i+1:]) {
			continue
		}
		out = append(out, line)
	}
	return []byte(strings.Join(out, ""))
}

func nextIsTable(rest []string) bool {
	for _, l := range rest {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		return strings.HasPrefix(t, "[")
	}
	return true
}

func withNewline(before []byte) string {
	if len(before) > 0 && !bytes.HasSuffix(before, []byte("\n")) {
		return "\n"
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortedKeys(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkMerge proves that merged decodes to base plus a's entries, with the
// [host] entries in the same order, and nothing else changed.
func checkMerge(base, merged []byte, a Additions) error {
	var before, after map[string]any
	if err := toml.Unmarshal(base, &before); err != nil {
		return fmt.Errorf("hosts.toml does not parse: %w", err)
	}
	if err := toml.Unmarshal(merged, &after); err != nil {
		return fmt.Errorf("merging would make hosts.toml unparsable (%v); left as is", err)
	}
	if len(a.CA) > 0 {
		addCAs(before, a.CA)
		if _, ok := before["host"]; !ok {
			before["host"] = map[string]any{}
		}
	}
	hosts, _ := before["host"].(map[string]any)
	for url, files := range a.Hosts {
		if h, ok := hosts[url].(map[string]any); ok {
			addCAs(h, files)
		}
	}
	if !reflect.DeepEqual(before, after) {
		return errors.New("merging would change other settings of hosts.toml; left as is")
	}
	b, err := scanHosts(base)
	if err != nil {
		return err
	}
	m, err := scanHosts(merged)
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(b.urls, m.urls) {
		return errors.New("merging would reorder the [host] entries of hosts.toml; left as is")
	}
	return nil
}

// addCAs adds files to the decoded ca of table m, as a merge would.
func addCAs(m map[string]any, files []string) {
	var list []any
	switch ca := m["ca"].(type) {
	case string:
		list = []any{ca}
	case []any:
		list = ca
	}
	for _, f := range files {
		if !containsAny(list, f) {
			list = append(list, f)
		}
	}
	if len(list) > 0 {
		m["ca"] = list
	}
}

func containsAny(list []any, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// HostURLs returns the [host."URL"] keys of a hosts.toml in file order: the
// endpoints containerd tries before the upstream server.
func HostURLs(data []byte) ([]string, error) {
	doc, err := scanHosts(data)
	if err != nil {
		return nil, err
	}
	return doc.urls, nil
}

// HostOf returns the registry (host or host:port) a [host."URL"] entry
// points at, as image references spell it, or "" for a plain-HTTP entry,
// which no CA concerns.
func HostOf(url string) string {
	rest := url
	if i := strings.Index(url, "://"); i >= 0 {
		if !strings.EqualFold(url[:i], "https") {
			return ""
		}
		rest = url[i+3:]
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// beforeBlankLines moves off back over the blank lines that end just before
// it, so keys added to the top level sit with the others.
func beforeBlankLines(data []byte, off int) int {
	for off > 0 {
		prev := bytes.LastIndexByte(data[:off-1], '\n') + 1
		if len(bytes.TrimSpace(data[prev:off])) != 0 {
			return off
		}
		off = prev
	}
	return off
}

// DecodedHostURLs returns the [host] keys of a hosts.toml in whatever form
// it has them (tables, dotted keys, inline tables), unordered; nil when it
// does not decode. For files HostURLs cannot edit.
func DecodedHostURLs(data []byte) []string {
	var doc struct {
		Host map[string]any `toml:"host"`
	}
	if toml.Unmarshal(data, &doc) != nil {
		return nil
	}
	out := make([]string, 0, len(doc.Host))
	for k := range doc.Host {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// restIsSeparator: what follows an entry on its line is only a comma,
// blanks and a comment.
func restIsSeparator(rest []byte) bool {
	r := bytes.TrimLeft(rest, " \t")
	r = bytes.TrimPrefix(r, []byte(","))
	r = bytes.TrimSpace(r)
	return len(r) == 0 || r[0] == '#'
}

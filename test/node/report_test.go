package node

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// report is the story's timed record, written to $NODETRUST_NODE_REPORT (or
// a new temporary file) when the test ends, also on failure.
type report struct {
	t       *testing.T
	suffix  string // inserted before the report file's extension
	started time.Time
	header  []string
	steps   []reportStep
}

type reportStep struct {
	name, result, detail string
	secs                 float64
}

func newReport(t *testing.T, suffix string) *report {
	r := &report{t: t, suffix: suffix, started: time.Now()}
	t.Cleanup(r.write) // registered first: runs after every teardown
	return r
}

func (r *report) note(format string, args ...any) {
	r.header = append(r.header, fmt.Sprintf(format, args...))
}

// step runs fn as one timed step; fn returns a one-line detail.
func (r *report) step(name string, fn func() string) {
	r.t.Helper()
	i := len(r.steps)
	r.steps = append(r.steps, reportStep{name: name, result: "FAIL"})
	start := time.Now()
	r.t.Logf("==> %s", name)
	defer func() {
		r.steps[i].secs = time.Since(start).Seconds()
		if !r.t.Failed() {
			r.steps[i].result = "ok"
		}
		r.t.Logf("<== %s: %s in %.2fs: %s", name, r.steps[i].result, r.steps[i].secs, r.steps[i].detail)
	}()
	r.steps[i].detail = fn()
}

func (r *report) render() string {
	var b strings.Builder
	result := "PASS"
	if r.t.Failed() {
		result = "FAIL"
	}
	fmt.Fprintf(&b, "nodetrust real-node report (test/node)\n")
	fmt.Fprintf(&b, "date: %s   go: %s %s/%s   cpus: %d\n", r.started.UTC().Format(time.RFC3339), runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	for _, h := range r.header {
		fmt.Fprintln(&b, h)
	}
	fmt.Fprintf(&b, "\n%-3s %-58s %-6s %8s  %s\n", "#", "step", "result", "seconds", "detail")
	for i, s := range r.steps {
		fmt.Fprintf(&b, "%-3d %-58s %-6s %8.2f  %s\n", i+1, s.name, s.result, s.secs, s.detail)
	}
	fmt.Fprintf(&b, "\n%s: %d steps in %.1f s (including teardown)\n", result, len(r.steps), time.Since(r.started).Seconds())
	return b.String()
}

func (r *report) write() {
	text := r.render()
	path := os.Getenv("NODETRUST_NODE_REPORT")
	if path == "" {
		dir, err := os.MkdirTemp("", "nodetrust-node-")
		if err != nil {
			r.t.Errorf("report: %v", err)
			return
		}
		path = filepath.Join(dir, "report.txt")
	}
	if r.suffix != "" {
		ext := filepath.Ext(path)
		path = strings.TrimSuffix(path, ext) + r.suffix + ext
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		r.t.Errorf("report: %v", err)
	} else if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		r.t.Errorf("report: %v", err)
	}
	r.t.Logf("\n%s\nreport written to %s", text, path)
}

// quantiles returns the median and the maximum of ds.
func quantiles(ds []time.Duration) (p50, max time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[len(s)-1]
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
